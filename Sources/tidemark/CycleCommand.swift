// The replication cycle (`tidemark replicate --once`) and `tidemark status`: wiring the engine configuration to
// backup, replica sync and retention, and keeping the state file that status and monitoring read.
import ArgumentParser
import Foundation
import TidemarkBackends
import TidemarkCore
import TidemarkOperations
import TidemarkSystem

/// What the last cycles did, per target; `state.json` in the state directory (TIDEMARK_STATE_DIR, default
/// /var/lib/tidemark). Written atomically after every cycle.
struct EngineState: Codable {
  struct TargetState: Codable {
    var name: String
    var repository: String
    /// The newest snapshot known to be fully on the target, and its capture time (Unix seconds).
    var newestSnapshot: String?
    var newestSnapshotTime: Double?
    var lastSuccess: Double?
    var lastError: String?
    var consecutiveFailures = 0
    var bytesCopiedLast = 0
    var bytesCopiedTotal = 0
  }
  var lastCycleStart: Double?
  var lastCycleEnd: Double?
  var lastCycleSuccess = false
  var lastCycleError: String?
  var lastSnapshot: String?
  var lastSnapshotTime: Double?
  var backupBytesAdded = 0
  var cycles = 0
  var targets: [TargetState] = []

  static func directory() -> String {
    ProcessInfo.processInfo.environment["TIDEMARK_STATE_DIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/var/lib/tidemark"
  }

  static func load(_ dir: String) -> EngineState {
    guard let data = FileManager.default.contents(atPath: dir + "/state.json"),
      let s = try? JSONDecoder().decode(EngineState.self, from: data)
    else { return EngineState() }
    return s
  }

  func save(_ dir: String) throws {
    let enc = JSONEncoder()
    enc.outputFormatting = [.prettyPrinted, .sortedKeys]
    let data = try enc.encode(self)
    try Array(data).withUnsafeBytes { try Sys.writeAtomically(BytePath(dir + "/state.json"), $0, mode: 0o644) }
  }
}

/// One cycle: lock -> hooks -> backup -> replicate to every target (in parallel) -> retention -> state.
struct Cycle {
  let global: GlobalOptions
  let config: EngineConfig

