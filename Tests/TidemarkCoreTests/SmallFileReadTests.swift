// A small-file batch reads each file whole with one read when the file still has the size it was listed
// with, and notices when it has grown or shrunk since. It opens the file by its name in its directory, kept
// open since the listing, as long as the budget of such directories allows, and by its path otherwise.
import Foundation
import Testing
import TidemarkCore
import TidemarkSystem

@testable import TidemarkOperations

@Suite struct SmallFileReadTests {
  func withFile(_ bytes: [UInt8], _ body: (BytePath) throws -> Void) throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tidemark-read-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    let path = dir.appendingPathComponent("f")
    try Data(bytes).write(to: path)
    try body(BytePath(path.path))
  }

  func read(_ path: BytePath, buffer: Int, expected: Int) throws -> [UInt8] {
    var b = [UInt8](repeating: 0xEE, count: buffer)
    let n = try b.withUnsafeMutableBytes { try Backup.readWhole(path, into: $0, expected: expected) }
    return Array(b[0..<n])
  }

  @Test func readsWhatTheFileHoldsWhateverSizeWasListed() throws {
    let content = (0..<5000).map { UInt8(truncatingIfNeeded: $0 * 7) }
    try withFile(content) { (p: BytePath) throws in
      #expect(try read(p, buffer: 8192, expected: 5000) == content)
      // Grown since it was listed: read to its end.
      #expect(try read(p, buffer: 8192, expected: 100) == content)
      // Shrunk since it was listed.
      #expect(try read(p, buffer: 8192, expected: 7000) == content)
      // Longer than the buffer: the buffer fills, and the caller treats the file as a large one.
      #expect(try read(p, buffer: 4096, expected: 100) == Array(content[0..<4096]))
    }
    try withFile([]) { (p: BytePath) throws in #expect(try read(p, buffer: 64, expected: 0).isEmpty) }
  }

  @Test func aDirectoryKeptOpenReadsItsFilesByNameWithinItsBudget() throws {
    let content = Array("kept open".utf8)
    try withFile(content) { (p: BytePath) throws in
      let dir = BytePath(p.description.dropLast(2).description)
      let budget = DescriptorBudget(1)
      var (names, kept) = try Sys.readDirectory(dir, keepingOpen: budget) { _, n, _ in n }
      #expect(names == [Array("f".utf8)])
      names = []
      var open: OpenDirectory? = try #require(kept)
      kept = nil
      // The budget is spent: a second listing works as before, without keeping its directory.
      let (_, second) = try Sys.readDirectory(dir, keepingOpen: budget) { _, n, _ in n }
      #expect(second == nil)
      var b = [UInt8](repeating: 0, count: 64)
      // Opened by name in the kept directory: the path given is not used.
      let n = try b.withUnsafeMutableBytes {
        try Backup.readWhole(
          BytePath("/nonexistent/tidemark-test"), at: (open!, Array("f".utf8)), into: $0, expected: content.count)
      }
      #expect(Array(b[0..<n]) == content)
      // The last holder lets go: the descriptor is closed and given back to the budget.
      #expect(!budget.take())
      open = nil
      #expect(budget.take())
    }
  }

  @Test func aFileThatCannotBeOpenedIsASystemError() throws {
    #expect(throws: SystemError.self) {
      _ = try read(BytePath("/nonexistent/tidemark-test"), buffer: 64, expected: 1)
    }
  }
}
