// The served directory on disk: repositories in restic's local layout, so that a served directory is an ordinary
// local repository that restic and tidemark open directly. Every call here blocks: run it through
// `Blocking.run`. Uploads are written to a hidden temporary file in the target's directory, hashed as they come,
// fsynced, then put in place by rename (or link, when an existing name must not be replaced) and the directory
// fsynced: a file never appears half-written, and a rejected upload leaves nothing behind.
import Foundation
internal import NIOCore
import Synchronization
import TidemarkCrypto
import TidemarkSystem

#if canImport(Glibc)
  import Glibc
#endif

struct RepositoryFiles: Sendable {
  let root: BytePath

  func directory(_ repo: [String]) -> BytePath {
    repo.reduce(root) { $0.appending($1) }
  }

  func configPath(_ repo: [String]) -> BytePath {
    directory(repo).appending("config")
  }

  func filePath(_ repo: [String], _ type: RESTFileType, _ name: String) -> BytePath {
    let dir = directory(repo).appending(type.rawValue)
    return type == .data ? dir.appending(String(name.prefix(2))).appending(name) : dir.appending(name)
  }

  /// Creates the repository's directories (restic's local layout); existing ones are kept.
  func create(_ repo: [String]) throws {
    let dir = directory(repo)
    try Sys.mkdirAll(dir, 0o700)
    for type in RESTFileType.layout { try Sys.mkdir(dir.appending(type.rawValue), 0o700) }
    let data = dir.appending("data")
    for i in 0..<256 {
      let hex = Array("0123456789abcdef".utf8)
      try Sys.mkdir(data.appending([hex[i >> 4], hex[i & 15]]), 0o700)
    }
  }

  /// The size of a regular file, nil when there is none.
  func size(_ path: BytePath) throws -> Int64? {
    do {
      let st = try Sys.stat(path)
      return st.isRegular ? st.size : nil
    } catch let e as SystemError where e.errno == ENOENT || e.errno == ENOTDIR {
      return nil
    }
  }

  /// The files of one type with their sizes; nil when the repository has no such directory.
  func list(_ repo: [String], _ type: RESTFileType) throws -> [(name: String, size: Int64)]? {
    let dir = directory(repo).appending(type.rawValue)
    func entries(_ d: BytePath) throws -> [(String, Int64)]? {
      let names: [[UInt8]]
      do {
        names = try Sys.readDirectory(d)
      } catch let e as SystemError where e.errno == ENOENT || e.errno == ENOTDIR {
        return nil
      }
      var out: [(String, Int64)] = []
      for n in names where n.first != UInt8(ascii: ".") {
        guard let name = String(validating: n, as: UTF8.self), RESTRoute.isName(name),
          let st = try? Sys.lstat(d.appending(n)), st.isRegular
        else { continue }
        out.append((name, st.size))
      }
      return out
    }
    guard type == .data else { return try entries(dir) }
    let subdirs: [[UInt8]]
    do {
      subdirs = try Sys.readDirectory(dir)
    } catch let e as SystemError where e.errno == ENOENT || e.errno == ENOTDIR {
      return nil
    }
    var out: [(String, Int64)] = []
    for s in subdirs where s.count == 2 && s.first != UInt8(ascii: ".") {
      out += try entries(dir.appending(s)) ?? []
    }
    return out
  }

  /// Reads up to `count` bytes at `offset` into a new buffer.
  static func read(_ fd: Int32, offset: Int64, count: Int) throws -> ByteBuffer {
    var buffer = ByteBufferAllocator().buffer(capacity: count)
    _ = try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { raw in
      try Sys.pread(fd, UnsafeMutableRawBufferPointer(rebasing: raw[0..<count]), offset: offset)
    }
    return buffer
  }

  /// Removes a file and makes the removal durable; returns its size, nil when there was none.
  func remove(_ path: BytePath) throws -> Int64? {
    guard let size = try size(path) else { return nil }
    do {
      try Sys.unlink(path)
    } catch let e as SystemError where e.errno == ENOENT {
      return nil
    }
    try Sys.fsyncDirectory(Self.parent(path))
    return size
  }

  /// Removes the temporary files of uploads that a crash or a power loss interrupted (`.NAME.tmp-N`, see
  /// `Upload`); only at start, when no upload is under way. Hidden directories are not entered. Returns how many.
  func removeInterruptedUploads() throws -> Int {
    func isTemporary(_ name: [UInt8]) -> Bool {
      guard name.first == UInt8(ascii: "."), let text = String(validating: name, as: UTF8.self),
        let r = text.range(of: ".tmp-", options: .backwards)
      else { return false }
      let digits = text[r.upperBound...]
      return !digits.isEmpty && digits.allSatisfy { $0.isASCII && $0.isNumber }
    }
    func walk(_ d: BytePath) throws -> Int {
      var removed = 0
      for n in (try? Sys.readDirectory(d)) ?? [] {
        let p = d.appending(n)
        if isTemporary(n) {
          if let st = try? Sys.lstat(p), st.isRegular {
            try Sys.unlink(p)
            removed += 1
          }
        } else if n.first != UInt8(ascii: "."), let st = try? Sys.lstat(p), st.isDirectory {
          removed += try walk(p)
        }
      }
      return removed
    }
    return try walk(root)
  }