  func run() async throws {
    let dir = EngineState.directory()
    try Sys.mkdirAll(BytePath(dir), 0o755)
    // Never two cycles at once: an flock held for the whole cycle (released by the kernel if we die).
    let lockFD = open(dir + "/cycle.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
    guard lockFD >= 0 else {
      throw TidemarkError(.general, "cannot open \(dir)/cycle.lock: \(String(cString: strerror(errno)))")
    }
    defer { close(lockFD) }
    guard flock(lockFD, LOCK_EX | LOCK_NB) == 0 else {
      throw TidemarkError(
        .locked, "another replication cycle is running (\(dir)/cycle.lock is held)",
        hint: "wait for it to finish; cycles never overlap")
    }
    var state = EngineState.load(dir)
    let start = Date().timeIntervalSince1970
    state.lastCycleStart = start
    state.cycles += 1
    var failures: [String] = []
    let say: (String) -> Void = { [quiet = global.quiet || global.json] s in if !quiet { Out.line(s) } }

    do {
      try runHooks(config.hooks.before, "before")
      let repo = try await global.open()
      try await repo.loadIndex()
      // Backup.
      let paths = config.sources.compactMap { s -> BytePath? in
        if case .path(let p, _) = s { return BytePath(p) }
        return nil
      }
      if config.sources.contains(where: { if case .command = $0 { return true } else { return false } }) {
        throw TidemarkError(
          .usage, "\(config.file): command sources are not supported yet", hint: "use path sources for now")
      }
      if !paths.isEmpty {
        var opts = BackupOptions()
        opts.paths = paths
        if let h = config.host { opts.host = h }
        opts.excludes = config.sources.flatMap { s -> [PathPattern] in
          if case .path(_, let ex) = s { return ex.map(PathPattern.init) }
          return []
        }
        opts.programVersion = "tidemark \(Tidemark.version)"
        let result = try await global.withLock(repo, exclusive: false) {
          try await TidemarkOperations.Backup(repository: repo, options: opts).run()
        }
        state.lastSnapshot = result.snapshotID?.hex
        state.lastSnapshotTime = Double(result.snapshot.time.seconds)
        state.backupBytesAdded = result.saver.bytesStored
        say(
          "backup: snapshot \(result.snapshotID?.short ?? "-") (\(Out.bytes(Int64(result.saver.bytesStored))) added)")
        if !result.stats.errors.isEmpty { failures.append("backup: \(result.stats.errors.count) files unreadable") }
      }
      // Replicate to every target at once; a failing target does not stop the others.
      let password = try global.password()
      let outcomes = await withTaskGroup(of: (Int, Result<(ReplicaStats, Snapshot?), any Error>).self) { g in
        for (i, t) in config.targets.enumerated() {
          g.addTask {
            do {
              return (i, .success(try await replicate(repo, t, password)))
            } catch {
              return (i, .failure(error))
            }
          }
        }
        var out: [(Int, Result<(ReplicaStats, Snapshot?), any Error>)] = []
        for await r in g { out.append(r) }
        return out.sorted { $0.0 < $1.0 }
      }
      let now = Date().timeIntervalSince1970
      for (i, outcome) in outcomes {
        let t = config.targets[i]
        var ts =
          state.targets.first { $0.name == t.name } ?? EngineState.TargetState(name: t.name, repository: t.repository)
        ts.repository = t.repository
        switch outcome {
        case .success(let (stats, newest)):
          ts.lastSuccess = now
          ts.lastError = nil
          ts.consecutiveFailures = 0
          ts.bytesCopiedLast = stats.bytesCopied
          ts.bytesCopiedTotal += stats.bytesCopied
          if let newest {
            ts.newestSnapshot = newest.id?.hex
            ts.newestSnapshotTime = Double(newest.time.seconds)
          }
          say("target \(t.name): copied \(Out.bytes(Int64(stats.bytesCopied))) (\(stats.snapshotsCopied) snapshots)")
        case .failure(let e):
          ts.lastError = "\(e)"
          ts.consecutiveFailures += 1
          failures.append("target \(t.name): \(e)")
          Out.err("tidemark: target \(t.name): \(e)")
        }
        state.targets.removeAll { $0.name == t.name }
        state.targets.append(ts)
      }
      state.targets.removeAll { s in !config.targets.contains { $0.name == s.name } }
      // Retention on the DC and on every target that replicated.
      if !config.retention.isEmpty {
        let n = try await applyRetention(repo, config.retention)
        if n > 0 { say("retention: forgot \(n) snapshots on \(config.repository)") }
      }
      for (i, outcome) in outcomes {
        guard case .success = outcome else { continue }
        let t = config.targets[i]
        let r = t.retention ?? config.retention
        guard !r.isEmpty else { continue }
        do {
          let target = try await openTarget(t, password)
          let n = try await applyRetention(target, r)
          if n > 0 { say("retention: forgot \(n) snapshots on target \(t.name)") }
        } catch {
          failures.append("retention on target \(t.name): \(error)")
        }
      }
      try runHooks(config.hooks.after, "after")
    } catch {
      failures.append("\(error)")
      Out.err("tidemark: \(error)")
    }
    state.lastCycleEnd = Date().timeIntervalSince1970
    state.lastCycleSuccess = failures.isEmpty
    state.lastCycleError = failures.first
    try state.save(dir)
    if !failures.isEmpty {
      try? runHooks(config.hooks.onFailure, "on-failure")
      throw TidemarkError(
        .general, "cycle failed: \(failures.joined(separator: "; "))", hint: "`tidemark status` shows each target")
    }
    say(String(format: "cycle done in %.1f s", state.lastCycleEnd! - start))
  }

  func runHooks(_ commands: [String], _ phase: String) throws {
    for c in commands {
      let p = Process()
      p.executableURL = URL(fileURLWithPath: "/bin/sh")
      p.arguments = ["-c", c]
      try p.run()
      p.waitUntilExit()
      guard p.terminationStatus == 0 else {
        throw TidemarkError(.general, "\(phase) hook `\(c)` failed with exit code \(p.terminationStatus)")
      }
    }
  }

  func targetPassword(_ t: EngineConfig.Target, _ password: [UInt8]) throws -> [UInt8] {
    guard let f = t.passwordFile else { return password }
    return try GlobalOptions.readPassword(file: f, command: nil, envPrefix: "TARGET_", prompt: "")
  }

  func targetBackend(_ t: EngineConfig.Target) throws -> any Backend {
    let b = try GlobalOptions.backend(for: t.repository, options: t.options)
    guard let up = t.limitUploadKiB, up > 0 else { return b }
    return RateLimitedBackend(b, uploadKiB: up, downloadKiB: nil)
  }

  func openTarget(_ t: EngineConfig.Target, _ password: [UInt8]) async throws -> Repository {
    try await Repository.open(backend: try targetBackend(t), password: try targetPassword(t, password))
  }

  /// Creates the replica if needed and syncs it; returns the stats and the newest snapshot now on the target.
  func replicate(_ repo: Repository, _ t: EngineConfig.Target, _ password: [UInt8]) async throws -> (
    ReplicaStats, Snapshot?
  ) {
    let target = try await Replica.create(
      source: repo, target: try targetBackend(t), password: try targetPassword(t, password),
      kdf: GlobalOptions.keyDerivationParams)
    let stats: ReplicaStats
    do {
      stats = try await Replica.sync(source: repo, target: target)
    } catch let e as ReplicaError {
      throw e.error
    }
    let newest = try await target.listSnapshots().last
    return (stats, newest)
  }

  /// Forgets by `r` (grouped by host and paths); the newest snapshot of each group always stays (a target may
  /// still need it as the last common snapshot). Returns how many snapshots were removed.
  func applyRetention(_ repo: Repository, _ r: EngineConfig.Retention) async throws -> Int {
    var p = ForgetPolicy()
    p.last = r.keepLast ?? 0
    p.hourly = r.keepHourly ?? 0
    p.daily = r.keepDaily ?? 0
    p.weekly = r.keepWeekly ?? 0
    p.monthly = r.keepMonthly ?? 0
    p.yearly = r.keepYearly ?? 0
    func d(_ s: String?) throws -> RetentionDuration { try s.map { try RetentionDuration(parsing: $0) } ?? .init() }
    p.within = try d(r.keepWithin)
    p.withinHourly = try d(r.keepWithinHourly)
    p.withinDaily = try d(r.keepWithinDaily)
    p.withinWeekly = try d(r.keepWithinWeekly)
    p.withinMonthly = try d(r.keepWithinMonthly)
    p.withinYearly = try d(r.keepWithinYearly)
    p.keepTags = r.keepTag.map(TagList.parse)
    return try await global.withLock(repo, exclusive: true) {
      var remove: [SnapshotID] = []
      for (_, snaps) in SnapshotGrouping.default.group(try await repo.listSnapshots()) {
        let newest = snaps.max { $0.time < $1.time }?.id
        remove += p.apply(to: snaps).remove.compactMap(\.id).filter { $0 != newest }
      }
      try await forEachConcurrently(remove, limit: 4) { id in try await repo.backend.remove(Handle(.snapshot, id.hex)) }
      return remove.count
    }
  }
}

struct StatusCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "status",
    abstract: "Replication status per target: newest replicated snapshot and the RPO lag.",
    discussion: """
      Reads the state the replication cycles keep (TIDEMARK_STATE_DIR, default /var/lib/tidemark). lag_seconds is \
      now minus the capture time of the newest snapshot fully present on the target. Exit code, for monitoring \
      checks: 0 OK (every lag within alerts.rpo), 1 WARN (a lag above rpo), 2 CRIT (a lag above twice rpo, a \
      target that never replicated, or the last cycle failed). Without alerts.rpo in the configuration, 15m.
      """)
  @OptionGroup var global: GlobalOptions

