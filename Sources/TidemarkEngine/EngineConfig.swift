// The replication engine's configuration: YAML (parsed by Yams, i.e. libyaml), checked strictly. Every unknown key
// and every bad value is an error that names the file, the line and the key, with what would be accepted.
import Foundation
import TidemarkCore
import TidemarkOperations
internal import Yams

typealias YAMLNode = Yams.Node

public struct EngineConfig: Sendable {
  public enum SourceKind: Sendable, Equatable {
    /// A directory or file tree, with restic-style exclude patterns.
    case path(String, exclude: [String])
    /// A command whose standard output is stored as one file (e.g. `pg_dump -Fc app`).
    case command(String, filename: String)
    /// A PostgreSQL database: `pg_dump -Fc` streamed into the snapshot.
    case postgres(PostgresSource)
    /// A SQLite database file: an online copy (`VACUUM INTO`) taken into the state directory, then stored.
    case sqlite(SQLiteSource)
    /// A Redis server: a fresh RDB (`redis-cli --rdb`), then stored.
    case redis(RedisSource)

    /// The name of the one file a stream-like source (every kind but `.path`) is stored as; nil for `.path`.
    ///
    /// Each such source is a snapshot of its own, made like `backup --stdin --stdin-filename NAME`: its tree holds
    /// one file, NAME, at the root, and the snapshot's `paths` is `["/" + NAME]`. So the newest snapshot of a
    /// source is the newest one (of the configured host) whose `paths == ["/" + filename]`, and the file restores
    /// as `SNAPSHOT:/NAME` (`restic dump --path /NAME latest /NAME`). Filenames are unique among the sources.
    public var filename: String? {
      switch self {
      case .path: return nil
      case .command(_, let f): return f
      case .postgres(let p): return p.filename
      case .sqlite(let s): return s.filename
      case .redis(let r): return r.filename
      }
    }
  }

  /// `postgres: DBNAME`: `pg_dump -Fc` of one database (consistent: pg_dump reads in one repeatable-read
  /// transaction). The password comes from libpq's usual places (~/.pgpass, PGPASSFILE, PGPASSWORD).
  public struct PostgresSource: Sendable, Equatable {
    /// The database name, or a libpq connection string (`host=… dbname=…`).
    public var database: String
    /// A host name, an IP address or a Unix socket directory (pg_dump --host).
    public var host: String?
    public var port: Int?
    public var user: String?
    /// Default: DBNAME.pgdump.
    public var filename: String
    /// More pg_dump arguments, e.g. `--exclude-table=audit_log`.
    public var options: [String] = []
    public init(
      database: String, host: String? = nil, port: Int? = nil, user: String? = nil, filename: String? = nil,
      options: [String] = []
    ) {
      self.database = database
      self.host = host
      self.port = port
      self.user = user
      self.filename = filename ?? database + ".pgdump"
      self.options = options
    }
  }

  /// `sqlite: /path/to/db`: never read directly; an online copy is taken with the sqlite3 command-line tool.
  public struct SQLiteSource: Sendable, Equatable {
    /// An absolute path.
    public var path: String
    /// Default: the database file's name.
    public var filename: String
    public init(path: String, filename: String? = nil) {
      self.path = path
      self.filename = filename ?? String(path.split(separator: "/").last ?? "db.sqlite")
    }
  }

  /// `redis: HOST:PORT` or `redis: /path/to/redis.sock`.
  public struct RedisSource: Sendable, Equatable {
    /// `HOST:PORT` (`[v6addr]:PORT` for IPv6) or an absolute Unix socket path.
    public var address: String
    /// A file holding the password (first line; `requirepass`).
    public var passwordFile: String?
    /// Default: dump.rdb.
    public var filename: String
    public init(address: String, passwordFile: String? = nil, filename: String? = nil) {
      self.address = address
      self.passwordFile = passwordFile
      self.filename = filename ?? "dump.rdb"
    }
    /// The Unix socket path, or the host and port.
    public var endpoint: (socket: String?, host: String, port: Int) {
      if address.hasPrefix("/") { return (address, "", 0) }
      guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else {
        return (nil, address, 6379)
      }
      var host = String(address[..<colon])
      if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
      return (nil, host, port)
    }
  }

