// `tidemark status`, `tidemark daemon` and `tidemark schedule`: arguments and output. The engine (cycle, state,
// scheduler, metrics endpoint) lives in TidemarkEngine and TidemarkDaemon.
import ArgumentParser
import Foundation
import Logging
import TidemarkBackends
import TidemarkCore
import TidemarkDaemon
import TidemarkEngine
import TidemarkOperations
import TidemarkSystem

struct StatusCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "status",
    abstract: "Replication status per target (or per host of a repository): newest snapshot and the RPO lag.",
    discussion: """
      Reads the state the configuration's cycles keep (its state directory: `state-dir:`, else \
      /var/lib/tidemark/<configuration file stem>). lag_seconds is \
      now minus the capture time of the newest snapshot fully present on the target; pending_snapshots and \
      pending_bytes are what a target that failed still lacks (0 after a successful sync). Exit code, for \
      monitoring checks: 0 OK (every lag within the RPO), 1 WARN (a lag above it), 2 CRIT (a lag above twice \
      it, a target that never replicated, or the last cycle failed). The RPO: --rpo, else alerts.rpo, else 15m.

      With a repository (-r/--repo, or TIDEMARK_REPOSITORY/RESTIC_REPOSITORY when no --config is given), e.g. on \
      the DR machine: no state file is needed; the repository is opened read-only (no lock) and, per host (or \
      each --host), lag_seconds is now minus the time of its newest snapshot. A host without snapshots is CRIT.
      """)
  @OptionGroup var global: GlobalOptions
  @Option(
    name: .customLong("host"),
    help: "With a repository: report this host only (repeatable; default: every host in the repository).")
  var hosts: [String] = []
  @Option(help: "The RPO: WARN above it, CRIT above twice it, e.g. 15m (default: alerts.rpo, else 15m).")
  var rpo: String?

  func run() async throws {
    let config = try global.engineConfig()
    let rpo = try StatusReport.rpoSeconds(rpo, config: config)
    if let location = repositoryMode {
      try await runOnRepository(location, rpo: rpo)
      return
    }
    if !hosts.isEmpty {
      throw TidemarkError(
        .usage, "--host needs a repository", hint: "pass -r/--repo (the DR repository) to report per host")
    }
    let stateDir = StateDirectory.of(config ?? (try? EngineConfig.load(EngineConfig.defaultPath)))
    let (state, drill) = (stateDir.loadState(), stateDir.loadDrill())
    let now = Date().timeIntervalSince1970
    let (targets, health) = StatusReport.targets(state, drill: drill, now: now, rpo: rpo)
    let level = health.rawValue
    let rows = targets.map { r -> [String] in
      let t = r.state
      return [
        t.name, t.newestSnapshot.map { String($0.prefix(8)) } ?? "-", r.lag.map { Out.duration($0) } ?? "never",
        t.pendingSnapshots.map { n in
          n == 0 && (t.pendingBytes ?? 0) == 0 ? "0" : "\(n) (\(Out.bytes(Int64(t.pendingBytes ?? 0))))"
        } ?? "-",
        r.health.label, t.lastError ?? "",
      ]
    }
    if global.json {
      Out.raw(StatusReport.json(state, targets: targets, drill: drill, rpo: rpo, health: health))
    } else {
      printTable(header: ["Target", "Newest", "Lag", "Pending", "Status", "Last error"], rows: rows)
      if let d = drill {
        let failed = d.repositories.filter { !$0.ok }.map(\.name)
        Out.line(
          "last drill \(Out.duration(max(0, now - d.end))) ago: "
            + (d.ok ? "passed" : "FAILED on \(failed.joined(separator: ", "))")
            + ", RTO \(String(format: "%.1f s", d.repositories.map(\.rtoSeconds).max() ?? 0))"
            + (d.report.map { " (report \($0))" } ?? ""))
      }
      if let role = state.siteRole, let epoch = state.siteEpoch { Out.line("this site: \(role), epoch \(epoch)") }
      if let f = state.tripwire {
        Out.line(
          "TRIPWIRE since \(Out.duration(max(0, now - f.since))) ago: snapshot \(f.snapshot.prefix(8)): \(f.evidence); "
            + "retention and prune frozen until `tidemark tripwire ack`")
      }
      if let j = state.journal {
        Out.line(
          j.active
            ? "change journal: active; last backup "
              + (j.lastBackup == "journal"
                ? "from the journal (\(j.dirtyDirectories) directories read again)"
                : "walked the sources" + (j.lastWalkReason.map { " (\($0))" } ?? ""))
              + String(
                format: ", %.1f events/s, %d full scans, %d journal backups", j.eventsPerSecond, j.fullScans,
                j.journalBackups)
            : "change journal: off (\(j.unavailable ?? "disabled")); every backup walks the sources")
      }
      if let ids = state.implausibleSnapshots, !ids.isEmpty {
        Out.line(
          "implausible snapshots (not counted by retention): \(ids.map { String($0.prefix(8)) }.joined(separator: ", "))"
        )
      }
      Out.line(
        "\(health.label): \(state.cycles) cycles, last \(state.lastCycleSuccess ? "succeeded" : "failed")"
          + (state.lastCycleError.map { ": \($0)" } ?? ""))
    }
    if level > 0 { throw ExitCode(Int32(level)) }
  }
}

