// `tidemark drill`: prove that recovery works and measure it. From each target (or the configuration's own
// repository), restore the newest snapshot of every source into a scratch directory, check every file against
// the snapshot's content hashes, run the source's `verify` command, and measure RTO (restore + verify wall time)
// and RPO (now minus the snapshot's time). Results: JSON or a table, a Markdown report, drill.json in the state
// directory (metrics), and alerts on failure.
import ArgumentParser
import Foundation
import TidemarkBackends
import TidemarkCore
import TidemarkEngine
import TidemarkOperations
import TidemarkSystem

/// One drilled source.
struct DrillSourceResult: Codable, Sendable {
  var source: String
  var snapshot: String?
  var snapshotTime: String?
  var rpoSeconds: Double?
  var files = 0
  var bytes: Int64 = 0
  var verifyCommand: String?
  var verifyOK: Bool?
  var error: String?
}

/// One drilled repository (a target, or the configuration's own repository).
struct DrillRepositoryResult: Codable, Sendable {
  var name: String
  var repository: String
  var ok = false
  var rtoSeconds = 0.0
  var rpoSeconds: Double?
  var filesVerified = 0
  var bytesVerified: Int64 = 0
  var sources: [DrillSourceResult] = []
  var failures: [String] = []
}

/// The last drill, as `drill.json` in the state directory keeps it (for metrics and status).
struct DrillState: Codable, Sendable {
  var start: Double
  var end: Double
  var ok: Bool
  var repositories: [DrillRepositoryResult]
  var report: String?

  static func load(_ dir: String) -> DrillState? {
    guard let d = FileManager.default.contents(atPath: dir + "/drill.json") else { return nil }
    return try? JSONDecoder().decode(DrillState.self, from: d)
  }

  func save(_ dir: String) throws {
    let enc = JSONEncoder()
    enc.outputFormatting = [.prettyPrinted, .sortedKeys]
    try Array(try enc.encode(self)).withUnsafeBytes {
      try Sys.writeAtomically(BytePath(dir + "/drill.json"), $0, mode: 0o644)
    }
  }

  /// tidemark_drill_* in Prometheus' text format.
  func prometheus() -> String {
    var out = ""
    func label(_ n: String) -> String {
      "target=\"" + n.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }
    func metric(_ name: String, _ help: String, _ samples: [(String, Double)]) {
      out += "# HELP \(name) \(help)\n# TYPE \(name) gauge\n"
      for (l, v) in samples { out += "\(name){\(l)} " + String(format: "%.3f", v) + "\n" }
    }
    metric(
      "tidemark_drill_success", "1 when the last drill of the target passed.",
      repositories.map { (label($0.name), $0.ok ? 1 : 0) })
    metric(
      "tidemark_drill_rto_seconds", "Restore and verify time of the last drill.",
      repositories.map { (label($0.name), $0.rtoSeconds) })
    metric(
      "tidemark_drill_rpo_seconds", "Age of the newest snapshot at the last drill.",
      repositories.compactMap { r in r.rpoSeconds.map { (label(r.name), $0) } })
    out += "# HELP tidemark_drill_last_timestamp_seconds When the last drill ended.\n"
    out += "# TYPE tidemark_drill_last_timestamp_seconds gauge\ntidemark_drill_last_timestamp_seconds \(Int(end))\n"
    return out
  }
}

extension EngineState {
  /// The metrics of the state directory: the cycles' and the last drill's.
  static func metricsText(_ dir: String, now: Double) -> String {
    EngineState.load(dir).prometheus(now: now) + (DrillState.load(dir)?.prometheus() ?? "")
  }
}

struct Drill {
  let global: GlobalOptions
  let config: EngineConfig
  var guardSignals = true
  var keep = false
  var say: @Sendable (String) -> Void = { _ in }