  /// One entry of `sources`: what to back up, and how a drill checks a restored copy of it.
  public struct Source: Sendable, Equatable {
    public var kind: SourceKind
    /// A shell command run by `tidemark drill` on the restored copy (`{}` stands for its path), e.g.
    /// `sqlite3 {} 'pragma integrity_check'`; exit 0 means it is good.
    public var verify: String?
    public init(_ kind: SourceKind, verify: String? = nil) {
      self.kind = kind
      self.verify = verify
    }
  }

  public struct Hooks: Sendable, Equatable {
    public var before: [String] = []
    public var after: [String] = []
    public var onFailure: [String] = []
  }

  /// restic's keep-* names. Counts nil = not set; durations as restic writes them (`1y5m7d2h`).
  public struct Retention: Sendable, Equatable {
    public var keepLast: Int?, keepHourly: Int?, keepDaily: Int?, keepWeekly: Int?, keepMonthly: Int?
    public var keepYearly: Int?
    public var keepWithin: String?, keepWithinHourly: String?, keepWithinDaily: String?
    public var keepWithinWeekly: String?, keepWithinMonthly: String?, keepWithinYearly: String?
    public var keepTag: [String] = []
    public var isEmpty: Bool { self == Retention() }
  }

  public struct Target: Sendable, Equatable {
    public var name: String
    public var repository: String
    public var passwordFile: String?
    /// Backend options (`sftp.identity=…`), as `-o` takes them.
    public var options: [String] = []
    public var limitUploadKiB: Int?
    public var retention: Retention?
    /// PEM files of the certificate authorities a rest:https:// or s3:https:// target is trusted by (`--cacert`).
    public var caFiles: [String] = []
  }

  public struct Metrics: Sendable, Equatable {
    public var listen: String?
    public var textfile: String?
    public var pushgateway: String?
  }

  public struct Alerts: Sendable, Equatable {
    public var rpo: Duration?
    public var command: String?
    public var webhook: String?
  }

  /// `drill:`: when the daemon runs a DR drill, what it drills, where it writes, and the daily byte budget of the
  /// rolling `check --read-data-subset` on the targets.
  public struct Drill: Sendable, Equatable {
    public var schedule: DrillSchedule?
    /// Target names; empty: every target (the configuration's own repository when there are none).
    public var targets: [String] = []
    public var reports: String?
    public var scratch: String?
    /// Bytes of pack data the daemon reads back from each target per day (0: no rolling check).
    public var checkBudget = 0
  }

  /// `prune:`: how often the cycle prunes the DC and every target (after retention), and how much it may leave
  /// unused or repack. Index files are consolidated at every cycle once more than `maxIndexFiles` accumulate.
  public struct Prune: Sendable, Equatable {
    public var schedule: DrillSchedule? = .every(seconds: 86400)
    /// restic's --max-unused: `5%`, a size, or `unlimited`; as written.
    public var maxUnused = "5%"
    /// restic's --max-repack-size; nil: no limit.
    public var maxRepackSize: Int? = nil
    public var maxIndexFiles = 32
  }

  /// `tripwire:` (see Tripwire): when a new snapshot's change profile looks like ransomware at work.
  public struct Tripwire: Sendable, Equatable {
    public var enabled = true
    /// Share of the previous snapshot's files modified or deleted.
    public var changedFiles = 0.5
    /// Share of the changed bytes that turned from compressible to incompressible.
    public var incompressible = 0.5
    /// Fewer changed files than this never trip (a handful of files is no evidence).
    public var minFiles = 50
    /// The share of changed files must also be this many times the median of the last cycles'.
    public var baseline = 3.0
  }

