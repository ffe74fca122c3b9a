// DR drills: prove that recovery works and measure it. From each target (or the configuration's own repository),
// restore the newest snapshot of every source into a scratch directory, check every file against the snapshot's
// content hashes, run the source's `verify` command, and measure RTO (restore + verify wall time) and RPO (now
// minus the snapshot's time). Results: drill.json in the state directory (metrics, status), a Markdown report,
// and alerts on failure; `tidemark drill` renders them as a table or JSON.
import Foundation
import Logging
import TidemarkBackends
import TidemarkCore
import TidemarkOperations
import TidemarkSystem

/// One drilled source.
public struct DrillSourceResult: Codable, Sendable {
  public var source: String
  public var snapshot: String?
  public var snapshotTime: String?
  public var rpoSeconds: Double?
  public var files = 0
  public var bytes: Int64 = 0
  public var verifyCommand: String?
  public var verifyOK: Bool?
  public var error: String?
}

/// One drilled repository (a target, or the configuration's own repository).
public struct DrillRepositoryResult: Codable, Sendable {
  public var name: String
  public var repository: String
  public var ok = false
  public var rtoSeconds = 0.0
  public var rpoSeconds: Double?
  public var filesVerified = 0
  public var bytesVerified: Int64 = 0
  public var sources: [DrillSourceResult] = []
  public var failures: [String] = []
}

/// The last drill, as `drill.json` in the state directory keeps it (for metrics and status).
public struct DrillState: Codable, Sendable {
  public var start: Double
  public var end: Double
  public var ok: Bool
  public var repositories: [DrillRepositoryResult]
  public var report: String?

  /// tidemark_drill_* for Prometheus.
  public func metricFamilies() -> [MetricFamily] {
    func target(_ n: String, _ v: Double) -> MetricSample { MetricSample(labels: [("target", n)], value: v) }
    return [
      .gauge(
        "tidemark_drill_success", "1 when the last drill of the target passed.",
        repositories.map { target($0.name, $0.ok ? 1 : 0) }),
      .gauge(
        "tidemark_drill_rto_seconds", "Restore and verify time of the last drill.",
        repositories.map { target($0.name, $0.rtoSeconds) }),
      .gauge(
        "tidemark_drill_rpo_seconds", "Age of the newest snapshot at the last drill.",
        repositories.compactMap { r in r.rpoSeconds.map { target(r.name, $0) } }),
      .gauge("tidemark_drill_last_timestamp_seconds", "When the last drill ended.", [MetricSample(end.rounded(.down))]),
    ]
  }
}

public struct Drill: Sendable {
  public let cycle: Cycle
  public var config: EngineConfig { cycle.config }
  public var keep = false
  /// Progress lines (which snapshot of which source is restored).
  public var say: @Sendable (String) -> Void = { _ in }

  public init(cycle: Cycle) { self.cycle = cycle }

  /// What to drill: the named targets, else `drill.targets`, else every target, else the own repository (nil).
  public func plan(_ names: [String]) throws -> [EngineConfig.Target?] {
    let wanted = names.isEmpty ? config.drill.targets : names
    if wanted.isEmpty { return config.targets.isEmpty ? [nil] : config.targets }
    return try wanted.map { n in
      if n == "-" || n == "local" && !config.targets.contains(where: { $0.name == "local" }) { return nil }
      guard let t = config.targets.first(where: { $0.name == n }) else {
        throw TidemarkError(
          .usage, "no target named \(n) in \(config.file)",
          hint: "targets: \(config.targets.map(\.name).joined(separator: ", ")); `local` drills the repository itself")
      }
      return t
    }
  }

  public func run(_ targets: [EngineConfig.Target?]) async -> DrillState {
    let start = Date().timeIntervalSince1970
    var results: [DrillRepositoryResult] = []
    for t in targets { results.append(await drill(t)) }
    let end = Date().timeIntervalSince1970
    return DrillState(start: start, end: end, ok: results.allSatisfy(\.ok), repositories: results)
  }

  func scratchRoot() -> String {
    config.drill.scratch ?? cycle.stateDir.path + "/drill-scratch"
  }

