// A blocking SFTP client over libssh2: one TCP connection, one SSH session, one SFTP channel.
//
// Every call blocks: callers run it on a blocking thread (TidemarkSystem's `Blocking`), never on Swift's
// cooperative pool, and use one `SFTPSession` from one thread at a time (the backend's pool does).
// The server's host key is checked against known_hosts files before anything else; an unknown or
// changed key ends the connection with the key's fingerprint and how to trust it.
internal import CSSH2
import Foundation

/// Where and as whom to connect.
public struct SSHEndpoint: Sendable, Hashable {
  public var host: String
  public var port: Int
  public var user: String
  /// Private key files to try, in order (OpenSSH format; Ed25519 or ECDSA).
  public var identities: [String]
  /// known_hosts files; the host key must be in one of them.
  public var knownHosts: [String]
  /// Also try the keys of a running ssh-agent (SSH_AUTH_SOCK).
  public var useAgent: Bool
  public var connectTimeout: Double = 15

  public init(host: String, port: Int, user: String, identities: [String], knownHosts: [String], useAgent: Bool) {
    (self.host, self.port, self.user, self.identities, self.knownHosts, self.useAgent) =
      (host, port, user, identities, knownHosts, useAgent)
  }
}

public struct SFTPError: Error, CustomStringConvertible, Sendable {
  public enum Kind: Sendable {
    /// Cannot reach the host (refused, unreachable, timeout, name lookup).
    case unreachable
    case hostKeyUnknown
    case hostKeyChanged
    case authentication
    case notFound
    case permissionDenied
    case noSpace
    /// The connection broke (worth reconnecting).
    case connection
    case other
  }
  public let kind: Kind
  public let message: String
  public var hint: String? = nil
  public var description: String { message }
}

public final class SFTPSession: @unchecked Sendable {
  // @unchecked: the pointers are used by one thread at a time (the caller's contract).
  private var socket: Int32 = -1
  private var session: OpaquePointer?
  private var sftp: OpaquePointer?
  public let endpoint: SSHEndpoint

  private static let initialized: Bool = { libssh2_init(0) == 0 }()

  /// Connects, verifies the host key, authenticates and opens the SFTP channel (blocking).
  public init(_ e: SSHEndpoint) throws {
    endpoint = e
    guard SFTPSession.initialized else { throw SFTPError(kind: .other, message: "libssh2_init failed") }
    do {
      try connect()
      guard let s = libssh2_session_init_ex(nil, nil, nil, nil) else {
        throw SFTPError(kind: .other, message: "cannot create an SSH session")
      }
      session = s
      libssh2_session_set_blocking(s, 1)
      libssh2_session_set_timeout(s, 120_000)
      if libssh2_session_handshake(s, socket) != 0 {
        throw SFTPError(
          kind: .unreachable, message: "SSH handshake with \(e.host):\(e.port) failed: \(lastError())",
          hint: "is an SSH server listening there?")
      }
      try verifyHostKey(s)
      try authenticate(s)
      guard let f = libssh2_sftp_init(s) else {
        throw SFTPError(
          kind: .other, message: "the SFTP subsystem of \(e.host) cannot be started: \(lastError())",
          hint: "the server needs `Subsystem sftp` enabled")
      }
      sftp = f
    } catch {
      close()
      throw error
    }
  }

  deinit { close() }

  private func close() {
    if let f = sftp { libssh2_sftp_shutdown(f) }
    sftp = nil
    if let s = session {
      libssh2_session_disconnect_ex(s, SSH_DISCONNECT_BY_APPLICATION, "bye", "")
      libssh2_session_free(s)
    }
    session = nil
    if socket >= 0 { Glibc.close(socket) }
    socket = -1
  }

  // MARK: Connecting