  public var file: String
  /// `state-dir:` (see StateDirectory); nil: derived from the file's name.
  public var stateDir: String?
  public var prune = Prune()
  public var host: String?
  public var repository: String
  public var passwordFile: String?
  public var interval: Duration = .seconds(300)
  public var sources: [Source] = []
  public var hooks = Hooks()
  public var targets: [Target] = []
  public var retention = Retention()
  public var metrics = Metrics()
  public var alerts = Alerts()
  public var drill = Drill()
  public var tripwire = Tripwire()
  /// How far a snapshot's time may be ahead of the moment this site first listed it before it counts as forged
  /// (see SnapshotGuard).
  public var clockSkew: Duration = .seconds(900)
  /// How often snapshots are expected to arrive (`snapshot-interval:`; default `interval`): more than a burst's
  /// worth of new snapshots per host in one cycle raises an alert (see SnapshotGuard).
  public var snapshotInterval: Duration? = nil
  /// `continuous:` a cycle starts this long after the first change the journal records (debounce); nil: cycles
  /// run every `interval` only. `interval` stays the longest gap between cycles.
  public var continuous: Duration? = nil
  /// `full-scan:` the longest time between full walks of the path sources when a change journal drives backups
  /// (changes a journal cannot see: writes through a mapping never closed, changes while no daemon ran).
  public var fullScan: Duration = .seconds(3600)
  /// `journal:` whether the daemon keeps a change journal (fanotify) of the path sources; on by default.
  public var journal = true

  /// The default location.
  public static let defaultPath = "/etc/tidemark/tidemark.yaml"

  public static func load(_ path: String) throws -> EngineConfig {
    guard let data = FileManager.default.contents(atPath: path) else {
      throw TidemarkError(
        .usage, "cannot read the configuration \(path)",
        hint: "pass --config FILE, or create \(EngineConfig.defaultPath) (see docs/configuration.md)")
    }
    return try parse(String(decoding: data, as: UTF8.self), file: path)
  }

  public static func parse(_ text: String, file: String) throws -> EngineConfig {
    let root: YAMLNode?
    do {
      root = try Yams.compose(yaml: text)
    } catch let e as YamlError {
      // Yams appends a snippet of the line on further lines: keep the first.
      let first = "\(e)".split(separator: "\n").first.map(String.init) ?? "\(e)"
      throw TidemarkError(.usage, "\(file): not valid YAML: \(first)")
    }
    let p = Parser(file: file)
    guard let root, case .mapping(let top) = root else {
      throw TidemarkError(.usage, "\(file): the configuration must be a mapping (key: value lines)")
    }
    var c = EngineConfig(file: file, repository: "")
    let keys = [
      "host", "repository", "password-file", "interval", "sources", "hooks", "targets", "retention", "metrics",
      "alerts", "drill", "state-dir", "prune", "clock-skew", "tripwire", "snapshot-interval", "continuous",
      "full-scan", "journal",
    ]
    var sawRepository = false
    for (k, v) in top {
      let key = try p.key(k, in: "", allowed: keys)
      switch key {
      case "host": c.host = try p.string(v, key)
      case "repository":
        c.repository = try p.string(v, key)
        sawRepository = true
      case "password-file": c.passwordFile = try p.string(v, key)
      case "interval": c.interval = try p.duration(v, key)
      case "sources":
        for (i, s) in try p.sequence(v, key).enumerated() { c.sources.append(try p.source(s, "sources[\(i)]")) }
      case "hooks": c.hooks = try p.hooks(v, key)
      case "targets":
        for (i, t) in try p.sequence(v, key).enumerated() { c.targets.append(try p.target(t, "targets[\(i)]")) }
      case "retention": c.retention = try p.retention(v, key)
      case "metrics": c.metrics = try p.metrics(v, key)
      case "alerts": c.alerts = try p.alerts(v, key)
      case "drill": c.drill = try p.drill(v, key)
      case "state-dir":
        let d = try p.string(v, key)
        guard d.hasPrefix("/") else {
          throw p.fail(v, key, "expected an absolute path, got \(d)", hint: "e.g. /var/lib/tidemark/dr")
        }
        c.stateDir = d
      case "prune": c.prune = try p.prune(v, key)
      case "clock-skew": c.clockSkew = try p.duration(v, key)
      case "snapshot-interval": c.snapshotInterval = try p.duration(v, key)
      case "tripwire": c.tripwire = try p.tripwire(v, key)
      case "continuous": c.continuous = try p.duration(v, key)
      case "full-scan": c.fullScan = try p.duration(v, key)
      case "journal": c.journal = try p.bool(v, key)
      default: break
      }
    }
    guard sawRepository, !c.repository.isEmpty else {
      throw TidemarkError(.usage, "\(file): `repository` is missing", hint: "the DC repository, e.g. /srv/tidemark")
    }
    if c.interval < .seconds(1) {
      throw TidemarkError(.usage, "\(file): interval must be at least 1s")
    }
    if let d = c.continuous, d < .milliseconds(100) || d > c.interval {
      throw TidemarkError(
        .usage, "\(file): continuous must be between 100ms and interval (\(c.interval))",
        hint: "e.g. continuous: 5s: a cycle 5 seconds after the first change")
    }
    if c.fullScan < c.interval {
      throw TidemarkError(
        .usage, "\(file): full-scan must be at least interval (\(c.interval))",
        hint: "the default is 1h: a full walk of the sources at least every hour")
    }
    var stored = Set<String>()
    for s in c.sources {
      guard let f = s.kind.filename else { continue }
      guard stored.insert(f).inserted else {
        throw TidemarkError(
          .usage, "\(file): two sources are stored as \(f)", hint: "give each one its own `filename`")
      }
    }
    var names = Set<String>()
    for t in c.targets where !names.insert(t.name).inserted {
      throw TidemarkError(.usage, "\(file): two targets are named \(t.name)", hint: "target names must be unique")
    }
    for t in c.drill.targets where !names.contains(t) {
      throw TidemarkError(
        .usage, "\(file): drill.targets names \(t), which is not a target",
        hint: "targets: \(c.targets.map(\.name).joined(separator: ", "))")
    }
    return c
  }

