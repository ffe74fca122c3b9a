// Where a configuration keeps its state: `state.json` (the cycles), `drill.json` (the last drill), `check.json`
// (the rolling check), reports, the private `tmp` of database sources, and the cycle and daemon locks. One
// directory per configuration, so two configurations on one host (a DR host that keeps its replica and also
// protects its own data) run side by side and `status` shows only its own.
//
// Which directory: `state-dir:` in the configuration, else TIDEMARK_STATE_DIR, else /var/lib/tidemark/<stem> where
// <stem> is the configuration file's name without its extension (tidemark.yaml: /var/lib/tidemark/tidemark).
// An install from before per-configuration state kept /var/lib/tidemark/state.json: the first cycle of a
// configuration whose directory does not exist yet moves those files into it (documented in configuration.md).
import Foundation
import TidemarkCore
import TidemarkSystem

public struct StateDirectory: Sendable {
  public let path: String

  public init(path: String) { self.path = path }

  public static let base = "/var/lib/tidemark"

  /// The state directory of `config` (nil: no configuration; TIDEMARK_STATE_DIR or the legacy shared directory).
  public static func of(_ config: EngineConfig?, environment: [String: String] = ProcessInfo.processInfo.environment)
    -> StateDirectory
  {
    if let d = config?.stateDir { return StateDirectory(path: d) }
    if let d = environment["TIDEMARK_STATE_DIR"], !d.isEmpty { return StateDirectory(path: d) }
    guard let config else { return StateDirectory(path: base) }
    return StateDirectory(path: base + "/" + stem(config.file))
  }

  /// `tidemark` for /etc/tidemark/tidemark.yaml.
  public static func stem(_ file: String) -> String {
    let name = file.split(separator: "/").last.map(String.init) ?? file
    guard let dot = name.lastIndex(of: "."), dot != name.startIndex else { return name }
    return String(name[..<dot])
  }

  public var stateFile: String { path + "/state.json" }
  public var tmp: String { path + "/tmp" }

  /// Creates the directory (and moves a legacy shared state into it, see above). A directory that cannot be
  /// created or written is one clear error naming it.
  public func prepare(migrating legacy: Bool = true) throws {
    let fresh = !FileManager.default.fileExists(atPath: path)
    do {
      try Sys.mkdirAll(BytePath(path), 0o755)
    } catch {
      throw TidemarkError(
        .general, "state directory \(path) cannot be created: \(error)",
        hint: "set `state-dir:` in the configuration to a writable directory, or run as a user who may write there")
    }
    guard access(path, W_OK) == 0 else {
      throw TidemarkError(
        .general, "state directory \(path) is not writable",
        hint: "set `state-dir:` in the configuration to a writable directory, or run as a user who may write there")
    }
    let base = StateDirectory.base
    if legacy && fresh && path.hasPrefix(base + "/") && FileManager.default.fileExists(atPath: base + "/state.json") {
      for name in ["state.json", "drill.json", "check.json"] {
        _ = rename(base + "/" + name, path + "/" + name)
      }
    }
  }

  public func loadState() -> EngineState {
    guard let data = FileManager.default.contents(atPath: stateFile),
      let s = try? JSONDecoder().decode(EngineState.self, from: data)
    else { return EngineState() }
    return s
  }

  public func save(_ state: EngineState) throws {
    try write(state, to: stateFile)
  }

  public func loadDrill() -> DrillState? {
    guard let d = FileManager.default.contents(atPath: path + "/drill.json") else { return nil }
    return try? JSONDecoder().decode(DrillState.self, from: d)
  }

  public func save(_ drill: DrillState) throws {
    try write(drill, to: path + "/drill.json")
  }

  func write(_ value: some Encodable, to file: String) throws {
    let enc = JSONEncoder()
    enc.outputFormatting = [.prettyPrinted, .sortedKeys]
    let data = try enc.encode(value)
    try Array(data).withUnsafeBytes { try Sys.writeAtomically(BytePath(file), $0, mode: 0o644) }
  }

  /// The metrics of this directory: the cycles' and the last drill's, in Prometheus' text format.
  public func metricsText(now: Double) -> String {
    MetricsText.render(loadState().metricFamilies(now: now) + (loadDrill()?.metricFamilies() ?? []))
  }

  /// Never two cycles of one configuration at once: an flock held for the whole cycle (released by the kernel if
  /// the process dies).
  public func lockCycle() throws -> StateLock {
    try StateLock.take(path + "/cycle.lock") { _ in
      TidemarkError(
        .locked, "another replication cycle is running (\(path)/cycle.lock is held)",
        hint: "wait for it to finish; cycles never overlap")
    }
  }

  /// One daemon per configuration; the lock file holds the daemon's pid, so a second one can say whose it is.
  public func lockDaemon() throws -> StateLock {
    try StateLock.take(path + "/daemon.lock", writePID: true) { pid in
      TidemarkError(
        .general,
        "another tidemark daemon\(pid.map { " (pid \($0))" } ?? "") holds the state directory \(path)",
        hint: "stop it first (systemctl stop tidemark), or give this configuration its own `state-dir:`")
    }
  }
}

/// An flock on a file in the state directory, held until `release` or the process ends.
public final class StateLock: Sendable {
  let fd: Int32

  init(fd: Int32) { self.fd = fd }

  static func take(_ file: String, writePID: Bool = false, busy: (Int32?) -> TidemarkError) throws -> StateLock {
    let fd = open(file, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
    guard fd >= 0 else {
      throw TidemarkError(.general, "cannot open \(file): \(String(cString: strerror(errno)))")
    }
    guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
      var buf = [UInt8](repeating: 0, count: 32)
      let n = pread(fd, &buf, buf.count, 0)
      close(fd)
      let pid =
        n > 0 ? Int32(String(decoding: buf[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) : nil
      throw busy(pid)
    }
    if writePID {
      let text = Array("\(getpid())\n".utf8)
      _ = ftruncate(fd, 0)
      _ = text.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
    }
    return StateLock(fd: fd)
  }

  public func release() { close(fd) }
}
