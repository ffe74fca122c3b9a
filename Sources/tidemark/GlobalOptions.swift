// Options every command shares, and how they become an opened repository.
import ArgumentParser
import Dispatch
import Foundation
import TidemarkBackends
import TidemarkCore
import TidemarkEngine
import TidemarkOperations
import TidemarkSSH
import TidemarkSystem

struct GlobalOptions: ParsableArguments {
  @Option(
    name: [.customShort("r"), .customLong("repo")],
    help: "Repository: a directory path or local:/path (env: TIDEMARK_REPOSITORY, RESTIC_REPOSITORY).")
  var repo: String?

  @Option(help: "Read the password from this file (env: TIDEMARK_PASSWORD_FILE, RESTIC_PASSWORD_FILE).")
  var passwordFile: String?

  @Option(
    help: ArgumentHelp(
      "Take the repository and password file from this engine configuration (YAML; env: TIDEMARK_CONFIG).",
      valueName: "file"))
  var config: String?

  @Option(help: "Run this shell command and use its output as the password (env: TIDEMARK_PASSWORD_COMMAND).")
  var passwordCommand: String?

  @Flag(help: "Machine-readable JSON output.")
  var json = false

  @Flag(name: [.customShort("q"), .long], help: "Print only errors.")
  var quiet = false

  @Flag(name: [.customShort("v"), .long], help: "More output (repeat for even more).")
  var verbose: Int

  @Option(help: "Compression for new data: auto, off or max (env: RESTIC_COMPRESSION).")
  var compression: String?

  @Option(help: "Keep retrying for this long when the repository is locked, e.g. 30s, 5m (default: fail at once).")
  var retryLock: String?

  @Flag(help: "Do not take a lock (read-only commands only; use with care).")
  var noLock = false

  @Option(name: .customLong("limit-upload"), help: "Limit uploads to this many KiB/s (env: RESTIC_LIMIT_UPLOAD).")
  var limitUpload: Int?

  @Option(name: .customLong("limit-download"), help: "Limit downloads to this many KiB/s (env: RESTIC_LIMIT_DOWNLOAD).")
  var limitDownload: Int?

  @Option(
    name: [.customShort("o"), .customLong("option")],
    help: ArgumentHelp(
      "Backend option key=value (repeatable): sftp.identity=FILE, sftp.known-hosts=FILE, sftp.port=N, sftp.connections=N, s3.region=R, s3.connections=N.",
      valueName: "key=value"))
  var option: [String] = []

  static func env(_ name: String) -> String? {
    let e = ProcessInfo.processInfo.environment
    if let v = e["TIDEMARK_" + name], !v.isEmpty { return v }
    if let v = e["RESTIC_" + name], !v.isEmpty { return v }
    return nil
  }

  /// The engine configuration named by --config or TIDEMARK_CONFIG, if any.
  func engineConfig() throws -> EngineConfig? {
    guard let path = config ?? ProcessInfo.processInfo.environment["TIDEMARK_CONFIG"], !path.isEmpty else {
      return nil
    }
    return try EngineConfig.load(path)
  }

  func repositoryLocation() throws -> String {
    guard let r = try repo ?? engineConfig()?.repository ?? GlobalOptions.env("REPOSITORY") else {
      throw TidemarkError(
        .usage, "no repository given", hint: "pass -r/--repo PATH or set TIDEMARK_REPOSITORY")
    }
    return r
  }

  static func backend(for location: String, options: [String] = []) throws -> any Backend {
    var loc = location
    if loc.hasPrefix("local:") { loc.removeFirst(6) }
    var opts: [String: String] = [:]
    for o in options {
      guard let eq = o.firstIndex(of: "=") else {
        throw TidemarkError(.usage, "option \(o) needs a value", hint: "write -o key=value, e.g. -o sftp.port=2222")
      }
      opts[String(o[..<eq])] = String(o[o.index(after: eq)...])
    }
    if loc.hasPrefix("sftp:") { return try sftpBackend(loc, opts) }
    if loc.hasPrefix("s3:") { return try s3Backend(loc, opts) }
    for key in opts.keys where key.hasPrefix("sftp.") || key.hasPrefix("s3.") {
      throw TidemarkError(.usage, "option \(key) does not apply to \(loc)")
    }
    for scheme in ["rest:", "b2:", "azure:", "gs:", "swift:", "rclone:"] where loc.hasPrefix(scheme) {
      throw TidemarkError(
        .usage, "repository type \(scheme.dropLast()) is not supported by this tidemark build",
        hint: "use a local directory (path or local:/path), sftp:user@host:/path or s3:https://host/bucket")
    }
    guard !loc.isEmpty else { throw TidemarkError(.usage, "empty repository path") }
    return LocalBackend(path: BytePath(loc).absolute())
  }