  func run() async throws {
    let config = try global.engineConfig()
    let rpo = Double((config?.alerts.rpo ?? .seconds(900)).components.seconds)
    let state = EngineState.load(EngineState.directory())
    let now = Date().timeIntervalSince1970
    var level = state.lastCycleSuccess || state.cycles == 0 ? 0 : 2
    if state.targets.isEmpty && state.cycles == 0 { level = 2 }
    var rows: [[String]] = []
    var w = JSONWriter()
    w.raw("{\"cycles\":\(state.cycles),\"last_cycle_success\":\(state.lastCycleSuccess),\"rpo_seconds\":\(Int(rpo))")
    if let e = state.lastCycleError {
      w.raw(",\"last_cycle_error\":")
      w.string(e)
    }
    if let t = state.lastCycleEnd { w.raw(",\"last_cycle_end\":\(Int(t))") }
    w.raw(",\"targets\":[")
    for (i, t) in state.targets.enumerated() {
      let lag = t.newestSnapshotTime.map { max(0, now - $0) }
      let l = lag.map { $0 > 2 * rpo ? 2 : ($0 > rpo ? 1 : 0) } ?? 2
      level = max(level, l)
      if i > 0 { w.comma() }
      w.raw("{\"name\":")
      w.string(t.name)
      w.raw(",\"repository\":")
      w.string(t.repository)
      if let s = t.newestSnapshot { w.raw(",\"newest_snapshot\":\"\(s)\"") }
      if let lag { w.raw(",\"lag_seconds\":\(Int(lag))") }
      if let s = t.lastSuccess { w.raw(",\"last_success\":\(Int(s))") }
      if let e = t.lastError {
        w.raw(",\"last_error\":")
        w.string(e)
      }
      w.raw(",\"consecutive_failures\":\(t.consecutiveFailures),\"bytes_copied_total\":\(t.bytesCopiedTotal)")
      w.raw(",\"status\":\"\(["OK", "WARN", "CRIT"][l])\"}")
      rows.append([
        t.name, t.newestSnapshot.map { String($0.prefix(8)) } ?? "-", lag.map { Out.duration($0) } ?? "never",
        ["OK", "WARN", "CRIT"][l], t.lastError ?? "",
      ])
    }
    w.raw("],\"status\":\"\(["OK", "WARN", "CRIT"][level])\"}\n")
    if global.json {
      Out.raw(w.out)
    } else {
      printTable(header: ["Target", "Newest", "Lag", "Status", "Last error"], rows: rows)
      Out.line(
        "\(["OK", "WARN", "CRIT"][level]): \(state.cycles) cycles, last \(state.lastCycleSuccess ? "succeeded" : "failed")"
          + (state.lastCycleError.map { ": \($0)" } ?? ""))
    }
    if level > 0 { throw ExitCode(Int32(level)) }
  }
}
