// A backup's walk reads each entry's lstat, link target and extended attributes by the entry's name relative to
// its open directory; what it reads must be exactly what the calls by full path read.
import Foundation
import Testing
import TidemarkSystem

#if canImport(Glibc)
  import Glibc
#endif

@Suite struct DirectoryEntryTests {
  @Test func entriesReadByNameMatchEntriesReadByPath() throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tidemark-entries-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    let root = BytePath(dir.path)
    try Data("plain".utf8).write(to: dir.appendingPathComponent("plain"))
    try Data("tagged".utf8).write(to: dir.appendingPathComponent("tagged"))
    try FileManager.default.createDirectory(
      at: dir.appendingPathComponent("sub"), withIntermediateDirectories: false)
    // A symlink to the tagged file: its own (no) attributes, never the target's.
    try FileManager.default.createSymbolicLink(
      atPath: dir.appendingPathComponent("link").path, withDestinationPath: "tagged")
    var tagged = 0
    for (name, value) in [("user.b", [UInt8](repeating: 7, count: 300)), ("user.a", Array("one".utf8))] {
      let r = value.withUnsafeBytes { v in Sys.setXattr(dir.appendingPathComponent("tagged").path, name, v) }
      if r == 0 { tagged += 1 }
    }
    _ = Array("x".utf8).withUnsafeBytes { Sys.setXattr(dir.appendingPathComponent("sub").path, "user.d", $0) }

    let seen = try Sys.readDirectory(root) { fd, name, st -> (String, FileStat, [UInt8]?, [[UInt8]])? in
      let p = root.appending(name)
      let link = st.fileType == 0o120000 ? try Sys.readlink(at: fd, name, path: p) : nil
      let byName = try Sys.extendedAttributes(at: fd, name, path: p)
      let byPath = try Sys.extendedAttributes(p)
      #expect(byName.map(\.name) == byPath.map(\.name), "\(p)")
      #expect(byName.map(\.value) == byPath.map(\.value), "\(p)")
      return (String(decoding: name, as: UTF8.self), st, link, byName.map(\.name))
    }.sorted { $0.0 < $1.0 }
    #expect(seen.map(\.0) == ["link", "plain", "sub", "tagged"])
    #expect(seen[0].2 == Array("tagged".utf8))
    #expect(seen[0].3.isEmpty)
    #expect(seen[2].1.isDirectory)
    // Where the file system takes user attributes (tmpfs and ext4 do), both are listed, sorted by name.
    if tagged == 2 { #expect(seen[3].3 == [Array("user.a".utf8), Array("user.b".utf8)]) }
    #expect(seen[1].3.isEmpty)
    #expect(throws: SystemError.self) {
      _ = try Sys.readDirectory(root.appending(Array("missing".utf8))) { _, _, _ -> Int? in 1 }
    }
  }
}