  /// Reads YAML nodes into values, with the file and line in every error.
  struct Parser {
    let file: String

    func at(_ n: YAMLNode) -> String { "\(file):\(n.mark?.line ?? 0)" }

    func fail(_ n: YAMLNode, _ key: String, _ what: String, hint: String? = nil) -> TidemarkError {
      TidemarkError(.usage, "\(at(n)): \(key): \(what)", hint: hint)
    }

    func key(_ k: YAMLNode, in parent: String, allowed: [String]) throws -> String {
      guard let s = k.string, allowed.contains(s) else {
        let name = k.string ?? "?"
        throw TidemarkError(
          .usage, "\(at(k)): unknown key \(parent.isEmpty ? "" : parent + ".")\(name)",
          hint: "known keys here: \(allowed.joined(separator: ", "))")
      }
      return s
    }

    func string(_ n: YAMLNode, _ key: String) throws -> String {
      guard case .scalar(let s) = n else { throw fail(n, key, "expected a text value") }
      return s.string
    }

    func strings(_ n: YAMLNode, _ key: String) throws -> [String] {
      if case .scalar = n { return [try string(n, key)] }
      return try sequence(n, key).map { try string($0, key) }
    }

    func int(_ n: YAMLNode, _ key: String) throws -> Int {
      guard case .scalar(let s) = n, let v = Int(s.string), v >= 0 else {
        throw fail(n, key, "expected a number (0 or more), got \(n.string ?? "a structure")")
      }
      return v
    }

    func sequence(_ n: YAMLNode, _ key: String) throws -> [YAMLNode] {
      guard case .sequence(let s) = n else { throw fail(n, key, "expected a list (lines starting with `- `)") }
      return Array(s)
    }

    func mapping(_ n: YAMLNode, _ key: String) throws -> YAMLNode.Mapping {
      guard case .mapping(let m) = n else { throw fail(n, key, "expected a mapping (key: value lines)") }
      return m
    }

    func bool(_ n: YAMLNode, _ key: String) throws -> Bool {
      let s = try string(n, key)
      guard ["true", "false", "on", "off", "yes", "no"].contains(s) else {
        throw fail(n, key, "expected true or false, got \(s)")
      }
      return ["true", "on", "yes"].contains(s)
    }