  func backend() throws -> any Backend { try backend(at: repositoryLocation(), options: option) }

  /// The backend for `location` with `options`, behind the bandwidth limits (--limit-upload/--limit-download).
  func backend(at location: String, options: [String]) throws -> any Backend {
    let b = try GlobalOptions.backend(for: location, options: options)
    let up = try limitUpload ?? GlobalOptions.env("LIMIT_UPLOAD").map(GlobalOptions.kibPerSecond)
    let down = try limitDownload ?? GlobalOptions.env("LIMIT_DOWNLOAD").map(GlobalOptions.kibPerSecond)
    if (up ?? 0) < 0 || (down ?? 0) < 0 { throw TidemarkError(.usage, "bandwidth limits are KiB/s, 0 or more") }
    guard (up ?? 0) > 0 || (down ?? 0) > 0 else { return b }
    return RateLimitedBackend(b, uploadKiB: up, downloadKiB: down)
  }

  /// scrypt parameters for new key files: restic's, or cheaper ones for tests (TIDEMARK_TEST_KDF="N,r,p").
  static var keyDerivationParams: (n: UInt64, r: UInt64, p: UInt64) {
    if let k = ProcessInfo.processInfo.environment["TIDEMARK_TEST_KDF"] {
      let p = k.split(separator: ",").compactMap { UInt64($0) }
      if p.count == 3 { return (p[0], p[1], p[2]) }
    }
    return KeyFile.defaultParams
  }

  static func kibPerSecond(_ v: String) throws -> Int {
    guard let n = Int(v), n >= 0 else {
      throw TidemarkError(.usage, "bandwidth limit \(v) is not a number of KiB/s")
    }
    return n
  }

  /// `s3:https://host[:port]/bucket[/prefix]` (or `s3:http://` for local servers), credentials from
  /// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, region from AWS_DEFAULT_REGION or -o s3.region.
  static func s3Backend(_ loc: String, _ opts: [String: String]) throws -> any Backend {
    guard let (endpoint, bucket, prefix) = S3Backend.parse(loc) else {
      throw TidemarkError(
        .usage, "cannot parse S3 repository \(loc)", hint: "write s3:https://host[:port]/bucket[/prefix]")
    }
    let known = ["s3.region", "s3.connections", "s3.bucket-lookup"]
    for key in opts.keys where !known.contains(key) {
      throw TidemarkError(.usage, "unknown option \(key)", hint: "s3 options: \(known.joined(separator: ", "))")
    }
    if let lookup = opts["s3.bucket-lookup"], lookup != "path", lookup != "auto" {
      throw TidemarkError(
        .usage, "s3.bucket-lookup=\(lookup) is not supported", hint: "tidemark uses path-style addressing (path)")
    }
    let env = ProcessInfo.processInfo.environment
    guard let access = env["AWS_ACCESS_KEY_ID"], let secret = env["AWS_SECRET_ACCESS_KEY"] else {
      throw TidemarkError(
        .usage, "no S3 credentials", hint: "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN)")
    }
    let region = opts["s3.region"] ?? env["AWS_DEFAULT_REGION"] ?? env["AWS_REGION"] ?? "us-east-1"
    var connections = 5
    if let c = opts["s3.connections"] {
      guard let n = Int(c), n > 0 else { throw TidemarkError(.usage, "s3.connections=\(c) is not a positive number") }
      connections = n
    }
    let s3 = S3Backend(
      endpoint: endpoint, bucket: bucket, prefix: prefix,
      credentials: S3Credentials(
        accessKey: access, secretKey: secret, sessionToken: env["AWS_SESSION_TOKEN"], region: region),
      connections: connections, location: loc)
    return RetryBackend(s3) { Out.err("tidemark: \($0)") }
  }