  func drill(_ t: EngineConfig.Target?) async -> DrillRepositoryResult {
    var r = DrillRepositoryResult(name: t?.name ?? "local", repository: t?.repository ?? config.repository)
    let scratch = scratchRoot() + "/\(r.name)-\(getpid())"
    let started = ContinuousClock.now
    do {
      let repo: Repository
      if let t {
        repo = try await cycle.openTarget(t)
      } else {
        repo = try await cycle.access.open()
      }
      try Sys.mkdirAll(BytePath(scratch), 0o700)
      r.sources = try await cycle.access.withLock(repo, exclusive: false, overlap: true) {
        try await repo.loadIndex()
        return try await drillSources(repo, scratch: scratch)
      }
    } catch {
      r.failures.append("\(error)")
    }
    r.rtoSeconds = (ContinuousClock.now - started).inSeconds
    if !keep { try? FileManager.default.removeItem(atPath: scratch) }
    r.filesVerified = r.sources.reduce(0) { $0 + $1.files }
    r.bytesVerified = r.sources.reduce(0) { $0 + $1.bytes }
    r.rpoSeconds = r.sources.compactMap(\.rpoSeconds).max()
    for s in r.sources { if let e = s.error { r.failures.append("\(s.source): \(e)") } }
    r.ok = r.failures.isEmpty && !r.sources.isEmpty
    if r.sources.isEmpty && r.failures.isEmpty { r.failures.append("no sources configured") }
    return r
  }

  /// The name of a source in reports and what its snapshot's `paths` are.
  static func describe(_ s: EngineConfig.Source, _ config: EngineConfig) -> (name: String, paths: Set<String>) {
    switch s.kind {
    case .path(let p, _): return (p, Set(config.sourcePaths))
    default:
      let f = s.kind.filename ?? "?"
      return (f, ["/" + f])
    }
  }

  func drillSources(_ repo: Repository, scratch: String) async throws -> [DrillSourceResult] {
    let snapshots = try await repo.listSnapshots()
    var out: [DrillSourceResult] = []
    var restored: [Set<String>: (String, String?)] = [:]
    for (i, source) in config.sources.enumerated() {
      let (name, paths) = Drill.describe(source, config)
      var res = DrillSourceResult(source: name, verifyCommand: source.verify)
      let candidates = snapshots.filter { Set($0.paths) == paths && (config.host == nil || $0.hostname == config.host) }
      guard let snap = candidates.max(by: { $0.time < $1.time }) else {
        res.error = "no snapshot of it in \(repo.backend.location)"
        out.append(res)
        continue
      }
      res.snapshot = snap.id?.hex
      res.snapshotTime = snap.time.rfc3339
      res.rpoSeconds = max(0, Date().timeIntervalSince1970 - Double(snap.time.seconds))
      say("drill \(repo.backend.location): \(name): snapshot \(snap.id!.short) of \(Human.time(snap.time))")
      // Path sources share one snapshot: restored once, into the directory of the first of them.
      let dir: String
      var restoreError: String? = nil
      if let done = restored[paths] {
        (dir, restoreError) = done
      } else {
        dir = scratch + "/\(i)"
        try Sys.mkdirAll(BytePath(dir), 0o700)
        var opts = RestoreOptions(target: BytePath(dir))
        opts.verify = true
        opts.overwrite = .always
        do {
          let stats = try await Restore(repository: repo, options: opts).run(tree: snap.tree)
          if !stats.errors.isEmpty {
            restoreError =
              "\(stats.errors.count) error\(stats.errors.count == 1 ? "" : "s") restoring snapshot \(snap.id!.short): "
              + stats.errors.prefix(3).map { e in e.hasPrefix(dir) ? String(e.dropFirst(dir.count)) : e }.joined(
                separator: "; ")
          }
          res.files = stats.totalFiles
          res.bytes = stats.bytesVerified
        } catch {
          restoreError = "restoring snapshot \(snap.id!.short): \(error)"
        }
        restored[paths] = (dir, restoreError)
      }
      // Where the restored copy of this source is, for its verify command.
      let copy: String
      switch source.kind {
      case .path(let p, _): copy = dir + (p.hasPrefix("/") ? p : "/" + p)
      default: copy = dir + "/" + (source.kind.filename ?? "")
      }
      if let e = restoreError {
        res.error = e
      } else if let v = source.verify {
        let (ok, output) = await Drill.runVerify(v, path: copy)
        res.verifyOK = ok
        if !ok { res.error = "verify command `\(v)` failed: \(output)" }
      }
      out.append(res)
    }
    return out
  }

  /// Runs `command` with `{}` replaced by the quoted path; returns success and the last lines of its output.
  static func runVerify(_ command: String, path: String) async -> (Bool, String) {
    let quoted = "'" + path.replacingOccurrences(of: "'", with: "'\\''") + "'"
    do {
      let r = try await ChildProcess.shell(
        command.replacingOccurrences(of: "{}", with: quoted), timeout: .seconds(3600))
      return (
        r.succeeded, r.succeeded ? r.tailSummary : (r.timedOut ? "timed out: " : "\(r.termination): ") + r.tailSummary
      )
    } catch {
      return (false, "cannot run: \(error)")
    }
  }

