// The local directory backend: restic's layout, files 0400, directories 0700, every save atomic and
// durable (temp, fsync, rename, fsync dir). Blocking I/O runs on TidemarkSystem's blocking threads.
import Foundation
import TidemarkCore
import TidemarkSystem

public struct LocalBackend: Backend {
  public let root: BytePath
  public var location: String { root.description }
  /// Large loads of uncached pack ranges bypass the page cache (see `DirectReader`).
  private let direct = DirectReader()
  /// Packs written piece by piece bypass it too (see `DirectWriter`).
  let directWrites = DirectWriteBuffers()

  public init(path: BytePath) { root = path }

  func dir(_ t: FileType) -> BytePath { root.appending(t.rawValue) }

  func path(_ h: Handle) -> BytePath {
    switch h.type {
    case .config: return root.appending("config")
    case .pack: return dir(.pack).appending(String(h.name.prefix(2))).appending(h.name)
    default: return dir(h.type).appending(h.name)
    }
  }

  public func create() async throws {
    let root = self.root
    try await Blocking.run {
      try Sys.mkdirAll(root, 0o700)
      for t in FileType.layout { try Sys.mkdir(root.appending(t.rawValue), 0o700) }
      for i in 0..<256 {
        try Sys.mkdir(root.appending("data").appending(String(format: "%02x", i)), 0o700)
      }
    }
  }

  public func save(_ h: Handle, data: [UInt8]) async throws {
    let p = path(h)
    let root = self.root
    try await Blocking.run {
      do {
        try data.withUnsafeBytes { try Sys.writeAtomically(p, $0, mode: 0o400) }
      } catch let e as SystemError where e.errno == ENOENT && (h.type == .pack || h.type == .site) {
        // A repository made by an older tool may lack a data/XX directory; tidemark/ is made on first use.
        try Sys.mkdir(
          h.type == .pack ? root.appending("data").appending(String(h.name.prefix(2))) : root.appending("tidemark"),
          0o700)
        try data.withUnsafeBytes { try Sys.writeAtomically(p, $0, mode: 0o400) }
      }
    }
  }

  public func load(_ h: Handle, offset: Int, length: Int) async throws -> [UInt8] {
    try await load(h, offset: offset, length: length, reusing: [])
  }

  /// Blocking: opens `h` for a load of `length` bytes at `offset` (0: to the end); returns the descriptor (the
  /// caller closes it) and the length.
  private func openRange(_ h: Handle, offset: Int, length: Int) throws -> (Int32, Int) {
    let fd: Int32
    do {
      fd = try Sys.open(path(h), O_RDONLY)
    } catch let e as SystemError where e.errno == ENOENT {
      throw BackendNotFound(h)
    }
    do {
      let size = Int(try Sys.fstat(fd).size)
      let n = length == 0 ? size - offset : length
      guard offset >= 0, n >= 0, offset + n <= size else {
        throw TidemarkError.corrupt("\(h) is shorter than expected (\(size) bytes, wanted \(offset)+\(n))")
      }
      return (fd, n)
    } catch {
      Sys.close(fd)
      throw error
    }
  }

  public func loadBytes(_ h: Handle, offset: Int, length: Int) async throws -> LoadedBytes {
    let direct = self.direct
    return try await Blocking.run {
      let (fd, n) = try openRange(h, offset: offset, length: length)
      defer { Sys.close(fd) }
      if let owned = try direct.readOwned(fd, offset: Int64(offset), count: n) {
        guard owned.count == n else {
          owned.free()
          throw TidemarkError.corrupt("\(h): short read")
        }
        return LoadedBytes(base: owned.start, count: n, release: owned.free)
      }
      // Small or cached: through the page cache, on the same descriptor.
      var out: [UInt8] = []
      out.resizeReusing(n)
      let got = try out.withUnsafeMutableBytes { try Sys.pread(fd, $0, offset: Int64(offset)) }
      guard got == n else { throw TidemarkError.corrupt("\(h): short read") }
      return LoadedBytes(out)
    }
  }

  public func load(_ h: Handle, offset: Int, length: Int, reusing buffer: consuming [UInt8]) async throws
    -> [UInt8]
  {
    let direct = self.direct
    return try await Blocking.run(moving: consume buffer) { (out: inout [UInt8]) in
      let (fd, n) = try openRange(h, offset: offset, length: length)
      defer { Sys.close(fd) }
      out.resizeReusing(n, roomToGrow: true)
      let got = try out.withUnsafeMutableBytes { b in
        try direct.read(fd, into: b, offset: Int64(offset)) ?? Sys.pread(fd, b, offset: Int64(offset))
      }
      guard got == n else { throw TidemarkError.corrupt("\(h): short read") }
    }.0
  }

  public func size(_ h: Handle) async throws -> Int {
    let p = path(h)
    return try await Blocking.run {
      do {
        return Int(try Sys.lstat(p).size)
      } catch let e as SystemError where e.errno == ENOENT {
        throw BackendNotFound(h)
      }
    }
  }

  public func list(_ t: FileType) async throws -> [FileInfo] {
    let d = dir(t)
    return try await Blocking.run {
      func listOne(_ d: BytePath) throws -> [FileInfo] {
        let names: [[UInt8]]
        do {
          names = try Sys.readDirectory(d)
        } catch let e as SystemError where e.errno == ENOENT {
          return []
        }
        var out: [FileInfo] = []
        for n in names where n.count == 64 {
          let s = String(decoding: n, as: UTF8.self)
          guard RawID(hex: s) != nil, let st = try? Sys.lstat(d.appending(n)), st.isRegular else { continue }
          out.append(FileInfo(name: s, size: Int(st.size)))
        }
        return out
      }
      if t == .pack {
        var all: [FileInfo] = []
        for sub in (try? Sys.readDirectory(d)) ?? [] where sub.count == 2 { all += try listOne(d.appending(sub)) }
        return all
      }
      return try listOne(d)
    }
  }

  public func remove(_ h: Handle) async throws {
    let p = path(h)
    try await Blocking.run {
      do {
        try Sys.unlink(p)
      } catch let e as SystemError where e.errno == ENOENT {
        throw BackendNotFound(h)
      }
    }
  }
}