  private func connect() throws {
    let e = endpoint
    var hints = addrinfo()
    hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
    hints.ai_family = AF_UNSPEC
    var res: UnsafeMutablePointer<addrinfo>? = nil
    let rc = getaddrinfo(e.host, String(e.port), &hints, &res)
    guard rc == 0, let first = res else {
      throw SFTPError(
        kind: .unreachable, message: "cannot resolve host \(e.host): \(String(cString: gai_strerror(rc)))",
        hint: "check the host name in the repository location")
    }
    defer { freeaddrinfo(res) }
    var lastErr: Int32 = 0
    var ai: UnsafeMutablePointer<addrinfo>? = first
    while let a = ai {
      let fd = Glibc.socket(a.pointee.ai_family, a.pointee.ai_socktype, a.pointee.ai_protocol)
      if fd >= 0 {
        var tv = timeval(tv_sec: Int(e.connectTimeout), tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        if Glibc.connect(fd, a.pointee.ai_addr, a.pointee.ai_addrlen) == 0 {
          var zero = timeval()
          setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &zero, socklen_t(MemoryLayout<timeval>.size))
          var one: Int32 = 1
          setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
          socket = fd
          return
        }
        lastErr = errno
        Glibc.close(fd)
      }
      ai = a.pointee.ai_next
    }
    throw SFTPError(
      kind: .unreachable,
      message: "cannot connect to \(e.host) port \(e.port): \(String(cString: strerror(lastErr)))",
      hint: "is the host up and an SSH server listening on that port?")
  }

  private func verifyHostKey(_ s: OpaquePointer) throws {
    let e = endpoint
    var len = 0
    var type: Int32 = 0
    guard let key = libssh2_session_hostkey(s, &len, &type) else {
      throw SFTPError(kind: .other, message: "the server sent no host key")
    }
    let fingerprint = SFTPSession.fingerprint(s)
    let keyType = SFTPSession.keyTypeName(type)
    guard let kh = libssh2_knownhost_init(s) else { throw SFTPError(kind: .other, message: "libssh2_knownhost_init") }
    defer { libssh2_knownhost_free(kh) }
    for f in e.knownHosts where FileManager.default.fileExists(atPath: f) {
      _ = libssh2_knownhost_readfile(kh, f, LIBSSH2_KNOWNHOST_FILE_OPENSSH)
    }
    var entry: UnsafeMutablePointer<libssh2_knownhost>? = nil
    let check = libssh2_knownhost_checkp(
      kh, e.host, Int32(e.port), key, len, LIBSSH2_KNOWNHOST_TYPE_PLAIN | LIBSSH2_KNOWNHOST_KEYENC_RAW, &entry)
    let name = e.port == 22 ? e.host : "[\(e.host)]:\(e.port)"
    switch check {
    case LIBSSH2_KNOWNHOST_CHECK_MATCH:
      return
    case LIBSSH2_KNOWNHOST_CHECK_MISMATCH:
      throw SFTPError(
        kind: .hostKeyChanged,
        message:
          "the host key of \(name) has CHANGED: the server now shows \(keyType) \(fingerprint), which does not match known_hosts (\(e.knownHosts.joined(separator: ", ")))",
        hint:
          "if the server was reinstalled on purpose, remove the old key (ssh-keygen -R '\(name)') and add the new one; otherwise someone may be intercepting the connection"
      )
    default:
      throw SFTPError(
        kind: .hostKeyUnknown,
        message:
          "the host key of \(name) is not known: \(keyType) \(fingerprint) is in none of \(e.knownHosts.joined(separator: ", "))",
        hint:
          "check the fingerprint with the server's administrator, then trust it: ssh-keyscan -p \(e.port) -t \(SFTPSession.keyscanType(type)) \(e.host) >> ~/.ssh/known_hosts (or -o sftp.known-hosts=FILE)"
      )
    }
  }

  static func fingerprint(_ s: OpaquePointer) -> String {
    guard let h = libssh2_hostkey_hash(s, LIBSSH2_HOSTKEY_HASH_SHA256) else { return "(no fingerprint)" }
    let bytes = Data(bytes: h, count: 32)
    var b64 = bytes.base64EncodedString()
    while b64.hasSuffix("=") { b64.removeLast() }
    return "SHA256:" + b64
  }

