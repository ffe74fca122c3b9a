// The SFTP backend: restic's layout on an SSH server, through libssh2 (TidemarkSSH).
//
// A pool of up to `connections` sessions (default 5) serves requests in parallel; every libssh2 call
// runs on a blocking thread. A save writes a temp file in the final directory, fsyncs it on the server
// (fsync@openssh.com) and renames it into place, so a reader never sees a partial file. A broken
// connection is dropped and the operation retried once on a fresh one (every operation is idempotent).
import Foundation
import Synchronization
import TidemarkCore
import TidemarkSSH
import TidemarkSystem

public final class SFTPBackend: Backend {
  public let endpoint: SSHEndpoint
  /// The repository directory on the server (absolute, or relative to the user's home).
  public let root: [UInt8]
  public let location: String
  private let permits: AsyncSemaphore
  private let idle = Mutex<[SFTPSession]>([])
  /// Until one connection has worked, an unreachable host is a mistake to report at once (wrong host
  /// or port), not an outage to wait out.
  private let everConnected = Atomic<Bool>(false)

  public init(endpoint: SSHEndpoint, path: String, connections: Int = 5, location: String) {
    self.endpoint = endpoint
    var p = Array(path.utf8)
    while p.count > 1 && p.last == 47 { p.removeLast() }
    root = p.isEmpty ? [46] : p
    self.location = location
    permits = AsyncSemaphore(max(1, connections))
  }

  /// Parses `sftp:user@host:/path`, `sftp:host:path` (relative to the home directory) and
  /// `sftp://user@host:port//absolute/path` (`sftp://host/relative`). Returns user, host, port, path.
  public static func parse(_ location: String) -> (user: String?, host: String, port: Int?, path: String)? {
    guard location.hasPrefix("sftp:") else { return nil }
    var rest = String(location.dropFirst(5))
    if rest.hasPrefix("//") {
      rest.removeFirst(2)
      guard let slash = rest.firstIndex(of: "/") else { return nil }
      var authority = String(rest[..<slash])
      let path = String(rest[rest.index(after: slash)...])
      var user: String? = nil
      if let at = authority.lastIndex(of: "@") {
        user = String(authority[..<at])
        authority = String(authority[authority.index(after: at)...])
      }
      var port: Int? = nil
      if let colon = authority.lastIndex(of: ":"), !authority.hasSuffix("]") {
        port = Int(authority[authority.index(after: colon)...])
        authority = String(authority[..<colon])
      }
      if authority.hasPrefix("[") && authority.hasSuffix("]") { authority = String(authority.dropFirst().dropLast()) }
      guard !authority.isEmpty, !path.isEmpty else { return nil }
      return (user, authority, port, path)
    }
    var user: String? = nil
    if let at = rest.firstIndex(of: "@"), rest.firstIndex(of: ":").map({ at < $0 }) ?? false {
      user = String(rest[..<at])
      rest = String(rest[rest.index(after: at)...])
    }
    guard let colon = rest.firstIndex(of: ":") else { return nil }
    let host = String(rest[..<colon])
    let path = String(rest[rest.index(after: colon)...])
    guard !host.isEmpty else { return nil }
    return (user, host, nil, path.isEmpty ? "." : path)
  }

  func join(_ parts: String...) -> [UInt8] {
    var out = root
    for p in parts { out += [47] + Array(p.utf8) }
    return out
  }

  func path(_ h: Handle) -> [UInt8] {
    switch h.type {
    case .config: return join("config")
    case .pack: return join("data", String(h.name.prefix(2)), h.name)
    default: return join(h.type.rawValue, h.name)
    }
  }

  /// Runs `op` on a pooled session, on a blocking thread; reconnects once if the connection broke.
  func withSession<T: Sendable>(_ op: @escaping @Sendable (SFTPSession) throws -> T) async throws -> T {
    await permits.acquire()
    defer { permits.release() }
    var attempt = 0
    while true {
      let cached = idle.withLock { $0.popLast() }
      let endpoint = self.endpoint
      do {
        let s: SFTPSession
        if let cached {
          s = cached
        } else {
          s = try await Blocking.run { try SFTPSession(endpoint) }
        }
        everConnected.store(true, ordering: .relaxed)
        let r = try await Blocking.run { try op(s) }
        idle.withLock { $0.append(s) }
        return r
      } catch let e as SFTPError where e.kind == .connection && attempt == 0 {
        attempt += 1  // the session is dropped (not returned to the pool); try a fresh one
      } catch let e as SFTPError {
        throw SFTPBackend.mapped(e, transient: everConnected.load(ordering: .relaxed))
      }
    }
  }