    func duration(_ n: YAMLNode, _ key: String) throws -> Duration {
      let s = try string(n, key)
      guard let d = EngineConfig.parseDuration(s) else {
        throw fail(n, key, "invalid duration \(s)", hint: "use e.g. 30s, 5m, 1h30m")
      }
      return d
    }

    /// The keys that choose a source's kind, and the keys each kind takes besides its own and `verify`.
    static let sourceKinds: [(kind: String, keys: [String])] = [
      ("path", ["exclude"]), ("command", ["filename"]),
      ("postgres", ["host", "port", "user", "filename", "options"]), ("sqlite", ["filename"]),
      ("redis", ["password-file", "filename"]),
    ]

    func source(_ n: YAMLNode, _ key: String) throws -> Source {
      let m = try mapping(n, key)
      let kinds = Self.sourceKinds.map(\.kind)
      // Which kind: exactly one of the kind keys. Keys no kind knows are reported first.
      var allKeys = kinds + ["verify"]
      for (_, extra) in Self.sourceKinds { allKeys += extra.filter { !allKeys.contains($0) } }
      for (k, _) in m { _ = try self.key(k, in: key, allowed: allKeys) }
      let present = m.compactMap { (k, _) in k.string.flatMap { kinds.contains($0) ? $0 : nil } }
      guard present.count == 1, let kind = present.first, let spec = Self.sourceKinds.first(where: { $0.kind == kind })
      else {
        throw fail(
          n, key,
          present.isEmpty
            ? "a source needs one of \(kinds.joined(separator: ", "))"
            : "a source has only one of \(kinds.joined(separator: ", ")) (this one has \(present.joined(separator: " and ")))"
        )
      }
      let allowed = [kind] + spec.keys + ["verify"]
      var value: (node: YAMLNode, text: String)?
      var exclude: [String] = []
      var filename: (node: YAMLNode, text: String)?
      var verify: String?
      var host: String?
      var port: Int?
      var user: String?
      var options: [String] = []
      var passwordFile: String?
      for (k, v) in m {
        let name = try self.key(k, in: key, allowed: allowed)
        let path = key + "." + name
        switch name {
        case kind: value = (v, try string(v, path))
        case "exclude": exclude = try strings(v, path)
        case "filename": filename = (v, try string(v, path))
        case "verify": verify = try string(v, path)
        case "host": host = try string(v, path)
        case "port":
          let p = try int(v, path)
          guard (1...65535).contains(p) else { throw fail(v, path, "expected a port number (1-65535), got \(p)") }
          port = p
        case "user": user = try string(v, path)
        case "options":
          // A list of arguments, or one line split at spaces.
          if case .scalar = v {
            options = try string(v, path).split(separator: " ").map(String.init)
          } else {
            options = try strings(v, path)
          }
          if let bad = options.first(where: { $0 == "-f" || $0.hasPrefix("--file") || $0.hasPrefix("-f") }) {
            throw fail(v, path, "\(bad): pg_dump writes to the snapshot, not to a file")
          }
        case "password-file": passwordFile = try string(v, path)
        default: break
        }
      }
      guard let value, !value.text.isEmpty else { throw fail(n, key + "." + kind, "expected a value") }
      /// A stored file name: not empty, no `/`, not `.` or `..`.
      func checkName(_ f: String, _ node: YAMLNode, _ what: String) throws -> String {
        guard !f.isEmpty, !f.contains("/"), f != ".", f != ".." else {
          throw fail(node, key + ".filename", "\(what) (a name without /) for the stored file, got `\(f)`")
        }
        return f
      }
      let kindOut: SourceKind
      switch kind {
      case "path":
        kindOut = .path(value.text, exclude: exclude)
      case "command":
        guard let f = filename else {
          throw fail(n, key, "a command source needs `filename` (a name without /) for its output")
        }
        kindOut = .command(
          value.text, filename: try checkName(f.text, f.node, "a command source needs `filename`"))
      case "postgres":
        let f = try filename.map { try checkName($0.text, $0.node, "a postgres source needs `filename`") }
        if f == nil && (value.text.contains("/") || value.text.contains("=") || value.text.contains(" ")) {
          throw fail(value.node, key + ".postgres", "with a connection string, give `filename` (e.g. app.pgdump)")
        }
        kindOut = .postgres(
          PostgresSource(
            database: value.text, host: host, port: port, user: user, filename: f, options: options))
      case "sqlite":
        guard value.text.hasPrefix("/") else {
          throw fail(value.node, key + ".sqlite", "expected an absolute path to the database file, got \(value.text)")
        }
        let f = try filename.map { try checkName($0.text, $0.node, "a sqlite source needs `filename`") }
        let s = SQLiteSource(path: value.text, filename: f)
        _ = try checkName(s.filename, value.node, "a sqlite source needs `filename`")
        kindOut = .sqlite(s)
      default:
        let f = try filename.map { try checkName($0.text, $0.node, "a redis source needs `filename`") }
        let r = RedisSource(address: value.text, passwordFile: passwordFile, filename: f)
        let e = r.endpoint
        if e.socket == nil {
          guard let colon = value.text.lastIndex(of: ":"), let p = Int(value.text[value.text.index(after: colon)...]),
            (1...65535).contains(p), !e.host.isEmpty
          else {
            throw fail(
              value.node, key + ".redis", "expected HOST:PORT or a Unix socket path, got \(value.text)",
              hint: "e.g. 127.0.0.1:6379, [::1]:6379 or /run/redis/redis-server.sock")
          }
        }
        kindOut = .redis(r)
      }
      return Source(kindOut, verify: verify)
    }

