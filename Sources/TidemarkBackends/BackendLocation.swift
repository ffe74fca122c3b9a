// Repository locations as restic writes them (`/path`, `local:/path`, `sftp:user@host:/path`, `s3:https://host/
// bucket`) and the `-o key=value` backend options, turned into a backend: the one place that knows every scheme.
// Remote backends come wrapped in a RetryBackend (a dropped connection or a restarting server is waited out);
// bandwidth limits wrap the result in a RateLimitedBackend.
import Foundation
import TidemarkCore
import TidemarkSSH
import TidemarkSystem

public enum BackendLocation {
  /// The backend for `location` with `options` (`-o` values, `key=value`). `environment` supplies S3 credentials
  /// (AWS_*), the SSH user and home; `warn` hears each retry of a remote backend.
  public static func open(
    _ location: String, options: [String] = [], environment: [String: String] = ProcessInfo.processInfo.environment,
    uploadKiB: Int? = nil, downloadKiB: Int? = nil, trust: TLSTrust = .system,
    warn: @escaping @Sendable (String) -> Void = { _ in }
  ) throws -> any Backend {
    let b = try open(location, options: options, environment: environment, trust: trust, warn: warn)
    if (uploadKiB ?? 0) < 0 || (downloadKiB ?? 0) < 0 {
      throw TidemarkError(.usage, "bandwidth limits are KiB/s, 0 or more")
    }
    guard (uploadKiB ?? 0) > 0 || (downloadKiB ?? 0) > 0 else { return b }
    return RateLimitedBackend(b, uploadKiB: uploadKiB, downloadKiB: downloadKiB)
  }

  static func open(
    _ location: String, options: [String], environment env: [String: String], trust: TLSTrust,
    warn: @escaping @Sendable (String) -> Void
  ) throws -> any Backend {
    var loc = location
    if loc.hasPrefix("local:") { loc.removeFirst(6) }
    let opts = try parseOptions(options)
    if loc.hasPrefix("sftp:") { return try sftp(loc, opts, env, warn) }
    if loc.hasPrefix("s3:") { return try s3(loc, opts, env, trust, warn) }
    if loc.hasPrefix("rest:") { return try rest(loc, opts, env, trust, warn) }
    for key in opts.keys where key.hasPrefix("sftp.") || key.hasPrefix("s3.") || key.hasPrefix("rest.") {
      throw TidemarkError(.usage, "option \(key) does not apply to \(loc)")
    }
    for scheme in ["b2:", "azure:", "gs:", "swift:", "rclone:"] where loc.hasPrefix(scheme) {
      throw TidemarkError(
        .usage, "repository type \(scheme.dropLast()) is not supported by this tidemark build",
        hint:
          "use a local directory (path or local:/path), sftp:user@host:/path, s3:https://host/bucket or rest:http://host:port/path"
      )
    }
    guard !loc.isEmpty else { throw TidemarkError(.usage, "empty repository path") }
    return LocalBackend(path: BytePath(loc).absolute())
  }

  /// `-o key=value` options as a dictionary; a missing `=` is an error.
  public static func parseOptions(_ options: [String]) throws -> [String: String] {
    var opts: [String: String] = [:]
    for o in options {
      guard let eq = o.firstIndex(of: "=") else {
        throw TidemarkError(.usage, "option \(o) needs a value", hint: "write -o key=value, e.g. -o sftp.port=2222")
      }
      opts[String(o[..<eq])] = String(o[o.index(after: eq)...])
    }
    return opts
  }

  /// Backend options for two repositories at once (`replicate`): each goes to the repository whose kind it names
  /// (sftp.* to sftp:, s3.* to s3:); an option that fits neither is an error.
  public static func splitOptions(_ options: [String], source: String, target: String) throws -> ([String], [String]) {
    func kind(_ location: String) -> String? {
      if location.hasPrefix("sftp:") { return "sftp." }
      if location.hasPrefix("s3:") { return "s3." }
      if location.hasPrefix("rest:") { return "rest." }
      return nil
    }
    var s: [String] = []
    var t: [String] = []
    for o in options {
      let toSource = kind(source).map(o.hasPrefix) ?? false
      let toTarget = kind(target).map(o.hasPrefix) ?? false
      guard toSource || toTarget else {
        throw TidemarkError(
          .usage, "option \(o) applies to neither \(source) nor \(target)",
          hint: "sftp.* options need an sftp: repository, s3.* options an s3: one, rest.* options a rest: one")
      }
      if toSource { s.append(o) }
      if toTarget { t.append(o) }
    }
    return (s, t)
  }