  /// Saves drill.json and the Markdown report, updates the metrics textfile, raises alerts for failures.
  public func record(_ state: inout DrillState) async {
    let dir = cycle.stateDir.path
    let logger = cycle.logger
    let reports = config.drill.reports ?? dir + "/reports"
    do {
      try Sys.mkdirAll(BytePath(reports), 0o755)
      let stamp = Timestamp.local(seconds: Int64(state.start), nanoseconds: 0).rfc3339.replacingOccurrences(
        of: ":", with: "")
      let path = reports + "/drill-\(stamp).md"
      try Array(markdown(state).utf8).withUnsafeBytes { try Sys.writeAtomically(BytePath(path), $0, mode: 0o644) }
      state.report = path
    } catch {
      logger.warning("cannot write the drill report in \(reports): \(error)")
    }
    do {
      try cycle.stateDir.prepare()
      try cycle.stateDir.save(state)
    } catch {
      logger.warning("cannot save \(dir)/drill.json: \(error)")
    }
    let alerts = Alerts(config: config, logger: logger)
    await alerts.publishMetrics(cycle.stateDir.metricsText(now: Date().timeIntervalSince1970))
    let failures = state.repositories.flatMap { r in r.failures.map { (r.name, "drill of \(r.name): \($0)") } }
    if !failures.isEmpty {
      await alerts.deliver(failures.map { Alerts.Alert("drill", $0.1, target: $0.0) })
    }
  }

  /// The daemon's part: a drill when `drill.schedule` says one is due, and once a day per target a
  /// `check --read-data-subset` of `drill.check-budget` bytes (random packs, so every pack is read in time).
  /// Failures raise alerts; nothing here fails the daemon.
  public func scheduled() async {
    let dir = cycle.stateDir.path
    let logger = cycle.logger
    let now = Date().timeIntervalSince1970
    if let sched = config.drill.schedule, sched.isDue(last: cycle.stateDir.loadDrill()?.start, now: now) {
      do {
        var state = await run(try plan([]))
        await record(&state)
        logger.info("drill \(state.ok ? "passed" : "FAILED")\(state.report.map { ": \($0)" } ?? "")")
      } catch {
        logger.error("drill: \(error)")
      }
    }
    guard config.drill.checkBudget > 0, !config.targets.isEmpty else { return }
    let file = dir + "/check.json"
    var last =
      (FileManager.default.contents(atPath: file)).flatMap {
        try? JSONDecoder().decode([String: Double].self, from: $0)
      }
      ?? [:]
    for t in config.targets where now - (last[t.name] ?? 0) >= 86400 {
      var problem: String? = nil
      do {
        let repo = try await cycle.openTarget(t)
        var opts = CheckOptions()
        opts.readData = .bytes(config.drill.checkBudget)
        let report = try await cycle.access.withLock(repo, exclusive: false, overlap: true) {
          try await Check.run(repo, options: opts)
        }
        if !report.errors.isEmpty { problem = report.errors.prefix(3).joined(separator: "; ") }
        let line =
          "check of \(t.name): \(report.packsRead) packs (\(Human.bytes(Int64(report.bytesRead)))) read, "
          + (problem == nil ? "no errors" : "ERRORS")
        logger.info("\(line)")
      } catch {
        problem = "\(error)"
      }
      last[t.name] = now
      if let problem {
        logger.error("check of \(t.name): \(problem)")
        await Alerts(config: config, logger: logger).deliver([
          Alerts.Alert("check", "check of target \(t.name): \(problem)", target: t.name)
        ])
      }
    }
    if let data = try? JSONEncoder().encode(last) {
      try? Array(data).withUnsafeBytes { try Sys.writeAtomically(BytePath(file), $0, mode: 0o644) }
    }
  }

  public func markdown(_ s: DrillState) -> String {
    var m = "# DR drill \(Timestamp.local(seconds: Int64(s.start), nanoseconds: 0).rfc3339)\n\n"
    m += "Result: **\(s.ok ? "passed" : "FAILED")**. Configuration `\(config.file)`, host "
    m += "\(config.host ?? SystemInfo.hostname), tidemark \(TidemarkVersion.string).\n\n"
    m +=
      "| repository | result | RTO | RPO | files verified | bytes verified | throughput |\n|---|---|---:|---:|---:|---:|---:|\n"
    for r in s.repositories {
      let rate = r.rtoSeconds > 0 ? Human.bytes(Int64(Double(r.bytesVerified) / r.rtoSeconds)) + "/s" : "-"
      m += "| \(r.name) (`\(r.repository)`) | \(r.ok ? "ok" : "FAILED") | \(String(format: "%.1f s", r.rtoSeconds)) | "
      m +=
        "\(r.rpoSeconds.map { Human.duration($0) } ?? "-") | \(r.filesVerified) | \(Human.bytes(r.bytesVerified)) | \(rate) |\n"
    }
    for r in s.repositories {
      m +=
        "\n## \(r.name)\n\n| source | snapshot | taken | files | bytes | verify | result |\n|---|---|---|---:|---:|---|---|\n"
      for src in r.sources {
        let verify = src.verifyCommand.map { "`\($0)`" } ?? "-"
        m += "| `\(src.source)` | \(src.snapshot.map { String($0.prefix(8)) } ?? "-") | \(src.snapshotTime ?? "-") | "
        m +=
          "\(src.files) | \(Human.bytes(src.bytes)) | \(verify) | \(src.error == nil ? "ok" : "FAILED: \(src.error!)") |\n"
      }
      if !r.failures.isEmpty {
        m += "\nFailures:\n\n" + r.failures.map { "- \($0)\n" }.joined()
      }
    }
    return m + "\n"
  }
}