  /// What to drill: the named targets, else `drill.targets`, else every target, else the own repository (nil).
  func plan(_ names: [String]) throws -> [EngineConfig.Target?] {
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

  func run(_ targets: [EngineConfig.Target?]) async -> DrillState {
    let start = Date().timeIntervalSince1970
    var results: [DrillRepositoryResult] = []
    for t in targets { results.append(await drill(t)) }
    let end = Date().timeIntervalSince1970
    return DrillState(start: start, end: end, ok: results.allSatisfy(\.ok), repositories: results)
  }

  func scratchRoot() -> String {
    config.drill.scratch ?? EngineState.directory() + "/drill-scratch"
  }

  func drill(_ t: EngineConfig.Target?) async -> DrillRepositoryResult {
    var r = DrillRepositoryResult(name: t?.name ?? "local", repository: t?.repository ?? config.repository)
    let cycle = Cycle(global: global, config: config, guardSignals: guardSignals)
    let scratch = scratchRoot() + "/\(r.name)-\(getpid())"
    let started = ContinuousClock.now
    do {
      let repo: Repository
      if let t {
        repo = try await cycle.openTarget(t, try global.password())
      } else {
        repo = try await global.open()
      }
      try Sys.mkdirAll(BytePath(scratch), 0o700)
      r.sources = try await cycle.withLock(repo, exclusive: false, overlap: true) {
        try await repo.loadIndex()
        return try await drillSources(repo, scratch: scratch)
      }
    } catch {
      r.failures.append("\(error)")
    }
    let d = (ContinuousClock.now - started).components
    r.rtoSeconds = Double(d.seconds) + Double(d.attoseconds) / 1e18
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
      say("drill \(repo.backend.location): \(name): snapshot \(snap.id!.short) of \(Out.time(snap.time))")
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
        let (ok, output) = Drill.runVerify(v, path: copy)
        res.verifyOK = ok
        if !ok { res.error = "verify command `\(v)` failed: \(output)" }
      }
      out.append(res)
    }
    return out
  }

  /// Runs `command` with `{}` replaced by the quoted path; returns success and the last lines of its output.
  static func runVerify(_ command: String, path: String) -> (Bool, String) {
    let quoted = "'" + path.replacingOccurrences(of: "'", with: "'\\''") + "'"
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/sh")
    p.arguments = ["-c", command.replacingOccurrences(of: "{}", with: quoted)]
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = pipe
    p.standardInput = FileHandle.nullDevice
    do {
      try p.run()
    } catch {
      return (false, "cannot run: \(error)")
    }
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    let text = String(decoding: data, as: UTF8.self).split(separator: "\n").suffix(3).joined(separator: " / ")
    return (p.terminationStatus == 0, p.terminationStatus == 0 ? text : "exit \(p.terminationStatus): \(text)")
  }

  /// Saves drill.json and the Markdown report, updates the metrics textfile, raises alerts for failures.
  func record(_ state: inout DrillState) async {
    let dir = EngineState.directory()
    let reports = config.drill.reports ?? dir + "/reports"
    do {
      try Sys.mkdirAll(BytePath(reports), 0o755)
      let stamp = Timestamp.local(seconds: Int64(state.start), nanoseconds: 0).rfc3339.replacingOccurrences(
        of: ":", with: "")
      let path = reports + "/drill-\(stamp).md"
      try Array(markdown(state).utf8).withUnsafeBytes { try Sys.writeAtomically(BytePath(path), $0, mode: 0o644) }
      state.report = path
    } catch {
      Out.err("tidemark: cannot write the drill report in \(reports): \(error)")
    }
    do {
      try Sys.mkdirAll(BytePath(dir), 0o755)
      try state.save(dir)
    } catch {
      Out.err("tidemark: cannot save \(dir)/drill.json: \(error)")
    }
    if let path = config.metrics.textfile {
      try? Array(EngineState.metricsText(dir, now: Date().timeIntervalSince1970).utf8).withUnsafeBytes {
        try Sys.writeAtomically(BytePath(path), $0, mode: 0o644)
      }
    }
    if let gateway = config.metrics.pushgateway {
      await Cycle(global: global, config: config).pushMetrics(
        gateway, EngineState.metricsText(dir, now: Date().timeIntervalSince1970))
    }
    let failures = state.repositories.flatMap { r in r.failures.map { (r.name, "drill of \(r.name): \($0)") } }
    if !failures.isEmpty {
      await Cycle(global: global, config: config).deliver(failures.map { ("drill", $0.1, $0.0) })
    }
  }

  /// The daemon's part: a drill when `drill.schedule` says one is due, and once a day per target a
  /// `check --read-data-subset` of `drill.check-budget` bytes (random packs, so every pack is read in time).
  /// Failures raise alerts; nothing here fails the daemon.
  func scheduled(stateDir dir: String) async {
    let now = Date().timeIntervalSince1970
    if let sched = config.drill.schedule, sched.isDue(last: DrillState.load(dir)?.start, now: now) {
      do {
        var state = await run(try plan([]))
        await record(&state)
        Out.line("tidemark daemon: drill \(state.ok ? "passed" : "FAILED")\(state.report.map { ": \($0)" } ?? "")")
      } catch {
        Out.err("tidemark daemon: drill: \(error)")
      }
    }
    guard config.drill.checkBudget > 0, !config.targets.isEmpty else { return }
    let file = dir + "/check.json"
    var last =
      (FileManager.default.contents(atPath: file)).flatMap {
        try? JSONDecoder().decode([String: Double].self, from: $0)
      }
      ?? [:]
    let cycle = Cycle(global: global, config: config, guardSignals: guardSignals)
    for t in config.targets where now - (last[t.name] ?? 0) >= 86400 {
      var problem: String? = nil
      do {
        let repo = try await cycle.openTarget(t, try global.password())
        var opts = CheckOptions()
        opts.readData = .bytes(config.drill.checkBudget)
        let report = try await cycle.withLock(repo, exclusive: false, overlap: true) {
          try await Check.run(repo, options: opts)
        }
        if !report.errors.isEmpty { problem = report.errors.prefix(3).joined(separator: "; ") }
        Out.line(
          "tidemark daemon: check of \(t.name): \(report.packsRead) packs (\(Out.bytes(Int64(report.bytesRead)))) read, "
            + (problem == nil ? "no errors" : "ERRORS"))
      } catch {
        problem = "\(error)"
      }
      last[t.name] = now
      if let problem {
        Out.err("tidemark daemon: check of \(t.name): \(problem)")
        await cycle.deliver([("check", "check of target \(t.name): \(problem)", t.name)])
      }
    }
    if let data = try? JSONEncoder().encode(last) {
      try? Array(data).withUnsafeBytes { try Sys.writeAtomically(BytePath(file), $0, mode: 0o644) }
    }
  }

  func markdown(_ s: DrillState) -> String {
    var m = "# DR drill \(Timestamp.local(seconds: Int64(s.start), nanoseconds: 0).rfc3339)\n\n"
    m += "Result: **\(s.ok ? "passed" : "FAILED")**. Configuration `\(config.file)`, host "
    m += "\(config.host ?? SystemInfo.hostname), tidemark \(Tidemark.version).\n\n"
    m +=
      "| repository | result | RTO | RPO | files verified | bytes verified | throughput |\n|---|---|---:|---:|---:|---:|---:|\n"
    for r in s.repositories {
      let rate = r.rtoSeconds > 0 ? Out.bytes(Int64(Double(r.bytesVerified) / r.rtoSeconds)) + "/s" : "-"
      m += "| \(r.name) (`\(r.repository)`) | \(r.ok ? "ok" : "FAILED") | \(String(format: "%.1f s", r.rtoSeconds)) | "
      m +=
        "\(r.rpoSeconds.map { Out.duration($0) } ?? "-") | \(r.filesVerified) | \(Out.bytes(r.bytesVerified)) | \(rate) |\n"
    }
    for r in s.repositories {
      m +=
        "\n## \(r.name)\n\n| source | snapshot | taken | files | bytes | verify | result |\n|---|---|---|---:|---:|---|---|\n"
      for src in r.sources {
        let verify = src.verifyCommand.map { "`\($0)`" } ?? "-"
        m += "| `\(src.source)` | \(src.snapshot.map { String($0.prefix(8)) } ?? "-") | \(src.snapshotTime ?? "-") | "
        m +=
          "\(src.files) | \(Out.bytes(src.bytes)) | \(verify) | \(src.error == nil ? "ok" : "FAILED: \(src.error!)") |\n"
      }
      if !r.failures.isEmpty {
        m += "\nFailures:\n\n" + r.failures.map { "- \($0)\n" }.joined()
      }
    }
    return m + "\n"
  }
}