    func hooks(_ n: YAMLNode, _ key: String) throws -> Hooks {
      var h = Hooks()
      for (k, v) in try mapping(n, key) {
        switch try self.key(k, in: key, allowed: ["before", "after", "on-failure"]) {
        case "before": h.before = try strings(v, key + ".before")
        case "after": h.after = try strings(v, key + ".after")
        case "on-failure": h.onFailure = try strings(v, key + ".on-failure")
        default: break
        }
      }
      return h
    }

    func retention(_ n: YAMLNode, _ key: String) throws -> Retention {
      var r = Retention()
      let counts = ["keep-last", "keep-hourly", "keep-daily", "keep-weekly", "keep-monthly", "keep-yearly"]
      let withins = [
        "keep-within", "keep-within-hourly", "keep-within-daily", "keep-within-weekly", "keep-within-monthly",
        "keep-within-yearly",
      ]
      for (k, v) in try mapping(n, key) {
        let name = try self.key(k, in: key, allowed: counts + withins + ["keep-tag"])
        let path = key + "." + name
        switch name {
        case "keep-last": r.keepLast = try int(v, path)
        case "keep-hourly": r.keepHourly = try int(v, path)
        case "keep-daily": r.keepDaily = try int(v, path)
        case "keep-weekly": r.keepWeekly = try int(v, path)
        case "keep-monthly": r.keepMonthly = try int(v, path)
        case "keep-yearly": r.keepYearly = try int(v, path)
        case "keep-tag": r.keepTag = try strings(v, path)
        default:
          let s = try string(v, path)
          guard (try? RetentionDuration(parsing: s)) != nil else {
            throw fail(v, path, "invalid duration \(s)", hint: "restic's form, e.g. 1y5m7d2h")
          }
          switch name {
          case "keep-within": r.keepWithin = s
          case "keep-within-hourly": r.keepWithinHourly = s
          case "keep-within-daily": r.keepWithinDaily = s
          case "keep-within-weekly": r.keepWithinWeekly = s
          case "keep-within-monthly": r.keepWithinMonthly = s
          default: r.keepWithinYearly = s
          }
        }
      }
      return r
    }

