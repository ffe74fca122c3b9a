// Large reads that bypass the page cache (TidemarkSystem.DirectReader): the same bytes as an ordinary
// read for any offset and length, direct only when nothing of the range is cached.
import Foundation
import Glibc
import Testing
import TidemarkSystem

@Suite struct DirectReadTests {
  /// A file of `size` patterned bytes, written, synced and dropped from the page cache.
  static func coldFile(size: Int) throws -> (path: BytePath, data: [UInt8]) {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("direct-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    let path = BytePath(dir.appendingPathComponent("pack").path)
    let data = (0..<size).map { UInt8(truncatingIfNeeded: ($0 &* 2_654_435_761) >> 13) }
    try data.withUnsafeBytes { try Sys.writeAtomically(path, $0, mode: 0o600) }
    try dropCache(path)
    return (path, data)
  }

  static func dropCache(_ path: BytePath) throws {
    let fd = try Sys.open(path, O_RDONLY)
    defer { Sys.close(fd) }
    #expect(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0)
  }

  /// Reads `count` bytes at `offset` with a fresh descriptor: (bytes, whether the read was direct).
  static func read(_ r: DirectReader, _ path: BytePath, offset: Int, count: Int) throws -> ([UInt8], Bool) {
    let fd = try Sys.open(path, O_RDONLY)
    defer { Sys.close(fd) }
    var out = [UInt8](repeating: 0xEE, count: count)
    var direct = false
    let n = try out.withUnsafeMutableBytes { b in
      if let n = try r.read(fd, into: b, offset: Int64(offset)) {
        direct = true
        return n
      }
      return try Sys.pread(fd, b, offset: Int64(offset))
    }
    return (Array(out[0..<n]), direct)
  }

  @Test func unalignedRangesOfAColdFileReadDirectlyGiveTheSameBytes() throws {
    // 9 MiB and a bit: more than two of the reader's 4 MiB pieces, and a tail that is not block-sized.
    let (path, data) = try Self.coldFile(size: 9 << 20 + 12345)
    let r = DirectReader()
    for (offset, count) in [
      (0, 1 << 20), (4095, (5 << 20) + 7), (1, (9 << 20) + 12344), (4 << 20, 4 << 20), (777, 200_000),
    ] {
      try Self.dropCache(path)
      let (got, direct) = try Self.read(r, path, offset: offset, count: count)
      #expect(direct, "a cold range of \(count) bytes at \(offset) was not read directly")
      let same = got == Array(data[offset..<offset + count])
      #expect(same, "bytes differ at \(offset)+\(count)")
    }
    // Past the end: what there is, as pread gives it.
    try Self.dropCache(path)
    let tail = data.count - 150_000
    let (got, direct) = try Self.read(r, path, offset: tail, count: 300_000)
    let same = got == Array(data[tail...])
    #expect(direct && same, "the tail read \(got.count) bytes, direct: \(direct)")
  }

  /// The mount's pack windows are read into memory the reader hands over (no copy out of a bounce buffer): the same
  /// bytes, where the disk wrote them, for unaligned ranges and at the end of the file.
  @Test func rangesReadIntoMemoryOfTheirOwnGiveTheSameBytes() throws {
    let (path, data) = try Self.coldFile(size: 9 << 20 + 12345)
    let r = DirectReader()
    for (offset, count) in [(0, 1 << 20), (4095, (5 << 20) + 7), (1, (9 << 20) + 12344), (777, 200_000)] {
      try Self.dropCache(path)
      let fd = try Sys.open(path, O_RDONLY)
      defer { Sys.close(fd) }
      let owned = try #require(try r.readOwned(fd, offset: Int64(offset), count: count))
      defer { owned.free() }
      #expect(owned.count == count)
      let same =
        Array(UnsafeRawBufferPointer(start: owned.start, count: owned.count)) == Array(data[offset..<offset + count])
      #expect(same, "bytes differ at \(offset)+\(count)")
    }
    // Past the end: what there is.
    try Self.dropCache(path)
    let fd = try Sys.open(path, O_RDONLY)
    defer { Sys.close(fd) }
    let tail = data.count - 150_000
    let owned = try #require(try r.readOwned(fd, offset: Int64(tail), count: 300_000))
    defer { owned.free() }
    #expect(Array(UnsafeRawBufferPointer(start: owned.start, count: owned.count)) == Array(data[tail...]))
    // Cached or small: nil, for the page cache to serve.
    _ = try Sys.readFile(path)
    #expect(try r.readOwned(fd, offset: 5, count: 2 << 20) == nil)
    #expect(try r.readOwned(fd, offset: 5, count: 1000) == nil)
  }

  @Test func cachedOrSmallRangesGoThroughThePageCache() throws {
    let (path, data) = try Self.coldFile(size: 3 << 20)
    let r = DirectReader()
    // Small ranges never go direct.
    var (got, direct) = try Self.read(r, path, offset: 10, count: 1000)
    var same = got == Array(data[10..<1010])
    #expect(!direct && same)
    // Once the file is in the page cache, a large range is served from there.
    _ = try Sys.readFile(path)
    (got, direct) = try Self.read(r, path, offset: 5, count: 2 << 20)
    same = got == Array(data[5..<(5 + (2 << 20))])
    #expect(!direct && same)
  }
}
