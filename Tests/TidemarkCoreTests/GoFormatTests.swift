// GoFormat: numbers, file modes and times printed as restic 0.14 (Go) prints them, and `find`'s time layouts read
// as Go reads them.
import Foundation
import Testing
import TidemarkCore
import TidemarkOperations

struct GoFormatTests {
  @Test func bytesUseBinaryUnitsAboveEachThreshold() {
    #expect(GoFormat.bytes(1024) == "1024 B")
    #expect(GoFormat.bytes(1536) == "1.500 KiB")
    #expect(GoFormat.bytes(3 << 30 + 1) == "3.000 GiB")
  }

  @Test func paddingIsGoWidthFormatting() {
    #expect(GoFormat.right(42, 5) == "   42")
    #expect(GoFormat.right(123_456, 3) == "123456")
    #expect(GoFormat.padded("M", 5) == "M    ")
  }

  @Test func jsonNumbersAreGoShortestWithoutExponentInRange() {
    #expect(GoFormat.jsonNumber(3) == "3")
    #expect(GoFormat.jsonNumber(0.25) == "0.25")
    #expect(GoFormat.jsonNumber(1.5e-5) == "0.000015")
    #expect(GoFormat.jsonNumber(1e-7) == "1e-7")
    #expect(GoFormat.jsonNumber(123_456_789.5) == "123456789.5")
    #expect(GoFormat.jsonNumber(1e20) == "100000000000000000000")
  }

  @Test func fileModesSpellTypeLettersThenPermissions() {
    #expect(GoFormat.fileMode(0o644) == "-rw-r--r--")
    #expect(GoFormat.fileMode(1 << 31 | 0o755) == "drwxr-xr-x")
  }

  @Test func timeStringNamesUTCAndKeepsSignificantNanoseconds() {
    let t = Timestamp(seconds: 1_700_000_000, nanoseconds: 120_000_000, offset: 0)
    #expect(GoFormat.timeString(t) == "2023-11-14 22:13:20.12 +0000 UTC")
  }

  @Test func parseTimeReadsExplicitOffsetsAndRejectsGarbage() {
    let t = GoFormat.parseTime("2023-11-14 23:13:20 +0100")
    #expect(t?.seconds == 1_700_000_000)
    #expect(GoFormat.parseTime("14.11.2023 22:13:20 +0000")?.seconds == 1_700_000_000)
    #expect(GoFormat.parseTime("2023-13-01") == nil)
    #expect(GoFormat.parseTime("yesterday") == nil)
  }
}