  static func keyTypeName(_ t: Int32) -> String {
    switch t {
    case LIBSSH2_HOSTKEY_TYPE_RSA: return "RSA key"
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_256, LIBSSH2_HOSTKEY_TYPE_ECDSA_384, LIBSSH2_HOSTKEY_TYPE_ECDSA_521:
      return "ECDSA key"
    case LIBSSH2_HOSTKEY_TYPE_ED25519: return "ED25519 key"
    default: return "key"
    }
  }

  static func keyscanType(_ t: Int32) -> String {
    switch t {
    case LIBSSH2_HOSTKEY_TYPE_RSA: return "rsa"
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_256, LIBSSH2_HOSTKEY_TYPE_ECDSA_384, LIBSSH2_HOSTKEY_TYPE_ECDSA_521:
      return "ecdsa"
    default: return "ed25519"
    }
  }

  private func authenticate(_ s: OpaquePointer) throws {
    let e = endpoint
    var tried: [String] = []
    for key in e.identities where FileManager.default.fileExists(atPath: key) {
      tried.append(key)
      let pub = key + ".pub"
      let hasPub = FileManager.default.fileExists(atPath: pub)
      let rc = libssh2_userauth_publickey_fromfile_ex(
        s, e.user, UInt32(e.user.utf8.count), hasPub ? pub : nil, key, nil)
      if rc == 0 { return }
    }
    if e.useAgent, ProcessInfo.processInfo.environment["SSH_AUTH_SOCK"] != nil, let agent = libssh2_agent_init(s) {
      defer {
        libssh2_agent_disconnect(agent)
        libssh2_agent_free(agent)
      }
      if libssh2_agent_connect(agent) == 0 && libssh2_agent_list_identities(agent) == 0 {
        tried.append("ssh-agent")
        var prev: UnsafeMutablePointer<libssh2_agent_publickey>? = nil
        var id: UnsafeMutablePointer<libssh2_agent_publickey>? = nil
        while libssh2_agent_get_identity(agent, &id, prev) == 0 {
          if libssh2_agent_userauth(agent, e.user, id) == 0 { return }
          prev = id
        }
      }
    }
    throw SFTPError(
      kind: .authentication,
      message:
        "\(e.user)@\(e.host) refused every key (tried: \(tried.isEmpty ? "none found" : tried.joined(separator: ", ")))",
      hint:
        "add your public key to ~\(e.user)/.ssh/authorized_keys on the server, or pass -o sftp.identity=FILE (Ed25519 or ECDSA, OpenSSH format)"
    )
  }

  private func lastError() -> String {
    guard let s = session else { return "no session" }
    var msg: UnsafeMutablePointer<CChar>? = nil
    var len: Int32 = 0
    let code = libssh2_session_last_error(s, &msg, &len, 0)
    return msg.map { String(cString: $0) } ?? "libssh2 error \(code)"
  }

  /// The error of the last failed SFTP call, classified.
  private func failure(_ op: String, _ path: [UInt8]) -> SFTPError {
    let p = String(decoding: path, as: UTF8.self)
    guard let f = sftp, let s = session else {
      return SFTPError(kind: .connection, message: "\(op) \(p): not connected")
    }
    let sessionErr = libssh2_session_last_errno(s)
    if sessionErr != LIBSSH2_ERROR_SFTP_PROTOCOL {
      return SFTPError(kind: .connection, message: "\(op) \(p): \(lastError())")
    }
    switch libssh2_sftp_last_error(f) {
    case UInt(LIBSSH2_FX_NO_SUCH_FILE), UInt(LIBSSH2_FX_NO_SUCH_PATH):
      return SFTPError(kind: .notFound, message: "\(op) \(p): no such file")
    case UInt(LIBSSH2_FX_PERMISSION_DENIED):
      return SFTPError(
        kind: .permissionDenied, message: "\(op) \(p): permission denied on the server",
        hint: "check the ownership and modes of the repository directory on the server")
    case UInt(LIBSSH2_FX_NO_SPACE_ON_FILESYSTEM), UInt(LIBSSH2_FX_QUOTA_EXCEEDED):
      return SFTPError(
        kind: .noSpace, message: "\(op) \(p): the server's disk is full", hint: "free space on the server")
    case let c:
      return SFTPError(kind: .other, message: "\(op) \(p): SFTP error \(c)")
    }
  }