  /// `sftp:user@host:/path` or `sftp://user@host:port//path`, with -o sftp.* options.
  static func sftpBackend(_ loc: String, _ opts: [String: String]) throws -> any Backend {
    guard let (user, host, port, path) = SFTPBackend.parse(loc) else {
      throw TidemarkError(
        .usage, "cannot read the SFTP location \(loc)",
        hint: "write sftp:user@host:/path or sftp://user@host:port//path")
    }
    let known = ["sftp.identity", "sftp.known-hosts", "sftp.port", "sftp.connections", "sftp.agent"]
    for key in opts.keys where !known.contains(key) {
      throw TidemarkError(.usage, "unknown option \(key)", hint: "sftp options: \(known.joined(separator: ", "))")
    }
    let home = ProcessInfo.processInfo.environment["HOME"] ?? "/root"
    func number(_ key: String) throws -> Int? {
      guard let v = opts[key] else { return nil }
      guard let n = Int(v), n > 0 else { throw TidemarkError(.usage, "option \(key)=\(v) needs a positive number") }
      return n
    }
    let identities =
      opts["sftp.identity"].map { [$0] }
      ?? ["id_ed25519", "id_ecdsa"].map { "\(home)/.ssh/\($0)" }
    let knownHosts =
      opts["sftp.known-hosts"].map { [$0] } ?? ["\(home)/.ssh/known_hosts", "/etc/ssh/ssh_known_hosts"]
    let endpoint = SSHEndpoint(
      host: host, port: try number("sftp.port") ?? port ?? 22,
      user: user ?? ProcessInfo.processInfo.environment["USER"] ?? "root", identities: identities,
      knownHosts: knownHosts, useAgent: opts["sftp.agent"] != "no")
    let sftp = SFTPBackend(
      endpoint: endpoint, path: path, connections: try number("sftp.connections") ?? 5, location: loc)
    // A dropped connection or a restarting server is waited out (up to ~35 s), not fatal.
    return RetryBackend(sftp) { Out.err("tidemark: \($0)") }
  }

  var compressionMode: Compression {
    get throws {
      let c = compression ?? GlobalOptions.env("COMPRESSION") ?? "auto"
      guard let m = Compression(rawValue: c) else {
        throw TidemarkError(.usage, "unknown compression mode \(c)", hint: "use auto, off or max")
      }
      return m
    }
  }

  var lockRetry: Duration {
    get throws {
      guard let r = retryLock else { return .zero }
      guard let d = EngineConfig.parseDuration(r) else {
        throw TidemarkError(.usage, "invalid duration \(r) for --retry-lock", hint: "use e.g. 30s, 5m, 1h")
      }
      return d
    }
  }

  func password(
    prefix: String = "", fileOption: String? = nil, commandOption: String? = nil,
    prompt: String = "enter password for repository: "
  )
    throws -> [UInt8]
  {
    // With --config (and no -r, or -r naming the configuration's repository, as a path in a mount does), the
    // configuration's password file comes before the environment.
    var configured: String? = nil
    if prefix.isEmpty && passwordCommand == nil, let c = try engineConfig(), repo == nil || repo == c.repository {
      configured = c.passwordFile
    }
    return try GlobalOptions.readPassword(
      file: fileOption ?? (prefix.isEmpty ? passwordFile ?? configured : nil),
      command: commandOption ?? (prefix.isEmpty ? passwordCommand : nil), envPrefix: prefix, prompt: prompt)
  }

  static func readPassword(file: String?, command: String?, envPrefix: String, prompt: String) throws -> [UInt8] {
    if let f = file ?? env(envPrefix + "PASSWORD_FILE") {
      do {
        let b = try Sys.readFile(BytePath(f))
        return trimmed(b)
      } catch {
        throw TidemarkError(.usage, "cannot read password file \(f): \(error)", hint: "check --password-file")
      }
    }
    if let c = command ?? env(envPrefix + "PASSWORD_COMMAND") {
      let p = Process()
      p.executableURL = URL(fileURLWithPath: "/bin/sh")
      p.arguments = ["-c", c]
      let pipe = Pipe()
      p.standardOutput = pipe
      try p.run()
      let data = pipe.fileHandleForReading.readDataToEndOfFile()
      p.waitUntilExit()
      guard p.terminationStatus == 0 else {
        throw TidemarkError(.usage, "password command `\(c)` failed with exit code \(p.terminationStatus)")
      }
      return trimmed(Array(data))
    }
    if let v = env(envPrefix + "PASSWORD") { return Array(v.utf8) }
    if isatty(0) == 1 {
      guard let p = getpass(prompt) else { throw TidemarkError(.usage, "no password entered") }
      return Array(String(cString: p).utf8)
    }
    throw TidemarkError(
      .usage, "no password given",
      hint: "use --password-file, --password-command or TIDEMARK_PASSWORD (RESTIC_PASSWORD works too)")
  }

