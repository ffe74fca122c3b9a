// Reused zstd contexts (TidemarkZstd.ZstdDecompressorPool): right bytes from many threads at once, and a
// context that saw a damaged frame still decodes the next one.
import Testing
import TidemarkZstd

@Suite struct ZstdPoolTests {
  static let inputs: [[UInt8]] = (0..<12).map { i in
    // Compressible text-like runs and incompressible noise, of several sizes.
    var g = UInt64(i + 1) &* 0x9E37_79B9_7F4A_7C15
    return (0..<(20_000 + i * 37_000)).map { k in
      if i % 2 == 0 { return UInt8(ascii: "a") &+ UInt8(k % 23) }
      g ^= g << 13
      g ^= g >> 7
      g ^= g << 17
      return UInt8(truncatingIfNeeded: g)
    }
  }

  @Test func concurrentDecompressionGivesEveryFrameBack() async throws {
    let frames = try Self.inputs.map { d in try d.withUnsafeBytes { try Zstd.compress($0, level: 3) } }
    let pool = ZstdDecompressorPool()
    let inputs = Self.inputs
    let wrong = try await withThrowingTaskGroup(of: Int.self) { g in
      for t in 0..<8 {
        g.addTask {
          var bad = 0
          for round in 0..<20 {
            let i = (t * 5 + round) % frames.count
            let out = try frames[i].withUnsafeBytes { try pool.decompress($0, size: inputs[i].count) }
            var into = [UInt8](repeating: 0, count: inputs[i].count)
            let n = try frames[i].withUnsafeBytes { f in
              try into.withUnsafeMutableBytes { try pool.decompress(f, into: $0) }
            }
            if out != inputs[i] || n != inputs[i].count || into != inputs[i] { bad += 1 }
          }
          return bad
        }
      }
      return try await g.reduce(0, +)
    }
    #expect(wrong == 0)
  }

  @Test func aDamagedFrameFailsAndTheContextsStayUsable() throws {
    let pool = ZstdDecompressorPool()
    let data = Self.inputs[2]
    var frame = try data.withUnsafeBytes { try Zstd.compress($0, level: 3) }
    let good = frame
    frame[frame.count / 2] ^= 0xFF
    frame.removeLast(3)
    #expect(throws: ZstdError.self) { _ = try frame.withUnsafeBytes { try pool.decompress($0, size: data.count) } }
    // The size the index promised must be the size the frame holds.
    #expect(throws: ZstdError.self) { _ = try good.withUnsafeBytes { try pool.decompress($0, size: data.count + 1) } }
    let again = try good.withUnsafeBytes { try pool.decompress($0, size: data.count) } == data
    #expect(again, "a context that saw a damaged frame decoded the next one wrong")
  }
}