  /// `s3:https://host[:port]/bucket[/prefix]` (or `s3:http://` for local servers), credentials from
  /// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, region from AWS_DEFAULT_REGION or -o s3.region,
  /// -o s3.object-lock=MODE:DURATION for uploads under S3 Object Lock.
  static func s3(
    _ loc: String, _ opts: [String: String], _ env: [String: String], _ trust: TLSTrust,
    _ warn: @escaping @Sendable (String) -> Void
  ) throws -> any Backend {
    guard let (endpoint, bucket, prefix) = S3Backend.parse(loc) else {
      throw TidemarkError(
        .usage, "cannot parse S3 repository \(loc)", hint: "write s3:https://host[:port]/bucket[/prefix]")
    }
    let known = ["s3.region", "s3.connections", "s3.bucket-lookup", "s3.object-lock", "s3.object-lock-extend"]
    for key in opts.keys where !known.contains(key) {
      throw TidemarkError(.usage, "unknown option \(key)", hint: "s3 options: \(known.joined(separator: ", "))")
    }
    if let lookup = opts["s3.bucket-lookup"], lookup != "path", lookup != "auto" {
      throw TidemarkError(
        .usage, "s3.bucket-lookup=\(lookup) is not supported", hint: "tidemark uses path-style addressing (path)")
    }
    var objectLock = try opts["s3.object-lock"].map(S3ObjectLock.init(parsing:))
    if let extend = opts["s3.object-lock-extend"] {
      guard extend == "true" || extend == "false" else {
        throw TidemarkError(.usage, "s3.object-lock-extend=\(extend) is not true or false")
      }
      guard objectLock != nil else {
        throw TidemarkError(
          .usage, "s3.object-lock-extend needs s3.object-lock", hint: "add -o s3.object-lock=governance:DURATION")
      }
      objectLock?.extend = extend == "true"
    }
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
    let s3 = try S3Backend(
      endpoint: endpoint, bucket: bucket, prefix: prefix,
      credentials: S3Credentials(
        accessKey: access, secretKey: secret, sessionToken: env["AWS_SESSION_TOKEN"], region: region),
      connections: connections, location: loc, objectLock: objectLock,
      client: HTTPClients.client(for: .storage, trust: trust))
    return RetryBackend(s3, report: warn)
  }

  /// `rest:http[s]://[user:password@]host:port/path`; credentials from the URL, else TIDEMARK_REST_USERNAME /
  /// TIDEMARK_REST_PASSWORD, else RESTIC_REST_USERNAME / RESTIC_REST_PASSWORD; -o rest.connections=N.
  static func rest(
    _ loc: String, _ opts: [String: String], _ env: [String: String], _ trust: TLSTrust,
    _ warn: @escaping @Sendable (String) -> Void
  ) throws -> any Backend {
    guard let (base, server, urlUser, urlPassword) = RESTBackend.parse(loc) else {
      throw TidemarkError(
        .usage, "cannot read the REST location \(loc)", hint: "write rest:http://[user:password@]host:port/path")
    }
    let known = ["rest.connections"]
    for key in opts.keys where !known.contains(key) {
      throw TidemarkError(.usage, "unknown option \(key)", hint: "rest options: \(known.joined(separator: ", "))")
    }
    var connections = 5
    if let c = opts["rest.connections"] {
      guard let n = Int(c), n > 0 else { throw TidemarkError(.usage, "rest.connections=\(c) is not a positive number") }
      connections = n
    }
    let user = urlUser ?? env["TIDEMARK_REST_USERNAME"] ?? env["RESTIC_REST_USERNAME"]
    let password = urlPassword ?? env["TIDEMARK_REST_PASSWORD"] ?? env["RESTIC_REST_PASSWORD"]
    // Messages name the repository without its password.
    let shown =
      urlPassword == nil ? loc : loc.replacingOccurrences(of: ":\(urlPasswordEncoded(loc) ?? "")@", with: ":***@")
    let rest = try RESTBackend(
      base: base, server: server, user: user, password: password, connections: connections, location: shown,
      client: HTTPClients.client(for: .storage, trust: trust))
    return RetryBackend(rest, report: warn)
  }

  /// The password as written in a `rest:` URL (still percent-encoded).
  static func urlPasswordEncoded(_ loc: String) -> String? {
    URLComponents(string: String(loc.dropFirst(5)))?.percentEncodedPassword
  }

  /// `sftp:user@host:/path` or `sftp://user@host:port//path`, with -o sftp.* options.
  static func sftp(
    _ loc: String, _ opts: [String: String], _ env: [String: String], _ warn: @escaping @Sendable (String) -> Void
  ) throws -> any Backend {
    guard let (user, host, port, path) = SFTPBackend.parse(loc) else {
      throw TidemarkError(
        .usage, "cannot read the SFTP location \(loc)",
        hint: "write sftp:user@host:/path or sftp://user@host:port//path")
    }
    let known = ["sftp.identity", "sftp.known-hosts", "sftp.port", "sftp.connections", "sftp.agent"]
    for key in opts.keys where !known.contains(key) {
      throw TidemarkError(.usage, "unknown option \(key)", hint: "sftp options: \(known.joined(separator: ", "))")
    }
    let home = env["HOME"] ?? "/root"
    func number(_ key: String) throws -> Int? {
      guard let v = opts[key] else { return nil }
      guard let n = Int(v), n > 0 else { throw TidemarkError(.usage, "option \(key)=\(v) needs a positive number") }
      return n
    }
    let identities = opts["sftp.identity"].map { [$0] } ?? ["id_ed25519", "id_ecdsa"].map { "\(home)/.ssh/\($0)" }
    let knownHosts =
      opts["sftp.known-hosts"].map { [$0] } ?? ["\(home)/.ssh/known_hosts", "/etc/ssh/ssh_known_hosts"]
    let endpoint = SSHEndpoint(
      host: host, port: try number("sftp.port") ?? port ?? 22, user: user ?? env["USER"] ?? "root",
      identities: identities, knownHosts: knownHosts, useAgent: opts["sftp.agent"] != "no")
    let sftp = SFTPBackend(
      endpoint: endpoint, path: path, connections: try number("sftp.connections") ?? 5, location: loc)
    // A dropped connection or a restarting server is waited out (up to ~35 s), not fatal.
    return RetryBackend(sftp, report: warn)
  }
}
