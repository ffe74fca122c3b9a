// Users and bcrypt password hashes from an htpasswd file (`htpasswd -B`), read once at start. A password that
// verified is remembered (as its SHA-256) so that each request does not pay bcrypt's cost again; bcrypt runs on a
// blocking thread, never on the cooperative pool.
import HummingbirdBcrypt
import Synchronization
import TidemarkCore
import TidemarkCrypto
import TidemarkSystem

public final class Htpasswd: Sendable {
  private let hashes: [String: String]
  private let verified = Mutex<[String: [UInt8]]>([:])

  /// Parses `user:hash` lines; blank lines and `#` comments are skipped. Throws a one-line usage error for an
  /// entry that is not bcrypt (`$2a$`, `$2b$`, `$2y$`).
  public init(text: String, file: String) throws {
    var hashes: [String: String] = [:]
    for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
      let l = line.trimmingSuffix { $0 == "\r" || $0 == " " }
      if l.isEmpty || l.hasPrefix("#") { continue }
      guard let colon = l.firstIndex(of: ":"), colon != l.startIndex else {
        throw TidemarkError(.usage, "\(file) line \(i + 1) is not USER:HASH")
      }
      let user = String(l[..<colon])
      var hash = String(l[l.index(after: colon)...])
      guard hash.hasPrefix("$2a$") || hash.hasPrefix("$2b$") || hash.hasPrefix("$2y$") else {
        throw TidemarkError(
          .usage, "\(file) line \(i + 1): the entry of \(user) is not bcrypt; create it with `htpasswd -B`")
      }
      // $2y$ (Apache's name) is the same algorithm as $2b$.
      if hash.hasPrefix("$2y$") { hash = "$2b$" + hash.dropFirst(4) }
      hashes[user] = hash
    }
    self.hashes = hashes
  }

  /// Reads and parses `path`.
  public static func load(_ path: String) async throws -> Htpasswd {
    let bytes: [UInt8]
    do {
      bytes = try await Blocking.run { try Sys.readFile(BytePath(path)) }
    } catch let e as SystemError {
      throw TidemarkError(.usage, "cannot read the htpasswd file: \(e)")
    }
    return try Htpasswd(text: String(decoding: bytes, as: UTF8.self), file: path)
  }

  public var isEmpty: Bool { hashes.isEmpty }

  /// Whether `password` is `user`'s.
  public func verify(user: String, password: String) async -> Bool {
    guard let hash = hashes[user] else { return false }
    let digest = SHA256.hash(Array(password.utf8))
    if verified.withLock({ $0[user] }) == digest { return true }
    let ok = (try? await Blocking.run { Bcrypt.verify(password, hash: hash) }) ?? false
    if ok { verified.withLock { $0[user] = digest } }
    return ok
  }
}

extension Substring {
  fileprivate func trimmingSuffix(while drop: (Character) -> Bool) -> Substring {
    var s = self
    while let c = s.last, drop(c) { s.removeLast() }
    return s
  }
}