  /// One line that says what is wrong and what to do.
  static func mapped(_ e: SFTPError, transient: Bool) -> Error {
    switch e.kind {
    case .notFound: return e
    case .connection: return TidemarkError(.unavailable, e.message, hint: e.hint)
    case .unreachable where transient: return TidemarkError(.unavailable, e.message, hint: e.hint)
    default: return TidemarkError(.general, e.message, hint: e.hint)
    }
  }

  public func create() async throws {
    let dirs: [[UInt8]] =
      [root] + FileType.layout.map { join($0.rawValue) }
      + (0..<256).map { join("data", String(format: "%02x", $0)) }
    let root = self.root
    try await withSession { s in
      // The repository directory and its parents, then the layout.
      var prefix: [UInt8] = root.first == 47 ? [47] : []
      for c in root.split(separator: 47) {
        prefix += (prefix.isEmpty || prefix == [47]) ? Array(c) : [47] + Array(c)
        if try s.stat(prefix) == nil { try s.mkdir(prefix) }
      }
      for d in dirs { try s.mkdir(d) }
    }
  }

  public func save(_ h: Handle, data: [UInt8]) async throws {
    let final = path(h)
    var tmp = final
    tmp += Array(".tmp-\(UInt32.random(in: 0...UInt32.max))".utf8)
    let dir = Array(final[..<(final.lastIndex(of: 47) ?? final.startIndex)])
    let temp = tmp
    try await withSession { s in
      do {
        try data.withUnsafeBytes { try s.write(temp, $0, mode: 0o400) }
      } catch let e as SFTPError where e.kind == .notFound && (h.type == .pack || h.type == .site) {
        try s.mkdir(dir)  // a repository made elsewhere may lack a data/XX directory; tidemark/ comes on first use
        try data.withUnsafeBytes { try s.write(temp, $0, mode: 0o400) }
      }
      do {
        try s.rename(temp, final)
      } catch {
        // SFTP v3 (OpenSSH) will not rename over an existing file. Stored files are named by their
        // content, so an existing one of the same size holds the same bytes: keep it.
        if let st = try? s.stat(final), st.isRegular, st.size == data.count {
          try? s.unlink(temp)
          return
        }
        try? s.unlink(temp)
        throw error
      }
    }
  }

  public func load(_ h: Handle, offset: Int, length: Int) async throws -> [UInt8] {
    let p = path(h)
    do {
      return try await withSession { s in try s.read(p, offset: offset, length: length) }
    } catch let e as SFTPError where e.kind == .notFound {
      throw BackendNotFound(h)
    }
  }

  public func size(_ h: Handle) async throws -> Int {
    let p = path(h)
    guard let st = try await withSession({ s in try s.stat(p) }) else { throw BackendNotFound(h) }
    return st.size
  }

  public func list(_ t: FileType) async throws -> [FileInfo] {
    let d = join(t.rawValue)
    return try await withSession { s in
      func listOne(_ d: [UInt8]) throws -> [FileInfo] {
        let entries: [SFTPSession.Entry]
        do {
          entries = try s.list(d)
        } catch let e as SFTPError where e.kind == .notFound {
          return []
        }
        return entries.compactMap { e in
          guard e.isRegular, e.name.count == 64 else { return nil }  // never temp files
          let name = String(decoding: e.name, as: UTF8.self)
          return RawID(hex: name) == nil ? nil : FileInfo(name: name, size: e.size)
        }
      }
      if t == .pack {
        var all: [FileInfo] = []
        let subs = (try? s.list(d)) ?? []
        for sub in subs where sub.isDirectory && sub.name.count == 2 { all += try listOne(d + [47] + sub.name) }
        return all
      }
      if t == .config {
        guard let st = try s.stat(self.join("config")), st.isRegular else { return [] }
        return [FileInfo(name: "config", size: st.size)]
      }
      return try listOne(d)
    }
  }

  public func remove(_ h: Handle) async throws {
    let p = path(h)
    do {
      try await withSession { s in try s.unlink(p) }
    } catch let e as SFTPError where e.kind == .notFound {
      throw BackendNotFound(h)
    }
  }
}