  // MARK: Files

  private func open(_ path: [UInt8], flags: UInt, mode: Int, type: Int32) -> OpaquePointer? {
    path.withUnsafeBufferPointer { p in
      p.withMemoryRebound(to: CChar.self) { c in
        libssh2_sftp_open_ex(sftp, c.baseAddress, UInt32(c.count), flags, mode, type)
      }
    }
  }

  /// `length` bytes at `offset` (`length` 0: to the end). Throws `.notFound` for a missing file.
  public func read(_ path: [UInt8], offset: Int, length: Int) throws -> [UInt8] {
    guard let h = open(path, flags: UInt(LIBSSH2_FXF_READ), mode: 0, type: LIBSSH2_SFTP_OPENFILE) else {
      throw failure("open", path)
    }
    defer { libssh2_sftp_close_handle(h) }
    var want = length
    if want == 0 {
      var a = LIBSSH2_SFTP_ATTRIBUTES()
      guard libssh2_sftp_fstat_ex(h, &a, 0) == 0 else { throw failure("stat", path) }
      want = max(0, Int(a.filesize) - offset)
    }
    libssh2_sftp_seek64(h, UInt64(offset))
    var out = [UInt8](unsafeUninitializedCapacity: want) { _, n in n = want }
    var done = 0
    try out.withUnsafeMutableBytes { b in
      while done < want {
        let n = libssh2_sftp_read(
          h, b.baseAddress!.advanced(by: done).assumingMemoryBound(to: CChar.self), min(want - done, 1 << 20))
        if n < 0 { throw failure("read", path) }
        if n == 0 {
          throw SFTPError(
            kind: .other,
            message:
              "read \(String(decoding: path, as: UTF8.self)): the file ends at \(offset + done), wanted \(offset + want)"
          )
        }
        done += n
      }
    }
    return out
  }

  /// Creates (or truncates) `path`, writes `data` in large calls (libssh2 pipelines them) and, with
  /// `sync`, asks the server to fsync it (fsync@openssh.com) before closing.
  public func write(_ path: [UInt8], _ data: UnsafeRawBufferPointer, mode: Int = 0o600, sync: Bool = true) throws {
    let flags = UInt(LIBSSH2_FXF_WRITE | LIBSSH2_FXF_CREAT | LIBSSH2_FXF_TRUNC)
    guard let h = open(path, flags: flags, mode: mode, type: LIBSSH2_SFTP_OPENFILE) else {
      throw failure("create", path)
    }
    var closed = false
    defer { if !closed { libssh2_sftp_close_handle(h) } }
    var done = 0
    while done < data.count {
      let n = libssh2_sftp_write(
        h, data.baseAddress!.advanced(by: done).assumingMemoryBound(to: CChar.self), min(data.count - done, 1 << 20))
      if n < 0 { throw failure("write", path) }
      done += n
    }
    if sync && libssh2_sftp_fsync(h) != 0 {
      // Servers without fsync@openssh.com: close still makes the server write it out.
      if libssh2_sftp_last_error(sftp) != UInt(LIBSSH2_FX_OP_UNSUPPORTED) { throw failure("fsync", path) }
    }
    closed = true
    if libssh2_sftp_close_handle(h) != 0 { throw failure("close", path) }
  }