  /// The sum of the sizes of every regular file below the served directory.
  func usage() throws -> Int64 {
    func walk(_ d: BytePath) throws -> Int64 {
      var total: Int64 = 0
      for n in (try? Sys.readDirectory(d)) ?? [] {
        guard let st = try? Sys.lstat(d.appending(n)) else { continue }
        if st.isDirectory {
          total += try walk(d.appending(n))
        } else if st.isRegular {
          total += st.size
        }
      }
      return total
    }
    return try walk(root)
  }

  static func hex(_ bytes: [UInt8]) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    out.reserveCapacity(bytes.count * 2)
    for b in bytes {
      out.append(digits[Int(b >> 4)])
      out.append(digits[Int(b & 15)])
    }
    return String(decoding: out, as: UTF8.self)
  }

  static func parent(_ p: BytePath) -> BytePath {
    guard let slash = p.bytes.lastIndex(of: UInt8(ascii: "/")) else { return BytePath(".") }
    return slash == 0 ? BytePath("/") : BytePath(bytes: Array(p.bytes[..<slash]))
  }
}

/// One upload in progress: a temporary file beside its target and the SHA-256 of what was written so far. Used by
/// one task at a time (each call on a blocking thread, one after the other), never concurrently.
final class Upload: @unchecked Sendable {
  let target: BytePath
  let temp: BytePath
  private var fd: Int32
  private let hasher = SHA256.Hasher()
  private(set) var written: Int64 = 0
  /// Quota taken for this upload (`--max-size`).
  var reserved: Int64 = 0
  /// Whether the content was put in place under the target's name.
  private(set) var placed = false

  /// Creates the temporary file (and the target's directory when it is missing).
  init(target: BytePath) throws {
    self.target = target
    let dir = RepositoryFiles.parent(target)
    let temp = dir.appending(
      ".\(BytePath.display(target.lastComponent)).tmp-\(UInt64.random(in: 0...UInt64.max))")
    self.temp = temp
    do {
      fd = try Sys.open(temp, O_WRONLY | O_CREAT | O_EXCL, 0o600)
    } catch let e as SystemError where e.errno == ENOENT {
      try Sys.mkdirAll(dir, 0o700)
      fd = try Sys.open(temp, O_WRONLY | O_CREAT | O_EXCL, 0o600)
    }
  }

  deinit { if fd >= 0 { Sys.close(fd) } }

  func write(_ buffer: ByteBuffer) throws {
    try buffer.withUnsafeReadableBytes { raw in
      hasher.update(raw)
      try Sys.pwrite(fd, raw, offset: written)
    }
    written += Int64(buffer.readableBytes)
  }

  /// The lowercase hex SHA-256 of the content (call once, after the last write).
  func digest() -> String {
    RepositoryFiles.hex(hasher.finalize())
  }

  /// Makes the content durable and puts it in place: over an existing file when `replacing`, else only if the
  /// name is free (returns false, and removes the temporary file, when it is not). The directory is fsynced.
  func commit(replacing: Bool) throws -> Bool {
    defer { discard() }
    try Sys.fsync(fd)
    Sys.close(fd)
    fd = -1
    if replacing {
      try Sys.rename(temp, target)
    } else {
      do {
        try Sys.link(temp, target)
      } catch let e as SystemError where e.errno == EEXIST {
        return false
      }
    }
    placed = true
    try Sys.fsyncDirectory(RepositoryFiles.parent(target))
    return true
  }

  /// Closes and removes the temporary file (nothing when it was renamed into place already).
  func discard() {
    if fd >= 0 {
      Sys.close(fd)
      fd = -1
    }
    try? Sys.unlink(temp)
  }
}

/// `--max-size`: the bytes all repositories of the served directory may hold together.
final class Quota: Sendable {
  let limit: Int64
  private let used: Atomic<Int64>

  init(limit: Int64, used: Int64) {
    self.limit = limit
    self.used = Atomic(used)
  }

  var current: Int64 { used.load(ordering: .relaxed) }

  /// Takes `n` bytes if they fit under the limit.
  func reserve(_ n: Int64) -> Bool {
    var now = used.load(ordering: .relaxed)
    while true {
      if now + n > limit { return false }
      let (exchanged, original) = used.compareExchange(
        expected: now, desired: now + n, ordering: .relaxed)
      if exchanged { return true }
      now = original
    }
  }

  func release(_ n: Int64) {
    used.subtract(n, ordering: .relaxed)
  }
}