    func target(_ n: YAMLNode, _ key: String) throws -> Target {
      var t = Target(name: "", repository: "")
      for (k, v) in try mapping(n, key) {
        let name = try self.key(
          k, in: key,
          allowed: ["name", "repository", "password-file", "options", "limit-upload", "retention", "cacert"])
        let path = key + "." + name
        switch name {
        case "name": t.name = try string(v, path)
        case "repository": t.repository = try string(v, path)
        case "password-file": t.passwordFile = try string(v, path)
        case "options":
          // A mapping (sftp.identity: /root/.ssh/id) or a list of key=value.
          if case .mapping(let m) = v {
            for (ok, ov) in m { t.options.append("\(try string(ok, path))=\(try string(ov, path))") }
          } else {
            for o in try strings(v, path) {
              guard o.contains("=") else { throw fail(v, path, "option \(o) needs a value (key=value)") }
              t.options.append(o)
            }
          }
        case "limit-upload": t.limitUploadKiB = try int(v, path)
        case "retention": t.retention = try retention(v, path)
        case "cacert": t.caFiles = try strings(v, path)
        default: break
        }
      }
      guard !t.name.isEmpty else { throw fail(n, key, "a target needs a `name`") }
      guard !t.repository.isEmpty else { throw fail(n, key, "target \(t.name) needs a `repository`") }
      return t
    }

    func metrics(_ n: YAMLNode, _ key: String) throws -> Metrics {
      var m = Metrics()
      for (k, v) in try mapping(n, key) {
        switch try self.key(k, in: key, allowed: ["listen", "textfile", "pushgateway"]) {
        case "listen":
          let s = try string(v, key + ".listen")
          guard let colon = s.lastIndex(of: ":"), Int(s[s.index(after: colon)...]) != nil else {
            throw fail(v, key + ".listen", "expected host:port, e.g. 127.0.0.1:9817")
          }
          m.listen = s
        case "textfile": m.textfile = try string(v, key + ".textfile")
        case "pushgateway":
          let s = try string(v, key + ".pushgateway")
          guard s.hasPrefix("http://") || s.hasPrefix("https://") else {
            throw fail(v, key + ".pushgateway", "expected an http(s):// URL")
          }
          m.pushgateway = s
        default: break
        }
      }
      return m
    }

    func tripwire(_ n: YAMLNode, _ key: String) throws -> Tripwire {
      var r = Tripwire()
      if case .scalar = n, n.string == "off" || n.string == "false" {
        r.enabled = false
        return r
      }
      func share(_ v: YAMLNode, _ k: String) throws -> Double {
        let s = try string(v, k)
        guard s.hasSuffix("%"), let x = Double(s.dropLast()), x > 0, x <= 100 else {
          throw fail(v, k, "invalid share \(s)", hint: "a percentage above 0 and at most 100, e.g. 50%")
        }
        return x / 100
      }
      let allowed = ["enabled", "changed-files", "incompressible", "min-files", "baseline"]
      for (k, v) in try mapping(n, key) {
        switch try self.key(k, in: key, allowed: allowed) {
        case "enabled":
          r.enabled = try bool(v, key + ".enabled")
        case "changed-files": r.changedFiles = try share(v, key + ".changed-files")
        case "incompressible": r.incompressible = try share(v, key + ".incompressible")
        case "min-files":
          r.minFiles = try int(v, key + ".min-files")
          guard r.minFiles >= 1 else { throw fail(v, key + ".min-files", "expected 1 or more, got \(r.minFiles)") }
        case "baseline":
          let s = try string(v, key + ".baseline")
          guard let x = Double(s.hasSuffix("x") ? String(s.dropLast()) : s), x >= 1 else {
            throw fail(v, key + ".baseline", "invalid factor \(s)", hint: "a number of 1 or more, e.g. 3")
          }
          r.baseline = x
        default: break
        }
      }
      return r
    }