  /// Renames `from` to `to`. SFTP version 3 servers (OpenSSH) refuse to overwrite: when `to` exists,
  /// `replace` removes it first (not atomic; only for files whose content never differs).
  public func rename(_ from: [UInt8], _ to: [UInt8]) throws {
    let flags = Int(LIBSSH2_SFTP_RENAME_OVERWRITE | LIBSSH2_SFTP_RENAME_ATOMIC | LIBSSH2_SFTP_RENAME_NATIVE)
    let rc = from.withUnsafeBufferPointer { a in
      to.withUnsafeBufferPointer { b in
        a.withMemoryRebound(to: CChar.self) { a in
          b.withMemoryRebound(to: CChar.self) { b in
            libssh2_sftp_rename_ex(sftp, a.baseAddress, UInt32(a.count), b.baseAddress, UInt32(b.count), flags)
          }
        }
      }
    }
    if rc != 0 { throw failure("rename", from) }
  }

  public struct Stat: Sendable {
    public var size: Int
    public var isDirectory: Bool
    public var isRegular: Bool
  }

  /// The file's size and type, or nil when it does not exist.
  public func stat(_ path: [UInt8]) throws -> Stat? {
    var a = LIBSSH2_SFTP_ATTRIBUTES()
    let rc = path.withUnsafeBufferPointer { p in
      p.withMemoryRebound(to: CChar.self) {
        libssh2_sftp_stat_ex(sftp, $0.baseAddress, UInt32($0.count), LIBSSH2_SFTP_STAT, &a)
      }
    }
    if rc != 0 {
      let e = failure("stat", path)
      if e.kind == .notFound { return nil }
      throw e
    }
    let type = a.permissions & UInt(LIBSSH2_SFTP_S_IFMT)
    return Stat(
      size: Int(a.filesize), isDirectory: type == UInt(LIBSSH2_SFTP_S_IFDIR),
      isRegular: type == UInt(LIBSSH2_SFTP_S_IFREG))
  }

  public struct Entry: Sendable {
    public var name: [UInt8]
    public var size: Int
    public var isRegular: Bool
    public var isDirectory: Bool
  }

  /// The directory's entries (without . and ..); throws `.notFound` when it does not exist.
  public func list(_ path: [UInt8]) throws -> [Entry] {
    guard let h = open(path, flags: 0, mode: 0, type: LIBSSH2_SFTP_OPENDIR) else { throw failure("list", path) }
    defer { libssh2_sftp_close_handle(h) }
    var out: [Entry] = []
    var buf = [CChar](repeating: 0, count: 4096)
    while true {
      var a = LIBSSH2_SFTP_ATTRIBUTES()
      let n = buf.withUnsafeMutableBufferPointer { libssh2_sftp_readdir_ex(h, $0.baseAddress, $0.count, nil, 0, &a) }
      if n < 0 { throw failure("list", path) }
      if n == 0 { break }
      let name = buf.withUnsafeBufferPointer { Array(UnsafeRawBufferPointer(start: $0.baseAddress, count: Int(n))) }
      if name == [46] || name == [46, 46] { continue }
      let type = a.permissions & UInt(LIBSSH2_SFTP_S_IFMT)
      out.append(
        Entry(
          name: name, size: Int(a.filesize), isRegular: type == UInt(LIBSSH2_SFTP_S_IFREG),
          isDirectory: type == UInt(LIBSSH2_SFTP_S_IFDIR)))
    }
    return out
  }

  /// Creates a directory; an existing directory is fine.
  public func mkdir(_ path: [UInt8], mode: Int = 0o700) throws {
    let rc = path.withUnsafeBufferPointer { p in
      p.withMemoryRebound(to: CChar.self) { libssh2_sftp_mkdir_ex(sftp, $0.baseAddress, UInt32($0.count), mode) }
    }
    if rc != 0 {
      let e = failure("mkdir", path)
      if let st = try? stat(path), st.isDirectory { return }
      throw e
    }
  }

  public func unlink(_ path: [UInt8]) throws {
    let rc = path.withUnsafeBufferPointer { p in
      p.withMemoryRebound(to: CChar.self) { libssh2_sftp_unlink_ex(sftp, $0.baseAddress, UInt32($0.count)) }
    }
    if rc != 0 { throw failure("remove", path) }
  }
}
