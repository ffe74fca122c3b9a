// The replication engine's configuration: YAML (parsed by Yams, i.e. libyaml), checked strictly. Every unknown key
// and every bad value is an error that names the file, the line and the key, with what would be accepted.
import Foundation
import TidemarkCore
internal import Yams

typealias YAMLNode = Yams.Node

public struct EngineConfig: Sendable {
  public enum SourceKind: Sendable, Equatable {
    /// A directory or file tree, with restic-style exclude patterns.
    case path(String, exclude: [String])
    /// A command whose standard output is stored as one file (e.g. `pg_dump -Fc app`).
    case command(String, filename: String)
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

  public var file: String
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
      "alerts", "drill",
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
      default: break
      }
    }
    guard sawRepository, !c.repository.isEmpty else {
      throw TidemarkError(.usage, "\(file): `repository` is missing", hint: "the DC repository, e.g. /srv/tidemark")
    }
    if c.interval < .seconds(1) {
      throw TidemarkError(.usage, "\(file): interval must be at least 1s")
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

    func duration(_ n: YAMLNode, _ key: String) throws -> Duration {
      let s = try string(n, key)
      guard let d = EngineConfig.parseDuration(s) else {
        throw fail(n, key, "invalid duration \(s)", hint: "use e.g. 30s, 5m, 1h30m")
      }
      return d
    }

    func source(_ n: YAMLNode, _ key: String) throws -> Source {
      let m = try mapping(n, key)
      var path: String?
      var exclude: [String] = []
      var command: String?
      var filename: String?
      var verify: String?
      for (k, v) in m {
        switch try self.key(k, in: key, allowed: ["path", "exclude", "command", "filename", "verify"]) {
        case "path": path = try string(v, key + ".path")
        case "exclude": exclude = try strings(v, key + ".exclude")
        case "command": command = try string(v, key + ".command")
        case "filename": filename = try string(v, key + ".filename")
        case "verify": verify = try string(v, key + ".verify")
        default: break
        }
      }
      switch (path, command) {
      case (let p?, nil):
        guard filename == nil else { throw fail(n, key, "filename applies to command sources only") }
        return Source(.path(p, exclude: exclude), verify: verify)
      case (nil, let c?):
        guard let f = filename, !f.isEmpty, !f.contains("/") else {
          throw fail(n, key, "a command source needs `filename` (a name without /) for its output")
        }
        guard exclude.isEmpty else { throw fail(n, key, "exclude applies to path sources only") }
        return Source(.command(c, filename: f), verify: verify)
      default:
        throw fail(n, key, "a source has either `path` or `command`")
      }
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
          k, in: key, allowed: ["name", "repository", "password-file", "options", "limit-upload", "retention"])
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
