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
      "Backend option key=value (repeatable): sftp.identity=FILE, sftp.known-hosts=FILE, sftp.port=N, sftp.connections=N, s3.region=R, s3.connections=N, s3.object-lock=MODE:DURATION.",
      valueName: "key=value"))
  var option: [String] = []

  @Option(
    name: .customLong("cacert"),
    help: ArgumentHelp(
      "Trust only the certificate authorities in this PEM file for rest:https:// and s3:https:// repositories (repeatable), e.g. a private CA of `tidemark serve --tls`.",
      valueName: "file"))
  var cacert: [String] = []

  static func env(_ name: String) -> String? { PasswordSource.env(name) }

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

  func backend() throws -> any Backend { try backend(at: repositoryLocation(), options: option) }

  /// The backend for `location` with `options`, behind the bandwidth limits (--limit-upload/--limit-download).
  func backend(at location: String, options: [String]) throws -> any Backend {
    try BackendLocation.open(
      location, options: options, uploadKiB: try uploadLimit, downloadKiB: try downloadLimit,
      trust: TLSTrust(caFiles: cacert), warn: { Out.err("tidemark: \($0)") })
  }

  var uploadLimit: Int? {
    get throws { try limitUpload ?? GlobalOptions.env("LIMIT_UPLOAD").map(GlobalOptions.kibPerSecond) }
  }
  var downloadLimit: Int? {
    get throws { try limitDownload ?? GlobalOptions.env("LIMIT_DOWNLOAD").map(GlobalOptions.kibPerSecond) }
  }

  static func kibPerSecond(_ v: String) throws -> Int {
    guard let n = Int(v), n >= 0 else {
      throw TidemarkError(.usage, "bandwidth limit \(v) is not a number of KiB/s")
    }
    return n
  }

  /// How the engine reaches the repository these options name (the password is read when it is opened).
  func access(location: String? = nil) throws -> RepositoryAccess {
    let g = self
    var a = RepositoryAccess(location: try location ?? repositoryLocation()) { try await g.password() }
    a.options = option
    a.compression = try compressionMode
    a.lockRetry = try lockRetry
    a.uploadKiB = try uploadLimit
    a.downloadKiB = try downloadLimit
    a.trust = TLSTrust(caFiles: cacert)
    a.warn = { Out.err("tidemark: \($0)") }
    return a
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
    async throws -> [UInt8]
  {
    // With --config (and no -r, or -r naming the configuration's repository, as a path in a mount does), the
    // configuration's password file comes before the environment.
    var configured: String? = nil
    if prefix.isEmpty && passwordCommand == nil, let c = try engineConfig(), repo == nil || repo == c.repository {
      configured = c.passwordFile
    }
    return try await GlobalOptions.readPassword(
      file: fileOption ?? (prefix.isEmpty ? passwordFile ?? configured : nil),
      command: commandOption ?? (prefix.isEmpty ? passwordCommand : nil), envPrefix: prefix, prompt: prompt)
  }

  static func readPassword(file: String?, command: String?, envPrefix: String, prompt: String) async throws
    -> [UInt8]
  {
    if let p = try await PasswordSource(file: file, command: command).lookup(envPrefix: envPrefix) { return p }
    if isatty(0) == 1 {
      guard let p = getpass(prompt) else { throw TidemarkError(.usage, "no password entered") }
      return Array(String(cString: p).utf8)
    }
    throw TidemarkError(
      .usage, "no password given",
      hint: "use --password-file, --password-command or TIDEMARK_PASSWORD (RESTIC_PASSWORD works too)")
  }

  static func trimmed(_ b: [UInt8]) -> [UInt8] { PasswordSource.trimmed(b) }

  func open() async throws -> Repository { try await access().open() }

  /// Opens the repository with the master key a `tidemark mount` shares (see RepositoryAccess.open(keyFrom:)).
  func open(keyFrom socket: String, pid: Int32?) async throws -> Repository {
    try await access().open(keyFrom: socket, pid: pid)
  }

  func openIndexed() async throws -> Repository {
    let r = try await open()
    try await r.loadIndex()
    return r
  }

  /// Runs `body` holding a lock (see `RepositoryAccess.withLock`); with --no-lock, shared locks are skipped.
  func withLock<T>(
    _ repo: Repository, exclusive: Bool, overlap: Bool = false, prepare: @Sendable () async throws -> Void = {},
    _ body: () async throws -> T
  ) async throws -> T {
    if noLock && !exclusive {
      try await prepare()
      return try await body()
    }
    return try await RepositoryAccess.withLock(
      repo, exclusive: exclusive, retry: try lockRetry, overlap: overlap, prepare: prepare, body)
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
    let pw = try await GlobalOptions.readPassword(
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

// MARK: Output helpers

/// Output goes straight to the file descriptors (no shared stdio buffers): one write per call.
enum Out {
  static func line(_ s: String) { raw(Array(s.utf8) + [10]) }
  static func raw(_ b: [UInt8]) { write(fd: 1, b) }
  static func err(_ s: String) { errRaw(s + "\n") }
  static func errRaw(_ s: String) { write(fd: 2, Array(s.utf8)) }

  static func write(fd: Int32, _ b: [UInt8]) { Sys.writeAll(fd: fd, b) }

  static func bytes(_ n: Int64) -> String { Human.bytes(n) }
  static func duration(_ secs: Double) -> String { Human.duration(secs) }
  static func time(_ t: Timestamp) -> String { Human.time(t) }

  static func jsonString(_ s: String) -> String {
    var w = JSONWriter()
    w.string(s)
    return String(decoding: w.out, as: UTF8.self)
  }
}