extension DrillState {
  /// The drill as `tidemark drill --json` prints it: `ok`, `rto_seconds` (the slowest repository), `rpo_seconds`
  /// (the oldest), totals, and per repository and source the details, for monitoring scripts.
  public func json() -> [UInt8] {
    var w = JSONWriter()
    let rto = repositories.map(\.rtoSeconds).max() ?? 0
    let rpo = repositories.compactMap(\.rpoSeconds).max()
    w.raw("{\"ok\":\(ok),\"rto_seconds\":\(String(format: "%.3f", rto))")
    w.raw(",\"rpo_seconds\":\(rpo.map { String(format: "%.0f", $0) } ?? "null")")
    w.raw(",\"files_verified\":\(repositories.reduce(0) { $0 + $1.filesVerified })")
    w.raw(",\"bytes_verified\":\(repositories.reduce(Int64(0)) { $0 + $1.bytesVerified })")
    w.raw(",\"started\":\(Int(start)),\"report\":")
    if let r = report { w.string(r) } else { w.raw("null") }
    w.raw(",\"failures\":[")
    for (i, f) in repositories.flatMap({ r in r.failures.map { "\(r.name): \($0)" } }).enumerated() {
      if i > 0 { w.comma() }
      w.string(f)
    }
    w.raw("],\"repositories\":[")
    for (i, r) in repositories.enumerated() {
      if i > 0 { w.comma() }
      w.raw("{\"name\":")
      w.string(r.name)
      w.raw(",\"repository\":")
      w.string(r.repository)
      w.raw(",\"ok\":\(r.ok),\"rto_seconds\":\(String(format: "%.3f", r.rtoSeconds))")
      w.raw(",\"rpo_seconds\":\(r.rpoSeconds.map { String(format: "%.0f", $0) } ?? "null")")
      w.raw(",\"files_verified\":\(r.filesVerified),\"bytes_verified\":\(r.bytesVerified)")
      w.raw(
        ",\"throughput_bytes_per_second\":\(r.rtoSeconds > 0 ? Int(Double(r.bytesVerified) / r.rtoSeconds) : 0),\"sources\":["
      )
      for (j, src) in r.sources.enumerated() {
        if j > 0 { w.comma() }
        w.raw("{\"source\":")
        w.string(src.source)
        w.raw(",\"snapshot\":" + (src.snapshot.map { "\"\($0)\"" } ?? "null"))
        w.raw(",\"snapshot_time\":" + (src.snapshotTime.map { "\"\($0)\"" } ?? "null"))
        w.raw(",\"rpo_seconds\":" + (src.rpoSeconds.map { String(format: "%.0f", $0) } ?? "null"))
        w.raw(",\"files_verified\":\(src.files),\"bytes_verified\":\(src.bytes)")
        w.raw(",\"verify_ok\":" + (src.verifyOK.map { "\($0)" } ?? "null") + ",\"ok\":\(src.error == nil)")
        if let e = src.error {
          w.raw(",\"error\":")
          w.string(e)
        }
        w.raw("}")
      }
      w.raw("],\"failures\":[")
      for (j, f) in r.failures.enumerated() {
        if j > 0 { w.comma() }
        w.string(f)
      }
      w.raw("]}")
    }
    w.raw("]}\n")
    return w.out
  }
}

extension Cycle {
  /// One cycle as a timer (`replicate --once`) runs it: the cycle, then, when `scheduled`, the drill and rolling
  /// check that drill.schedule / drill.check-budget make due, as the daemon runs them, so timer users get them
  /// too. A failed cycle still lets a due drill run (it reports on what the targets hold), and the cycle's error
  /// is thrown afterwards; while another cycle holds the lock, that one does the scheduled work.
  public func runOnce(scheduled: Bool) async throws {
    var failure: Error? = nil
    do {
      try await run()
    } catch let e as TidemarkError where e.kind == .locked {
      throw e
    } catch {
      failure = error
    }
    if scheduled && !Task.isCancelled { await Drill(cycle: self).scheduled() }
    if let failure { throw failure }
  }
}
