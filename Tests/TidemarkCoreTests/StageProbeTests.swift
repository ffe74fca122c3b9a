// The stage probe behind `tidemark debug stage-costs` chunks like a backup and accounts what zstd leaves.
import Testing
import TidemarkCore

@Suite struct StageProbeTests {
  @Test func chunksLikeABackupAndCountsWhatZstdLeaves() throws {
    let probe = StageProbe()
    var g: UInt64 = 0x9E37_79B9_7F4A_7C15
    let noise: [UInt8] = (0..<(12 << 20)).map { _ in
      g ^= g << 13
      g ^= g >> 7
      g ^= g << 17
      return UInt8(truncatingIfNeeded: g)
    }
    let zeros = [UInt8](repeating: 0, count: 4 << 20)
    try noise.withUnsafeBytes { try probe.feed(file: $0) }
    try zeros.withUnsafeBytes { try probe.feed(file: $0) }
    try [UInt8]().withUnsafeBytes { try probe.feed(file: $0) }
    let c = probe.costs
    #expect(c.files == 3 && c.bytes == Int64(16 << 20))
    // 12 MiB of noise cut between 512 KiB and 8 MiB: at least 2 chunks; zeros reach the 8 MiB limit or the end.
    #expect(c.chunks >= 4 && c.chunks <= 28, "\(c.chunks) chunks")
    // Noise is stored as it is; 4 MiB of zeros shrink to almost nothing.
    #expect(c.storedBytes >= Int64(12 << 20) && c.storedBytes < Int64(12 << 20) + 4096, "\(c.storedBytes)")
    #expect(c.chunk > .zero && c.hash > .zero && c.compress > .zero && c.seal > .zero)
  }
}
