// The stage probe behind `tidemark debug stage-costs` chunks like a backup, accounts what zstd leaves and hands
// every sealed byte on in packs.
import Testing
import TidemarkCore

@Suite struct StageProbeTests {
  @Test func chunksLikeABackupAndCountsWhatZstdLeaves() throws {
    var packs: [Int] = []
    let probe = StageProbe { packs.append($0.count) }
    var g: UInt64 = 0x9E37_79B9_7F4A_7C15
    let noise: [UInt8] = (0..<(20 << 20)).map { _ in
      g ^= g << 13
      g ^= g >> 7
      g ^= g << 17
      return UInt8(truncatingIfNeeded: g)
    }
    let zeros = [UInt8](repeating: 0, count: 4 << 20)
    try noise.withUnsafeBytes { try probe.feed(file: $0) }
    try zeros.withUnsafeBytes { try probe.feed(file: $0) }
    try [UInt8]().withUnsafeBytes { try probe.feed(file: $0) }
    try probe.finish()
    try probe.measureKeyOpen()
    let c = probe.costs
    #expect(c.files == 3 && c.bytes == Int64(24 << 20))
    // 20 MiB of noise cut between 512 KiB and 8 MiB: at least 3 chunks; zeros reach the 8 MiB limit or the end.
    #expect(c.chunks >= 5 && c.chunks <= 44, "\(c.chunks) chunks")
    // Noise is stored as it is; 4 MiB of zeros shrink to almost nothing.
    #expect(c.storedBytes >= Int64(20 << 20) && c.storedBytes < Int64(20 << 20) + 4096, "\(c.storedBytes)")
    #expect(c.chunk > .zero && c.hash > .zero && c.compress > .zero && c.seal > .zero && c.packHash > .zero)
    // Every sealed blob (what zstd left, 32 bytes of IV and MAC) reaches a pack; packs close at 16 MiB.
    #expect(packs.reduce(0, +) == Int(c.storedBytes) + 32 * c.chunks, "\(packs)")
    #expect(packs.count >= 2 && packs.dropLast().allSatisfy { $0 >= 16 << 20 }, "\(packs)")
    // scrypt with N = 32768, r = 8 and p = 5 takes well over a millisecond of CPU anywhere.
    #expect(c.keyOpen > .milliseconds(5), "\(c.keyOpen)")
  }
}