/// `tidemark daemon`: cycles aligned to the interval, one at a time (TidemarkDaemon).
struct DaemonCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "daemon",
    abstract: "Run replication cycles every interval (the engine's long-running mode).",
    discussion: """
      Reads the configuration like `replicate --once` (--config, TIDEMARK_CONFIG, /etc/tidemark/tidemark.yaml). \
      Cycles start on multiples of `interval` (5m: at :00, :05, …) and never overlap; a cycle that overruns skips \
      the ticks it covered. Serves Prometheus metrics on `metrics.listen` (GET /metrics, GET /health; IPv4 or \
      [IPv6]:port) and writes `metrics.textfile` after each cycle. One daemon per configuration: a second one for \
      the same state directory refuses to start and names the first one's pid. The repository key is derived \
      from the password once and kept in memory with the repository's index, so cycles after the first skip \
      that work. The path sources are watched by a change journal (fanotify; needs root and a local file system): \
      backups read only the directories that changed, with a full walk after the start, every `full-scan` \
      (default 1h) and whenever the journal is in doubt; without one the daemon says why once and walks. With \
      `continuous: 5s` a cycle starts 5 s after the first change, so a change reaches the targets within \
      seconds; `interval` stays the longest gap between cycles. SIGHUP: reload the \
      configuration (and derive the key again). SIGUSR1: run a cycle now. SIGTERM/SIGINT: stop after the \
      running cycle. Logs one line per event on standard error (journald keeps them).
      """)
  @OptionGroup var global: GlobalOptions

  func run() async throws {
    var g = global
    if g.config == nil && ProcessInfo.processInfo.environment["TIDEMARK_CONFIG"] == nil {
      g.config = EngineConfig.defaultPath
    }
    guard let path = g.config ?? ProcessInfo.processInfo.environment["TIDEMARK_CONFIG"] else { return }
    let logger = EngineLog.journal()
    let daemon = Daemon(configPath: path, logger: logger) { [g] config in
      try g.cycle(config, logger: logger)
    }
    try await daemon.run()
  }
}

extension GlobalOptions {
  /// The cycle of `config`: its repository (unless -r names another) with these options' password and limits.
  func cycle(_ config: EngineConfig, logger: Logger) throws -> Cycle {
    var g = self
    if g.repo == nil { g.repo = config.repository }
    return Cycle(config: config, access: try g.access(), stateDir: StateDirectory.of(config), logger: logger)
  }
}

/// `tidemark schedule install|remove`: the systemd units that run the cycle every interval, for this binary and
/// configuration (the daemon unit, or a oneshot service with a timer).
struct ScheduleCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "schedule",
    abstract: "Install or remove the systemd units that run replication cycles.",
    discussion: """
      install writes tidemark.service (the daemon; default) or, with --timer, tidemark-replicate.service and \
      tidemark-replicate.timer (OnCalendar from the configuration's interval when it divides an hour, else every \
      5 minutes; Persistent=true), then runs `systemctl daemon-reload` and `systemctl enable --now` unless \
      --no-enable. remove disables and deletes them.
      """)
  @OptionGroup var global: GlobalOptions
  @Argument(help: "install or remove") var action: String
  @Flag(help: "Use a systemd timer and oneshot cycles instead of the daemon.") var timer = false
  @Flag(help: "Only write (or delete) the unit files; do not call systemctl.") var noEnable = false
  @Option(help: "Where the units go.") var unitDir = "/etc/systemd/system"

  func run() async throws {
    let config = global.config ?? ProcessInfo.processInfo.environment["TIDEMARK_CONFIG"] ?? EngineConfig.defaultPath
    let units = SystemdUnits(
      binary: URL(fileURLWithPath: CommandLine.arguments[0]).standardizedFileURL.path,
      config: config.hasPrefix("/") ? config : FileManager.default.currentDirectoryPath + "/" + config,
      directory: unitDir, timer: timer)
    switch action {
    case "install":
      for path in try units.install(try EngineConfig.load(config)) where !global.quiet { Out.line("wrote \(path)") }
      if !noEnable { try await units.enable() }
    case "remove":
      if !noEnable { await units.disable() }
      for path in try units.remove() where !global.quiet { Out.line("removed \(path)") }
      if !noEnable { try? await SystemdUnits.systemctl(["daemon-reload"]) }
    default:
      throw TidemarkError(.usage, "unknown action \(action)", hint: "use install or remove")
    }
  }
}