    func prune(_ n: YAMLNode, _ key: String) throws -> Prune {
      var r = Prune()
      if case .scalar = n, n.string == "off" || n.string == "false" {
        r.schedule = nil
        return r
      }
      for (k, v) in try mapping(n, key) {
        switch try self.key(k, in: key, allowed: ["schedule", "max-unused", "max-repack-size", "max-index-files"]) {
        case "schedule":
          let s = try string(v, key + ".schedule")
          if s == "off" || s == "never" {
            r.schedule = nil
          } else {
            guard let sched = DrillSchedule(s) else {
              throw fail(
                v, key + ".schedule", "invalid schedule \(s)",
                hint: "hourly, daily, weekly, a duration (12h), a cron expression (\"30 3 * * 0\") or off")
            }
            r.schedule = sched
          }
        case "max-unused":
          let s = try string(v, key + ".max-unused")
          guard (try? PruneOptions.parseMaxUnused(s)) != nil else {
            throw fail(v, key + ".max-unused", "invalid value \(s)", hint: "e.g. 5%, 1G or unlimited")
          }
          r.maxUnused = s
        case "max-repack-size":
          let s = try string(v, key + ".max-repack-size")
          guard let b = try? PruneOptions.parseSize(s, what: key + ".max-repack-size"), b > 0 else {
            throw fail(v, key + ".max-repack-size", "invalid size \(s)", hint: "e.g. 2G or 500M")
          }
          r.maxRepackSize = b
        case "max-index-files":
          let m = try int(v, key + ".max-index-files")
          guard m >= 2 else { throw fail(v, key + ".max-index-files", "expected 2 or more, got \(m)") }
          r.maxIndexFiles = m
        default: break
        }
      }
      return r
    }

    func drill(_ n: YAMLNode, _ key: String) throws -> Drill {
      var d = Drill()
      for (k, v) in try mapping(n, key) {
        switch try self.key(k, in: key, allowed: ["schedule", "targets", "reports", "scratch", "check-budget"]) {
        case "schedule":
          let s = try string(v, key + ".schedule")
          guard let sched = DrillSchedule(s) else {
            throw fail(
              v, key + ".schedule", "invalid schedule \(s)",
              hint: "hourly, daily, weekly, a duration (12h) or a cron expression (\"30 3 * * 0\")")
          }
          d.schedule = sched
        case "targets": d.targets = try strings(v, key + ".targets")
        case "reports": d.reports = try string(v, key + ".reports")
        case "scratch": d.scratch = try string(v, key + ".scratch")
        case "check-budget":
          let s = try string(v, key + ".check-budget")
          guard let b = try? PruneOptions.parseSize(s, what: key + ".check-budget"), b >= 0 else {
            throw fail(v, key + ".check-budget", "invalid size \(s)", hint: "e.g. 2G, 500M, 0 for none")
          }
          d.checkBudget = b
        default: break
        }
      }
      return d
    }

    func alerts(_ n: YAMLNode, _ key: String) throws -> Alerts {
      var a = Alerts()
      for (k, v) in try mapping(n, key) {
        switch try self.key(k, in: key, allowed: ["rpo", "command", "webhook"]) {
        case "rpo": a.rpo = try duration(v, key + ".rpo")
        case "command": a.command = try string(v, key + ".command")
        case "webhook":
          let s = try string(v, key + ".webhook")
          guard s.hasPrefix("http://") || s.hasPrefix("https://") else {
            throw fail(v, key + ".webhook", "expected an http(s):// URL")
          }
          a.webhook = s
        default: break
        }
      }
      return a
    }
  }

  /// `30s`, `5m`, `1h30m`, `1.5h`, `250ms`; a bare number is seconds. Nil when malformed.
  public static func parseDuration(_ s: String) -> Duration? {
    var num = ""
    var total = 0.0
    let chars = Array(s.trimmingCharacters(in: .whitespaces))
    guard !chars.isEmpty else { return nil }
    var i = 0
    while i < chars.count {
      let c = chars[i]
      if c.isNumber || c == "." {
        num.append(c)
        i += 1
        continue
      }
      guard let v = Double(num) else { return nil }
      if c == "m" && i + 1 < chars.count && chars[i + 1] == "s" {
        total += v / 1000
        i += 2
      } else {
        switch c {
        case "s": total += v
        case "m": total += v * 60
        case "h": total += v * 3600
        case "d": total += v * 86400
        default: return nil
        }
        i += 1
      }
      num = ""
    }
    if !num.isEmpty {
      guard let v = Double(num) else { return nil }
      total += v
    }
    return .milliseconds(Int64(total * 1000))
  }
}
