// Packs written straight to the disk (TidemarkSystem.DirectWriter): the file holds exactly the bytes appended, in
// whatever pieces they came, and none of them is left in the page cache.
import Foundation
import Glibc
import Testing
import TidemarkSystem

@Suite struct DirectWriteTests {
  static func freshFile() throws -> (BytePath, Int32) {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("direct-write-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    let path = BytePath(dir.appendingPathComponent("pack").path)
    return (path, try Sys.open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600))
  }

  /// Pages of `path` in the page cache (mincore over a mapping, which faults nothing in); nil for an empty file.
  static func residentPages(_ path: BytePath) throws -> Int? {
    let fd = try Sys.open(path, O_RDONLY)
    defer { Sys.close(fd) }
    let size = Int(try Sys.fstat(fd).size)
    guard size > 0 else { return nil }
    guard let map = mmap(nil, size, PROT_READ, MAP_SHARED, fd, 0), map != MAP_FAILED else { return nil }
    defer { munmap(map, size) }
    let page = Int(sysconf(Int32(_SC_PAGESIZE)))
    var vec = [UInt8](repeating: 0, count: (size + page - 1) / page)
    #expect(mincore(map, size, &vec) == 0)
    return vec.filter { $0 & 1 != 0 }.count
  }

  @Test func appendedPiecesLandWholeAndOutsideThePageCache() throws {
    let buffers = DirectWriteBuffers()
    // Empty, under a block, a block, a buffer, a buffer and a byte, several buffers and an unaligned tail.
    for size in [0, 1, 4095, 4096, 1 << 20, (1 << 20) + 1, (3 << 20) + 12345] {
      let data = (0..<size).map { UInt8(truncatingIfNeeded: ($0 &* 2_654_435_761) >> 11) }
      let (path, fd) = try Self.freshFile()
      defer { Sys.close(fd) }
      let writer = try #require(DirectWriter(fd: fd, buffers: buffers), "this file system refuses O_DIRECT")
      // Pieces of awkward lengths, as a pack's sealed blobs come.
      var at = 0
      for piece in [1, 700_001, 4096, 3, 2 << 20] where at < size {
        let n = min(piece, size - at)
        try data[at..<at + n].withUnsafeBytes { try writer.write($0) }
        at += n
      }
      if at < size { try data[at...].withUnsafeBytes { try writer.write($0) } }
      #expect(try writer.finish() == Int64(size))
      #expect(Int(try Sys.fstat(fd).size) == size, "a file of \(size) bytes has the wrong length")
      if let cached = try Self.residentPages(path) {
        #expect(cached == 0, "\(cached) pages of a \(size)-byte file were left in the page cache")
      }
      let back = try Sys.readFile(path)
      #expect(back == data, "a file of \(size) bytes reads back different bytes")
    }
  }

  @Test func anAbandonedWriterWaitsForItsWritesAndCanBeAbandonedTwice() throws {
    let buffers = DirectWriteBuffers()
    let (_, fd) = try Self.freshFile()
    defer { Sys.close(fd) }
    let writer = try #require(DirectWriter(fd: fd, buffers: buffers))
    let data = [UInt8](repeating: 7, count: (5 << 20) / 2)
    try data.withUnsafeBytes { try writer.write($0) }
    writer.abandon()
    writer.abandon()
    // Every full buffer was written before abandon returned; the part-filled one was not.
    #expect(Int(try Sys.fstat(fd).size) == 2 << 20)
  }
}