struct DrillCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "drill",
    abstract: "Restore the newest snapshot of every source from DR, verify it, and measure RTO and RPO.",
    discussion: """
      For each target (--target NAME, repeatable; `local` for the configuration's own repository; default: \
      drill.targets, else every target): restores the newest snapshot of each configured source into a scratch \
      directory (drill.scratch, default STATE_DIR/drill-scratch), reads every restored file back and checks it \
      against the snapshot's content hashes, runs the source's `verify` command on the copy ({} is its path), \
      then deletes the copy (--keep leaves it).

      RTO: the wall time of restore and verification. RPO: now minus the time of the newest snapshot. \
      A Markdown report goes to drill.reports (default STATE_DIR/reports); drill.json in the state directory \
      feeds the tidemark_drill_* metrics; a failure raises the configured alerts (alert kind `drill`). \
      Exit code 0 when every drill passed, 1 otherwise.
      """)
  @OptionGroup var global: GlobalOptions
  @Option(name: .customLong("target"), help: "Drill this target (repeatable; `local`: the repository itself).")
  var targets: [String] = []
  @Flag(help: "Keep the restored copy in the scratch directory.") var keep = false

  func run() async throws {
    guard let config = try global.engineConfig() else {
      throw TidemarkError(.usage, "drill needs a configuration", hint: "pass --config FILE (or set TIDEMARK_CONFIG)")
    }
    let quiet = global.quiet || global.json
    var d = Drill(global: global, config: config)
    d.keep = keep
    d.say = { s in if !quiet { Out.err(s) } }
    var state = await d.run(try d.plan(targets))
    await d.record(&state)
    if global.json {
      Out.raw(DrillCommand.json(state))
    } else {
      printTable(
        header: ["Repository", "Result", "RTO", "RPO", "Files", "Bytes", "Failure"],
        rows: state.repositories.map { r in
          [
            r.name, r.ok ? "ok" : "FAILED", String(format: "%.1f s", r.rtoSeconds),
            r.rpoSeconds.map { Out.duration($0) } ?? "-", "\(r.filesVerified)", Out.bytes(r.bytesVerified),
            r.failures.first.map { $0.count > 72 ? $0.prefix(70) + "…" : $0 } ?? "",
          ]
        })
      if let p = state.report { Out.line("report: \(p)") }
    }
    if !state.ok {
      throw TidemarkError(
        .general,
        "drill failed: "
          + state.repositories.flatMap { r in r.failures.map { "\(r.name): \($0)" } }.joined(separator: "; "))
    }
  }

  /// `ok`, `rto_seconds` (the slowest repository), `rpo_seconds` (the oldest), totals, and per repository and
  /// source the details.
  static func json(_ s: DrillState) -> [UInt8] {
    var w = JSONWriter()
    let rto = s.repositories.map(\.rtoSeconds).max() ?? 0
    let rpo = s.repositories.compactMap(\.rpoSeconds).max()
    w.raw("{\"ok\":\(s.ok),\"rto_seconds\":\(String(format: "%.3f", rto))")
    w.raw(",\"rpo_seconds\":\(rpo.map { String(format: "%.0f", $0) } ?? "null")")
    w.raw(",\"files_verified\":\(s.repositories.reduce(0) { $0 + $1.filesVerified })")
    w.raw(",\"bytes_verified\":\(s.repositories.reduce(Int64(0)) { $0 + $1.bytesVerified })")
    w.raw(",\"started\":\(Int(s.start)),\"report\":")
    if let r = s.report { w.string(r) } else { w.raw("null") }
    w.raw(",\"failures\":[")
    for (i, f) in s.repositories.flatMap({ r in r.failures.map { "\(r.name): \($0)" } }).enumerated() {
      if i > 0 { w.comma() }
      w.string(f)
    }
    w.raw("],\"repositories\":[")
    for (i, r) in s.repositories.enumerated() {
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