  static func trimmed(_ b: [UInt8]) -> [UInt8] {
    var b = b
    while let l = b.last, l == 10 || l == 13 || l == 32 || l == 9 { b.removeLast() }
    while let f = b.first, f == 32 || f == 9 { b.removeFirst() }
    return b
  }

  func open() async throws -> Repository {
    let backend = try backend()
    let pw = try password()
    return try await Repository.open(backend: backend, password: pw, compression: try compressionMode)
  }

  /// Opens the repository with the master key a `tidemark mount` shares on `socket` (process `pid`);
  /// throws when it cannot be had or does not open this repository's config.
  func open(keyFrom socket: String, pid: Int32?) async throws -> Repository {
    let backend = try backend()
    let json = try await Blocking.run { try SecretSocket.fetch(socket, serverPID: pid) }
    guard let key = MasterKey(json: json) else {
      throw TidemarkError(.general, "the mount's key socket \(socket) sent no master key")
    }
    return try await Repository.open(backend: backend, key: key, keyID: nil, compression: try compressionMode)
  }

  func openIndexed() async throws -> Repository {
    let r = try await open()
    try await r.loadIndex()
    return r
  }

  /// Runs `body` holding a lock; SIGINT/SIGTERM release the lock and exit 130. `prepare` (e.g. loading the
  /// index) runs while the lock is being confirmed; with `overlap` (backup, restore) so does the start
  /// of `body`: its repository writes wait for the confirmation (`RepositoryLock.acquire(overlap:)`),
  /// and a conflict found then is reported when `body` is done, as the lock error.
  func withLock<T>(
    _ repo: Repository, exclusive: Bool, overlap: Bool = false, prepare: @Sendable () async throws -> Void = {},
    _ body: () async throws -> T
  ) async throws -> T {
    if noLock && !exclusive {
      try await prepare()
      return try await body()
    }
    let lock = try await RepositoryLock.acquire(
      repo, exclusive: exclusive, retry: try lockRetry, overlap: overlap, meanwhile: prepare)
    let signals = SignalGuard { await lock.release() }
    defer { signals.cancel() }
    do {
      let r = try await body()
      try await lock.confirmed()
      await lock.release()
      return r
    } catch {
      await lock.release()
      throw error
    }
  }

  var progressEnabled: Bool { !quiet && !json && isatty(2) == 1 }
}

/// The second repository of `init --copy-chunker-params` and `copy`: restic's `--from-*` options.
struct FromRepositoryOptions: ParsableArguments {
  @Option(help: "The source repository (env: TIDEMARK_FROM_REPOSITORY, RESTIC_FROM_REPOSITORY).")
  var fromRepo: String?
  @Option(help: "A file holding the source repository's location (env: TIDEMARK_FROM_REPOSITORY_FILE).")
  var fromRepositoryFile: String?
  @Option(help: "Password file for the source repository (env: TIDEMARK_FROM_PASSWORD_FILE).")
  var fromPasswordFile: String?
  @Option(help: "Password command for the source repository (env: TIDEMARK_FROM_PASSWORD_COMMAND).")
  var fromPasswordCommand: String?

