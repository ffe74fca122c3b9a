// A secret handed to local processes over an abstract Unix socket, to root and to the serving user only.
//
// `tidemark mount` holds the repository's master key; `tidemark restore PATH-IN-THE-MOUNT` can take it
// from there instead of deriving it from the password again (the key derivation is most of a small
// restore's time). The socket lives in the abstract namespace: nothing on disk, gone with the process,
// even after SIGKILL. Both ends check the other's credentials (SO_PEERCRED): the server answers only a
// peer whose uid is 0 or its own, and the client accepts only a server running as root or as itself,
// with the process ID the mount published. A process of the same user could read the key from the
// mount's memory anyway (ptrace, /proc/PID/mem); root can do anything. So the socket gives nobody
// anything they could not take already, as with ssh-agent.
import Foundation

#if canImport(Glibc)
  import Glibc
#endif

/// The credentials of a Unix socket's peer (SO_PEERCRED).
public struct PeerCredentials: Sendable, Equatable {
  public var pid: Int32
  public var uid: UInt32
  public var gid: UInt32

  /// Whether a peer with these credentials may be trusted with (or trusted to serve) our secrets.
  public var isRootOrSelf: Bool { uid == 0 || uid == geteuid() }
}

public enum SecretSocket {
  /// The credentials of the process at the other end of the connected socket `fd`.
  public static func peer(_ fd: Int32) -> PeerCredentials? {
    // struct ucred is three 32-bit fields: pid, uid, gid (Linux, every architecture).
    var raw: (Int32, UInt32, UInt32) = (0, 0, 0)
    var len = socklen_t(MemoryLayout.size(ofValue: raw))
    guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &raw, &len) == 0, Int(len) == MemoryLayout.size(ofValue: raw)
    else { return nil }
    return PeerCredentials(pid: raw.0, uid: raw.1, gid: raw.2)
  }

  /// A socket address in the abstract namespace (a leading NUL, no file).
  static func withAddress<T>(_ name: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> T) throws -> T {
    let bytes = Array(name.utf8)
    var a = sockaddr_un()
    let cap = MemoryLayout.size(ofValue: a.sun_path)
    guard !bytes.isEmpty, bytes.count + 1 <= cap, !bytes.contains(0) else {
      throw SystemError(ENAMETOOLONG, "socket name", name)
    }
    a.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &a.sun_path) { p in
      p[0] = 0
      for (i, b) in bytes.enumerated() { p[i + 1] = b }
    }
    let len = socklen_t(MemoryLayout<sa_family_t>.size + 1 + bytes.count)
    return withUnsafePointer(to: &a) { p in
      p.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, len) }
    }
  }

  static func setTimeout(_ fd: Int32, _ option: Int32, seconds: Double) {
    var tv = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1e6))
    _ = setsockopt(fd, SOL_SOCKET, option, &tv, socklen_t(MemoryLayout<timeval>.size))
  }

  /// Connects to `name`, checks the server (root or this user; process `serverPID` when given) and reads
  /// everything it sends. Throws when there is no such socket, the server is not trusted, or nothing came.
  public static func fetch(_ name: String, serverPID: Int32?, timeout: Double = 5) throws -> [UInt8] {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw SystemError(errno, "socket", name) }
    defer { Glibc.close(fd) }
    setTimeout(fd, SO_RCVTIMEO, seconds: timeout)
    setTimeout(fd, SO_SNDTIMEO, seconds: timeout)
    let rc = try withAddress(name) { Glibc.connect(fd, $0, $1) }
    guard rc == 0 else { throw SystemError(errno, "connect", name) }
    guard let server = peer(fd), server.isRootOrSelf, serverPID == nil || server.pid == serverPID else {
      throw SystemError(EPERM, "peer credentials", name)
    }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 4096)
    while true {
      let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
      if n < 0 && errno == EINTR { continue }
      guard n >= 0 else { throw SystemError(errno, "read", name) }
      if n == 0 { break }
      out += buf[0..<n]
      guard out.count <= 1 << 20 else { throw SystemError(EMSGSIZE, "read", name) }
    }
    guard !out.isEmpty else { throw SystemError(EACCES, "read", name) }
    return out
  }
}

/// Serves one secret on an abstract Unix socket until `stop()`: every connection from root or from this
/// process's user gets the secret and is closed; any other is closed at once. Accepting blocks, so it
/// happens on a thread of its own.
public final class SecretServer: Sendable {
  /// The socket's name in the abstract namespace (without the leading NUL).
  public let name: String
  let fd: Int32
  let secret: [UInt8]

  /// Binds `<prefix>/<pid>/<random>` and starts serving.
  public init(prefix: String, secret: [UInt8]) throws {
    let nonce = (0..<2).map { _ in String(UInt64.random(in: 0...UInt64.max), radix: 16) }.joined()
    name = "\(prefix)/\(getpid())/\(nonce)"
    self.secret = secret
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw SystemError(errno, "socket", name) }
    let rc = try SecretSocket.withAddress(name) { Glibc.bind(fd, $0, $1) }
    guard rc == 0, listen(fd, 16) == 0 else {
      let e = errno
      Glibc.close(fd)
      throw SystemError(e, "bind", name)
    }
    self.fd = fd
    let t = Thread { [self] in serve() }
    t.name = "tidemark-key"
    t.start()
  }

  func serve() {
    while true {
      let c = accept(fd, nil, nil)
      if c < 0 {
        if errno == EINTR || errno == ECONNABORTED { continue }
        break  // shut down (stop) or out of descriptors
      }
      _ = fcntl(c, F_SETFD, FD_CLOEXEC)
      if let p = SecretSocket.peer(c), p.isRootOrSelf {
        SecretSocket.setTimeout(c, SO_SNDTIMEO, seconds: 2)
        var sent = 0
        while sent < secret.count {
          let n = secret.withUnsafeBytes { Glibc.write(c, $0.baseAddress! + sent, $0.count - sent) }
          if n < 0 && errno == EINTR { continue }
          if n <= 0 { break }
          sent += n
        }
      }
      Glibc.close(c)
    }
    Glibc.close(fd)
  }

  /// Stops accepting (the serving thread closes the socket and ends).
  public func stop() { _ = shutdown(fd, Int32(SHUT_RDWR)) }
}