  /// The source location, or nil when none is given.
  func location() throws -> String? {
    let file = fromRepositoryFile ?? GlobalOptions.env("FROM_REPOSITORY_FILE")
    if fromRepo != nil && fromRepositoryFile != nil {
      throw TidemarkError(.usage, "--from-repo and --from-repository-file exclude each other", hint: "give one")
    }
    if let r = fromRepo { return r }
    if let file {
      do {
        let loc = String(decoding: GlobalOptions.trimmed(try Sys.readFile(BytePath(file))), as: UTF8.self)
        guard !loc.isEmpty else { throw TidemarkError(.usage, "repository file \(file) is empty") }
        return loc
      } catch let e as TidemarkError {
        throw e
      } catch {
        throw TidemarkError(.usage, "cannot read repository file \(file): \(error)")
      }
    }
    return GlobalOptions.env("FROM_REPOSITORY")
  }

  /// Opens the source repository (its password from --from-password-*, TIDEMARK_FROM_PASSWORD*, or a prompt).
  /// A wrong password says which repository it was for.
  func open(_ global: GlobalOptions, needFor what: String) async throws -> Repository {
    guard let loc = try location() else {
      throw TidemarkError(
        .usage, "\(what) needs a source repository", hint: "pass --from-repo or set TIDEMARK_FROM_REPOSITORY")
    }
    let pw = try GlobalOptions.readPassword(
      file: fromPasswordFile, command: fromPasswordCommand, envPrefix: "FROM_",
      prompt: "enter password for source repository: ")
    do {
      return try await Repository.open(backend: try global.backend(at: loc, options: global.option), password: pw)
    } catch let e as TidemarkError where e.kind == .wrongPassword {
      throw TidemarkError(
        .wrongPassword, "wrong password for the source repository \(loc): no key opens with it",
        hint: "check --from-password-file / TIDEMARK_FROM_PASSWORD (or RESTIC_FROM_PASSWORD)")
    }
  }
}

/// On SIGINT/SIGTERM: run cleanup, say so, exit 130. No global state: the closure holds what it needs.
final class SignalGuard: @unchecked Sendable {
  // Only touched in init and cancel, from the owning task.
  private let sources: [any DispatchSourceSignal]

  init(cleanup: @escaping @Sendable () async -> Void) {
    var s: [any DispatchSourceSignal] = []
    for sig in [SIGINT, SIGTERM] {
      signal(sig, SIG_IGN)
      let src = DispatchSource.makeSignalSource(signal: sig, queue: .global())
      src.setEventHandler {
        Out.errRaw("\nsignal received, cleaning up\n")
        Task {
          await cleanup()
          Foundation.exit(130)
        }
      }
      src.resume()
      s.append(src)
    }
    sources = s
  }

  func cancel() {
    for s in sources { s.cancel() }
    signal(SIGINT, SIG_DFL)
    signal(SIGTERM, SIG_DFL)
  }
}

// MARK: Output helpers

/// Output goes straight to the file descriptors (no shared stdio buffers): one write per call.
enum Out {
  static func line(_ s: String) { raw(Array(s.utf8) + [10]) }
  static func raw(_ b: [UInt8]) { write(fd: 1, b) }
  static func err(_ s: String) { errRaw(s + "\n") }
  static func errRaw(_ s: String) { write(fd: 2, Array(s.utf8)) }

  static func write(fd: Int32, _ b: [UInt8]) {
    b.withUnsafeBytes { buf in
      var done = 0
      while done < buf.count {
        let n = Glibc.write(fd, buf.baseAddress! + done, buf.count - done)
        if n < 0 {
          if errno == EINTR { continue }
          return
        }
        done += n
      }
    }
  }

  static func bytes(_ n: Int64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var v = Double(n)
    var u = 0
    while v >= 1024 && u < units.count - 1 {
      v /= 1024
      u += 1
    }
    return u == 0 ? "\(n) B" : String(format: "%.3f %@", v, units[u])
  }

  static func duration(_ secs: Double) -> String {
    let s = Int(secs)
    return s >= 3600
      ? String(format: "%d:%02d:%02d", s / 3600, (s / 60) % 60, s % 60) : String(format: "%d:%02d", s / 60, s % 60)
  }

  /// "2006-01-02 15:04:05" in the snapshot's zone.
  static func time(_ t: Timestamp) -> String {
    let c = t.civil
    return String(format: "%04d-%02d-%02d %02d:%02d:%02d", c.year, c.month, c.day, c.hour, c.minute, c.second)
  }

  static func jsonString(_ s: String) -> String {
    var w = JSONWriter()
    w.string(s)
    return String(decoding: w.out, as: UTF8.self)
  }
}
