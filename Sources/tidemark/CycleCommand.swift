// The replication cycle (`tidemark replicate --once`) and `tidemark status`: wiring the engine configuration to
// backup, replica sync and retention, and keeping the state file that status and monitoring read.
import ArgumentParser
import Foundation
import Synchronization
import TidemarkBackends
import TidemarkCore
import TidemarkEngine
import TidemarkOperations
import TidemarkSystem

#if canImport(FoundationNetworking)
  import FoundationNetworking
#endif

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
    /// The target's key file that opened with the target password (checked again when it disappears).
    var keyID: String?
    /// When a sync last compared every pack on both sides (see `Cycle.fullListingEvery`).
    var lastFullSync: Double?
    /// What the target still lacks (0 after a successful sync; see `Cycle.pending` for a failed one).
    var pendingSnapshots: Int?
    var pendingBytes: Int?
  }
  var lastCycleStart: Double?
  var lastCycleEnd: Double?
  var lastCycleSuccess = false
  var lastCycleError: String?
  var lastSnapshot: String?
  var lastSnapshotTime: Double?
  var backupBytesAdded = 0
  var repositorySizeBytes = 0
  var cycles = 0
  var cyclesSkipped = 0
  var targets: [TargetState] = []

  /// The Prometheus text exposition of this state (for `metrics.textfile` and the daemon's /metrics).
  func prometheus(now: Double) -> String {
    var out = ""
    func metric(_ name: String, _ help: String, _ type: String, _ samples: [(String, Double)]) {
      out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
      for (labels, v) in samples {
        out += name + (labels.isEmpty ? "" : "{\(labels)}") + " " + String(format: "%.3f", v) + "\n"
      }
    }
    func label(_ t: TargetState) -> String {
      "target=\"" + t.name.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
        + "\""
    }
    metric(
      "tidemark_replication_lag_seconds", "Now minus the capture time of the newest snapshot on the target.", "gauge",
      targets.compactMap { t in t.newestSnapshotTime.map { (label(t), max(0, now - $0)) } })
    metric(
      "tidemark_replicated_bytes_total", "Bytes copied to the target by replication.", "counter",
      targets.map { (label($0), Double($0.bytesCopiedTotal)) })
    metric(
      "tidemark_target_consecutive_failures", "Failed replications to the target since its last success.", "gauge",
      targets.map { (label($0), Double($0.consecutiveFailures)) })
    metric(
      "tidemark_target_pending_snapshots", "Snapshots on the DC not yet on the target (as of the last cycle).",
      "gauge", targets.compactMap { t in t.pendingSnapshots.map { (label(t), Double($0)) } })
    metric(
      "tidemark_target_pending_bytes", "Pack bytes on the DC not yet on the target (an upper bound).", "gauge",
      targets.compactMap { t in t.pendingBytes.map { (label(t), Double($0)) } })
    if let a = lastCycleStart, let b = lastCycleEnd {
      metric("tidemark_cycle_duration_seconds", "Duration of the last cycle.", "gauge", [("", b - a)])
    }
    metric("tidemark_cycle_success", "1 when the last cycle succeeded.", "gauge", [("", lastCycleSuccess ? 1 : 0)])
    metric("tidemark_cycles_total", "Cycles run.", "counter", [("", Double(cycles))])
    metric(
      "tidemark_cycles_skipped_total", "Cycles skipped because the previous one overran.", "counter",
      [("", Double(cyclesSkipped))])
    metric(
      "tidemark_backup_bytes_added", "Bytes the last backup added to the repository.", "gauge",
      [("", Double(backupBytesAdded))])
    if let t = lastSuccess {
      metric("tidemark_last_success_timestamp_seconds", "When the last successful cycle ended.", "gauge", [("", t)])
    }
    metric(
      "tidemark_repository_size_bytes", "Size of the DC repository's packs.", "gauge",
      [("", Double(repositorySizeBytes))])
    if let role = siteRole, let epoch = siteEpoch {
      metric(
        "tidemark_site_primary", "1 when this site is the primary (runs the cycles).", "gauge",
        [("", role == "primary" ? 1 : 0)])
      metric(
        "tidemark_site_epoch", "This site's fencing epoch (raised by every failover and promote).", "gauge",
        [("", Double(epoch))])
    }
    return out
  }

  var lastSuccess: Double?
  /// This site's role and fencing epoch as the last cycle read them (see Site); a fenced site keeps its role
  /// here until it is demoted.
  var siteRole: String?
  var siteEpoch: Int?

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

/// What replicating to one target gave.
struct TargetOutcome: Sendable {
  var index: Int
  var stats: ReplicaStats?
  var newest: Snapshot?
  var keyID: String?
  var error: String?
  var fullListing = false
  /// The target as the sync opened it (with the source's key, no key derivation), for its retention.
  var repository: Repository? = nil
}

/// The daemon's master keys by repository and password, in memory only: a cycle after the first opens the
/// repository with the known key (the config must still decrypt with it and the key file must still exist)
/// instead of deriving the password's key again (scrypt: a quarter to half a second per cycle). SIGHUP empties it.
final class KeyCache: Sendable {
  private let entries = Mutex<[String: Entry]>([:])
  struct Entry: Sendable {
    var key: MasterKey
    var keyID: KeyID?
  }

  func clear() { entries.withLock { $0 = [:] } }

  func open(_ global: GlobalOptions) async throws -> Repository {
    let tag = try global.repositoryLocation() + "\u{0}" + RawID.hash(try global.password()).hex
    if let e = entries.withLock({ $0[tag] }), let id = e.keyID {
      do {
        let backend = try global.backend()
        if try await backend.exists(Handle(.key, id.hex)) {
          return try await Repository.open(backend: backend, key: e.key, keyID: id, compression: global.compressionMode)
        }
      } catch {}
      entries.withLock { $0[tag] = nil }  // gone, re-created or unreachable: open the usual way
    }
    let repo = try await global.open()
    entries.withLock { $0[tag] = Entry(key: repo.key, keyID: repo.keyID) }
    return repo
  }
}

/// A target's backend and site role as read before the cycle.
struct TargetProbe: Sendable {
  var index: Int
  var name: String
  var backend: (any Backend)? = nil
  var state: SiteState? = nil
}

/// A standby's cycle: refused before anything is recorded (no state, no alerts).
struct StandbyRefusal: Error {
  var error: TidemarkError
}

/// One cycle: lock -> hooks -> backup -> replicate to every target (in parallel) -> retention -> state.
struct Cycle {
  let global: GlobalOptions
  let config: EngineConfig
  /// Standalone cycles release their locks on SIGINT/SIGTERM (and exit 130); under the daemon, its own handlers
  /// decide (it finishes the cycle, then stops), so the cycle leaves the signals alone.
  var guardSignals = true
  /// The daemon's keys: its cycles open the repository without deriving the password's key again.
  var keys: KeyCache? = nil
  /// Seconds between syncs that list every pack on both sides.
  static let fullListingEvery = 6 * 3600.0

  static func attempt<T: Sendable>(_ body: () async throws -> T) async -> Result<T, Error> {
    do {
      return .success(try await body())
    } catch {
      return .failure(error)
    }
  }

  /// `overlap`: `body` may start while its lock is confirmed; its repository writes must pass the
  /// repository's `writeGate` (see `GlobalOptions.withLock`).
  func withLock<T>(_ repo: Repository, exclusive: Bool, overlap: Bool = false, _ body: () async throws -> T)
    async throws -> T
  {
    if guardSignals { return try await global.withLock(repo, exclusive: exclusive, overlap: overlap, body) }
    let lock = try await RepositoryLock.acquire(
      repo, exclusive: exclusive, retry: try global.lockRetry, overlap: overlap)
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
      let repo: Repository
      if let keys { repo = try await keys.open(global) } else { repo = try await global.open() }
      // Locks an earlier cycle left when it was killed: restic would refuse the repository until `unlock`.
      _ = try? await RepositoryLock.removeDead(repo)
      // Roles (see Site): a standby runs no cycle; a site that a target outranks is fenced.
      let own = try await Site.load(repo)
      state.siteRole = (own.role ?? .primary).rawValue
      state.siteEpoch = own.epoch
      if own.role == .standby, let (m, h) = Site.fence(own: own, targets: []) {
        throw StandbyRefusal(error: TidemarkError(.general, m, hint: h))
      }
      let probes = await probeTargets(repo)
      if let (m, h) = Site.fence(own: own, targets: probes.compactMap { p in p.state.map { (p.name, $0) } }) {
        throw TidemarkError(.general, m, hint: h)
      }
      try runHooks(config.hooks.before, "before")
      try await repo.loadIndex()
      // Backup.
      let paths = config.sources.compactMap { s -> BytePath? in
        if case .path(let p, _) = s.kind { return BytePath(p) }
        return nil
      }
      var made: Snapshot? = nil
      var addedThisCycle = 0
      if !paths.isEmpty {
        var opts = BackupOptions()
        opts.paths = paths
        if let h = config.host { opts.host = h }
        opts.excludes = config.sources.flatMap { s -> [PathPattern] in
          if case .path(_, let ex) = s.kind { return ex.map(PathPattern.init) }
          return []
        }
        opts.programVersion = "tidemark \(Tidemark.version)"
        let result = try await withLock(repo, exclusive: false, overlap: true) {
          try await TidemarkOperations.Backup(repository: repo, options: opts).run()
        }
        made = result.snapshot
        made?.id = result.snapshotID
        state.lastSnapshot = result.snapshotID?.hex
        state.lastSnapshotTime = Double(result.snapshot.time.seconds)
        state.backupBytesAdded = result.saver.bytesStored
        addedThisCycle += result.saver.bytesStored
        say(
          "backup: snapshot \(result.snapshotID?.short ?? "-") (\(Out.bytes(Int64(result.saver.bytesStored))) added)")
        if !result.stats.errors.isEmpty { failures.append("backup: \(result.stats.errors.count) files unreadable") }
      }
      // Stream-like sources (command, postgres, sqlite, redis; see SourceStream): each is stored as one file,
      // `filename`, in a snapshot of its own. A source that fails leaves no snapshot: its output may be cut short.
      SourceStream.clean(tmp: dir + "/tmp")
      for source in config.sources {
        guard let filename = source.kind.filename else { continue }
        let stream: SourceStream
        do {
          stream = try await SourceStream.start(source.kind, tmp: dir + "/tmp")
        } catch let e as SourceFailure {
          failures.append(e.message)
          continue
        }
        var opts = BackupOptions()
        if let h = config.host { opts.host = h }
        opts.stdinFilename = filename
        opts.stdinFD = stream.fd
        opts.programVersion = "tidemark \(Tidemark.version)"
        let result: BackupResult
        do {
          result = try await withLock(repo, exclusive: false, overlap: true) {
            try await TidemarkOperations.Backup(repository: repo, options: opts).run()
          }
        } catch {
          await stream.cancel()
          throw error
        }
        if let problem = await stream.finish() {
          if let id = result.snapshotID { try? await repo.backend.remove(Handle(.snapshot, id.hex)) }
          failures.append("\(problem); its snapshot was discarded")
          continue
        }
        made = result.snapshot
        made?.id = result.snapshotID
        addedThisCycle += result.saver.bytesStored
        say("backup: \(filename) from \(stream.what): snapshot \(result.snapshotID?.short ?? "-")")
      }
      // Replicate to every target at once; a failing target does not stop the others.
      let password = try global.password()
      let targets = config.targets
      let previous = state.targets
      let madeSnapshot = made
      let outcomes = await withTaskGroup(of: TargetOutcome.self) { g in
        for (i, t) in targets.enumerated() {
          g.addTask {
            do {
              let known = previous.first { $0.name == t.name && $0.repository == t.repository }
              // Packs are compared in full now and then (that heals packs lost on the target); in between
              // only what the new index files name is looked up.
              let full = known?.lastFullSync.map { Date().timeIntervalSince1970 - $0 > Cycle.fullListingEvery } ?? true
              let (stats, newest, target) = try await replicate(
                repo, t, password, verifiedKey: known?.keyID.flatMap(KeyID.init(hex:)), newest: madeSnapshot,
                backend: probes[i].backend, fullListing: full)
              return TargetOutcome(
                index: i, stats: stats, newest: newest, keyID: target.keyID?.hex, error: nil, fullListing: full,
                repository: target)
            } catch {
              return TargetOutcome(index: i, stats: nil, newest: nil, keyID: nil, error: "\(error)")
            }
          }
        }
        var out: [TargetOutcome] = []
        for await r in g { out.append(r) }
        return out.sorted { $0.index < $1.index }
      }
      let now = Date().timeIntervalSince1970
      for outcome in outcomes {
        let t = targets[outcome.index]
        var ts =
          state.targets.first { $0.name == t.name } ?? EngineState.TargetState(name: t.name, repository: t.repository)
        ts.repository = t.repository
        if let stats = outcome.stats {
          let newest = outcome.newest
          ts.lastSuccess = now
          ts.lastError = nil
          ts.consecutiveFailures = 0
          ts.bytesCopiedLast = stats.bytesCopied
          ts.bytesCopiedTotal += stats.bytesCopied
          ts.keyID = outcome.keyID
          if outcome.fullListing { ts.lastFullSync = now }
          ts.pendingSnapshots = 0
          ts.pendingBytes = 0
          if let newest {
            ts.newestSnapshot = newest.id?.hex
            ts.newestSnapshotTime = Double(newest.time.seconds)
          }
          say("target \(t.name): copied \(Out.bytes(Int64(stats.bytesCopied))) (\(stats.snapshotsCopied) snapshots)")
        } else {
          let e = outcome.error ?? "unknown error"
          ts.lastError = e
          ts.consecutiveFailures += 1
          failures.append("target \(t.name): \(e)")
        }
        state.targets.removeAll { $0.name == t.name }
        state.targets.append(ts)
      }
      state.targets.removeAll { s in !config.targets.contains { $0.name == s.name } }
      // Retention on the DC and on every target that replicated, all at once: each waits out its own lock's
      // pause. Retention guard: the newest snapshot each target holds stays on the DC too (a target that has
      // been failing for a while still needs its newest snapshot as the last common one).
      let needed = Set(state.targets.compactMap { $0.newestSnapshot })
      let dcPolicy = config.retention
      async let dcForgot: Result<Int, Error>? =
        dcPolicy.isEmpty ? nil : Cycle.attempt { try await applyRetention(repo, dcPolicy, keeping: needed) }
      let targetPolicies = outcomes.compactMap { o -> (Int, EngineConfig.Retention, Repository?)? in
        let r = targets[o.index].retention ?? config.retention
        return o.stats == nil || r.isEmpty ? nil : (o.index, r, o.repository)
      }
      let targetForgot = await withTaskGroup(of: (Int, Result<Int, Error>).self) { g in
        for (i, r, opened) in targetPolicies {
          let t = targets[i]
          g.addTask {
            let result = await Cycle.attempt {
              // The target as the sync opened it (no key derivation), else opened the usual way.
              let target: Repository
              if let opened {
                target = opened
              } else {
                target = try await openTarget(t, password)
              }
              return try await applyRetention(target, r)
            }
            return (i, result)
          }
        }
        var out: [(Int, Result<Int, Error>)] = []
        for await x in g { out.append(x) }
        return out.sorted { $0.0 < $1.0 }
      }
      var dcError: Error? = nil
      switch await dcForgot {
      case .success(let n)?:
        if n > 0 { say("retention: forgot \(n) snapshots on \(config.repository)") }
      case .failure(let e as TidemarkError)? where e.kind == .locked:
        // Someone holds a lock (a `tidemark mount`, a restore, a check): forgetting waits for the next cycle.
        Out.err("tidemark: retention on \(config.repository) skipped this cycle: \(e)")
      case .failure(let e)?:
        dcError = e
      case nil:
        break
      }
      for (i, result) in targetForgot {
        let name = targets[i].name
        switch result {
        case .success(let n):
          if n > 0 { say("retention: forgot \(n) snapshots on target \(name)") }
        case .failure(let e as TidemarkError) where e.kind == .locked:
          Out.err("tidemark: retention on target \(name) skipped this cycle: \(e)")
        case .failure(let e):
          failures.append("retention on target \(name): \(e)")
        }
      }
      if let dcError { throw dcError }
      state.repositorySizeBytes = try await repo.backend.list(.pack).reduce(0) { $0 + $1.size }
      // What each failed target still lacks, against the DC as retention left it.
      let failed = outcomes.filter { $0.stats == nil }.map { targets[$0.index].name }
      if !failed.isEmpty {
        let dcSnapshots = try await repo.listSnapshots()
        for i in state.targets.indices where failed.contains(state.targets[i].name) {
          Cycle.pending(
            &state.targets[i], dcSnapshots: dcSnapshots, dcPackBytes: state.repositorySizeBytes,
            addedThisCycle: addedThisCycle)
        }
      }
      try runHooks(config.hooks.after, "after")
    } catch let e as StandbyRefusal {
      throw e.error
    } catch {
      failures.append("\(error)")
    }
    state.lastCycleEnd = Date().timeIntervalSince1970
    state.lastCycleSuccess = failures.isEmpty
    state.lastCycleError = failures.first
    if failures.isEmpty { state.lastSuccess = state.lastCycleEnd }
    try state.save(dir)
    if let path = config.metrics.textfile {
      do {
        try Array(EngineState.metricsText(dir, now: Date().timeIntervalSince1970).utf8).withUnsafeBytes {
          try Sys.writeAtomically(BytePath(path), $0, mode: 0o644)
        }
      } catch {
        Out.err("tidemark: cannot write metrics to \(path): \(error)")
      }
    }
    if let gateway = config.metrics.pushgateway {
      await pushMetrics(gateway, EngineState.metricsText(dir, now: Date().timeIntervalSince1970))
    }
    await raiseAlerts(state, failures: failures)
    if !failures.isEmpty {
      try? runHooks(config.hooks.onFailure, "on-failure")
      throw TidemarkError(
        .general, "cycle failed: \(failures.joined(separator: "; "))", hint: "`tidemark status` shows each target")
    }
    say(String(format: "cycle done in %.1f s", state.lastCycleEnd! - start))
  }

  /// alerts.command and alerts.webhook, on a failed cycle and on an RPO breach (a target whose newest snapshot is
  /// older than alerts.rpo). The command gets TIDEMARK_ALERT (failure|rpo) and TIDEMARK_ALERT_MESSAGE in its
  /// environment and the JSON body on stdin; the webhook gets the JSON body by POST. Delivery problems are
  /// reported on stderr and never fail the cycle.
  func raiseAlerts(_ state: EngineState, failures: [String]) async {
    guard config.alerts.command != nil || config.alerts.webhook != nil else { return }
    var alerts: [(kind: String, message: String, target: String?)] = failures.map { ("failure", $0, nil) }
    if let rpo = config.alerts.rpo {
      let limit = Double(rpo.components.seconds)
      let now = Date().timeIntervalSince1970
      for t in state.targets {
        let lag = t.newestSnapshotTime.map { now - $0 }
        if lag == nil || lag! > limit {
          let text = lag.map { "lag \(Int($0)) s exceeds the RPO of \(Int(limit)) s" } ?? "no snapshot replicated yet"
          alerts.append(("rpo", "target \(t.name): \(text)", t.name))
        }
      }
    }
    await deliver(alerts)
  }

  /// Sends each alert (kind `failure`, `rpo` or `drill`; message; target) to alerts.command and alerts.webhook.
  func deliver(_ alerts: [(kind: String, message: String, target: String?)]) async {
    guard config.alerts.command != nil || config.alerts.webhook != nil else { return }
    for a in alerts {
      var w = JSONWriter()
      w.raw("{\"alert\":\"\(a.kind)\",\"host\":")
      w.string(config.host ?? SystemInfo.hostname)
      w.raw(",\"repository\":")
      w.string(config.repository)
      if let t = a.target {
        w.raw(",\"target\":")
        w.string(t)
      }
      w.raw(",\"message\":")
      w.string(a.message)
      w.raw(",\"time\":\(Int(Date().timeIntervalSince1970))}")
      let body = w.out
      if let c = config.alerts.command {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", c]
        p.environment = ProcessInfo.processInfo.environment.merging(
          ["TIDEMARK_ALERT": a.kind, "TIDEMARK_ALERT_MESSAGE": a.message]) { $1 }
        let input = Pipe()
        p.standardInput = input
        do {
          try p.run()
          input.fileHandleForWriting.write(Data(body))
          try? input.fileHandleForWriting.close()
          p.waitUntilExit()
          if p.terminationStatus != 0 { Out.err("tidemark: alert command exited \(p.terminationStatus)") }
        } catch {
          Out.err("tidemark: cannot run the alert command: \(error)")
        }
      }
      if let hook = config.alerts.webhook, let url = URL(string: hook) {
        var req = URLRequest(url: url, timeoutInterval: 10)
        req.httpMethod = "POST"
        req.setValue("application/json", forHTTPHeaderField: "Content-Type")
        req.httpBody = Data(body)
        do {
          let (_, response) = try await URLSession.shared.data(for: req)
          if let h = response as? HTTPURLResponse, !(200..<300).contains(h.statusCode) {
            Out.err("tidemark: alert webhook answered HTTP \(h.statusCode)")
          }
        } catch {
          Out.err("tidemark: alert webhook \(hook) failed: \(error.localizedDescription)")
        }
      }
    }
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

  /// Each target's backend and site role, read in parallel before the cycle; an unreachable target has neither
  /// (replicating to it fails and is reported as usual).
  func probeTargets(_ repo: Repository) async -> [TargetProbe] {
    let key = repo.key
    return await withTaskGroup(of: TargetProbe.self) { g in
      for (i, t) in config.targets.enumerated() {
        g.addTask {
          var p = TargetProbe(index: i, name: t.name)
          do {
            let b = try targetBackend(t)
            p.backend = b
            p.state = try await Site.load(b, key: key)
          } catch {
            p.state = nil
          }
          return p
        }
      }
      var out: [TargetProbe] = []
      for await p in g { out.append(p) }
      return out.sorted { $0.index < $1.index }
    }
  }

  /// Creates the replica if needed and syncs it; returns the stats, the newest snapshot now on the target and the
  /// target as opened (with the source's master key).
  /// `newest`: the snapshot this cycle made; once the sync succeeded it is on the target (a successful sync
  /// copies every snapshot file), so the target's snapshots need not be loaded to know its newest.
  func replicate(
    _ repo: Repository, _ t: EngineConfig.Target, _ password: [UInt8], verifiedKey: KeyID?, newest made: Snapshot?,
    backend: (any Backend)? = nil, fullListing: Bool = true
  ) async throws -> (ReplicaStats, Snapshot?, Repository) {
    let target = try await Replica.create(
      source: repo, target: try backend ?? targetBackend(t), password: try targetPassword(t, password),
      kdf: GlobalOptions.keyDerivationParams, verifiedKey: verifiedKey)
    _ = try? await RepositoryLock.removeDead(target)  // as on the DC: a killed cycle's locks
    let stats: ReplicaStats
    do {
      stats = try await Replica.sync(source: repo, target: target, fullListing: fullListing)
    } catch let e as ReplicaError {
      throw e.error
    }
    let newest: Snapshot?
    if let made {
      newest = made
    } else {
      newest = try await target.listSnapshots().last
    }
    return (stats, newest, target)
  }

  /// Forgets by `r` (grouped by host and paths); the newest snapshot of each group always stays, and so do
  /// the snapshots in `needed` (each target's newest: a target may still need it as the last common snapshot).
  /// Returns how many snapshots were removed.
  func applyRetention(_ repo: Repository, _ r: EngineConfig.Retention, keeping needed: Set<String> = []) async throws
    -> Int
  {
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
    // The snapshots are listed and the policy applied while the lock is confirmed; the removals wait for it.
    return try await withLock(repo, exclusive: true, overlap: true) {
      var remove: [SnapshotID] = []
      for (_, snaps) in SnapshotGrouping.default.group(try await repo.listSnapshots()) {
        let newest = snaps.max { $0.time < $1.time }?.id
        remove += p.apply(to: snaps).remove.compactMap(\.id).filter { $0 != newest && !needed.contains($0.hex) }
      }
      try await repo.writeGate.pass()
      try await forEachConcurrently(remove, limit: 4) { id in try await repo.backend.remove(Handle(.snapshot, id.hex)) }
      return remove.count
    }
  }
}

struct StatusCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "status",
    abstract: "Replication status per target (or per host of a repository): newest snapshot and the RPO lag.",
    discussion: """
      Reads the state the replication cycles keep (TIDEMARK_STATE_DIR, default /var/lib/tidemark). lag_seconds is \
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
    let rpo = try rpoSeconds(config)
    if let location = repositoryMode {
      try await runOnRepository(location, rpo: rpo)
      return
    }
    if !hosts.isEmpty {
      throw TidemarkError(
        .usage, "--host needs a repository", hint: "pass -r/--repo (the DR repository) to report per host")
    }
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
      if let n = t.pendingSnapshots { w.raw(",\"pending_snapshots\":\(n)") }
      if let n = t.pendingBytes { w.raw(",\"pending_bytes\":\(n)") }
      w.raw(",\"status\":\"\(["OK", "WARN", "CRIT"][l])\"}")
      rows.append([
        t.name, t.newestSnapshot.map { String($0.prefix(8)) } ?? "-", lag.map { Out.duration($0) } ?? "never",
        t.pendingSnapshots.map { n in
          n == 0 && (t.pendingBytes ?? 0) == 0 ? "0" : "\(n) (\(Out.bytes(Int64(t.pendingBytes ?? 0))))"
        } ?? "-",
        ["OK", "WARN", "CRIT"][l], t.lastError ?? "",
      ])
    }
    w.raw("]")
    // The last drill: a failed one is a warning (the data may not be recoverable as it is).
    let drill = DrillState.load(EngineState.directory())
    if let d = drill {
      if !d.ok { level = max(level, 1) }
      let rto = d.repositories.map(\.rtoSeconds).max() ?? 0
      w.raw(",\"last_drill\":{\"ok\":\(d.ok),\"end\":\(Int(d.end)),\"rto_seconds\":\(String(format: "%.3f", rto))}")
    }
    if let role = state.siteRole, let epoch = state.siteEpoch { w.raw(",\"role\":\"\(role)\",\"epoch\":\(epoch)") }
    w.raw(",\"status\":\"\(["OK", "WARN", "CRIT"][level])\"}\n")
    if global.json {
      Out.raw(w.out)
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
      Out.line(
        "\(["OK", "WARN", "CRIT"][level]): \(state.cycles) cycles, last \(state.lastCycleSuccess ? "succeeded" : "failed")"
          + (state.lastCycleError.map { ": \($0)" } ?? ""))
    }
    if level > 0 { throw ExitCode(Int32(level)) }
  }
}

/// `tidemark daemon`: cycles aligned to the interval, one at a time; an overrun skips the ticks it covered (and
/// counts them); SIGHUP reloads the configuration before the next cycle; SIGTERM/SIGINT stop the daemon once the running
/// cycle (if any) has finished.
struct DaemonCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "daemon",
    abstract: "Run replication cycles every interval (the engine's long-running mode).",
    discussion: """
      Reads the configuration like `replicate --once` (--config, TIDEMARK_CONFIG, /etc/tidemark/tidemark.yaml). \
      Cycles start on multiples of `interval` (5m: at :00, :05, …) and never overlap; a cycle that overruns skips \
      the ticks it covered. Serves Prometheus metrics on `metrics.listen` (GET /metrics) and writes \
      `metrics.textfile` after each cycle. A second daemon for the same state directory refuses to start. \
      The repository key is derived from the password once and kept in memory, so cycles after the first skip \
      that work. SIGHUP: reload the configuration (and derive the key again). SIGUSR1: run a cycle now. \
      SIGTERM/SIGINT: stop after the running cycle.
      """)
  @OptionGroup var global: GlobalOptions

  func run() async throws {
    var g = global
    if g.config == nil && ProcessInfo.processInfo.environment["TIDEMARK_CONFIG"] == nil {
      g.config = EngineConfig.defaultPath
    }
    guard var config = try g.engineConfig() else { return }
    let dir = EngineState.directory()
    try Sys.mkdirAll(BytePath(dir), 0o755)
    let fd = open(dir + "/daemon.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
    guard fd >= 0, flock(fd, LOCK_EX | LOCK_NB) == 0 else {
      throw TidemarkError(
        .locked, "another tidemark daemon is running with the state directory \(dir)",
        hint: "stop it first (systemctl stop tidemark), or use another TIDEMARK_STATE_DIR")
    }
    defer { close(fd) }
    let signals = DaemonSignals()
    let keys = KeyCache()
    if let listen = config.metrics.listen { try MetricsServer.start(listen: listen, stateDir: dir) }
    Out.line("tidemark daemon: every \(config.interval), state in \(dir)")
    while true {
      let interval = Double(config.interval.components.seconds) + Double(config.interval.components.attoseconds) / 1e18
      let now = Date().timeIntervalSince1970
      let next = (now / interval).rounded(.down) * interval + interval
      while Date().timeIntervalSince1970 < next && !signals.stop.load(ordering: .relaxed)
        && !signals.runNow.exchange(false, ordering: .relaxed)
      {
        try? await Task.sleep(for: .milliseconds(20))
      }
      if signals.stop.load(ordering: .relaxed) { break }
      if signals.reload.exchange(false, ordering: .relaxed) {
        do {
          config = try EngineConfig.load(g.config ?? EngineConfig.defaultPath)
          keys.clear()
          Out.line("tidemark daemon: configuration reloaded")
        } catch {
          Out.err("tidemark daemon: keeping the old configuration: \(error)")
        }
      }
      do {
        try await Cycle(global: g, config: config, guardSignals: false, keys: keys).run()
      } catch {
        Out.err("tidemark daemon: \(error)")
      }
      // A drill when its schedule says so, and the day's share of the rolling data check.
      if !signals.stop.load(ordering: .relaxed) {
        await Drill(global: g, config: config, guardSignals: false).scheduled(stateDir: dir)
      }
      // Idle until the next tick: give the cycle's buffers back.
      Sys.releaseFreeMemory()
      // Ticks the cycle overran are skipped, not queued.
      let end = Date().timeIntervalSince1970
      let missed = max(0, Int(((end - next) / interval).rounded(.down)))
      if missed > 0 {
        var st = EngineState.load(dir)
        st.cyclesSkipped += missed
        try? st.save(dir)
        Out.err("tidemark daemon: the cycle overran; skipped \(missed) tick\(missed == 1 ? "" : "s")")
      }
      if signals.stop.load(ordering: .relaxed) { break }
    }
    Out.line("tidemark daemon: stopped")
  }
}

/// SIGHUP/SIGTERM/SIGINT as flags the daemon loop reads (the sources live as long as this object).
final class DaemonSignals: @unchecked Sendable {
  let stop = Atomic(false)
  let reload = Atomic(false)
  let runNow = Atomic(false)
  private var sources: [any DispatchSourceSignal] = []  // set in init only

  init() {
    for sig in [SIGHUP, SIGTERM, SIGINT, SIGUSR1] {
      signal(sig, SIG_IGN)
      let src = DispatchSource.makeSignalSource(signal: sig, queue: .global())
      src.setEventHandler { [weak self] in
        guard let self else { return }
        if sig == SIGHUP {
          self.reload.store(true, ordering: .relaxed)
        } else if sig == SIGUSR1 {
          self.runNow.store(true, ordering: .relaxed)
        } else {
          self.stop.store(true, ordering: .relaxed)
        }
      }
      src.resume()
      sources.append(src)
    }
  }

}

/// A minimal HTTP endpoint for Prometheus: GET /metrics answers the state file's metrics; anything else 404.
/// One blocking thread (never the cooperative pool); one request per connection.
enum MetricsServer {
  static func start(listen: String, stateDir: String) throws {
    guard let colon = listen.lastIndex(of: ":"), let port = UInt16(listen[listen.index(after: colon)...]) else {
      throw TidemarkError(.usage, "metrics.listen \(listen) is not host:port")
    }
    let host = String(listen[..<colon])
    let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard s >= 0 else { throw TidemarkError(.general, "metrics: socket failed") }
    var one: Int32 = 1
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = port.bigEndian
    guard inet_pton(AF_INET, host.isEmpty ? "0.0.0.0" : host, &addr.sin_addr) == 1 else {
      close(s)
      throw TidemarkError(.usage, "metrics.listen: \(host) is not an IPv4 address")
    }
    let bound = withUnsafePointer(to: &addr) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard bound == 0, Glibc.listen(s, 16) == 0 else {
      close(s)
      throw TidemarkError(.general, "metrics: cannot listen on \(listen): \(String(cString: strerror(errno)))")
    }
    Thread.detachNewThread {
      while true {
        let c = accept(s, nil, nil)
        if c < 0 { continue }
        var buf = [UInt8](repeating: 0, count: 4096)
        let n = read(c, &buf, buf.count)
        let request = n > 0 ? String(decoding: buf[0..<n], as: UTF8.self) : ""
        let response: String
        if request.hasPrefix("GET /metrics") {
          let body = EngineState.metricsText(stateDir, now: Date().timeIntervalSince1970)
          response =
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n"
            + body
        } else {
          response = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        }
        Out.write(fd: c, Array(response.utf8))
        close(c)
      }
    }
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
    let units = timer ? ["tidemark-replicate.service", "tidemark-replicate.timer"] : ["tidemark.service"]
    switch action {
    case "install":
      let parsed = try EngineConfig.load(config)
      let binary = URL(fileURLWithPath: CommandLine.arguments[0]).standardizedFileURL.path
      let path = config.hasPrefix("/") ? config : FileManager.default.currentDirectoryPath + "/" + config
      let minutes = Int(parsed.interval.components.seconds / 60)
      let calendar = minutes >= 1 && minutes <= 60 && 60 % minutes == 0 ? "*:0/\(minutes)" : "*:0/5"
      let common = "Wants=network-online.target\nAfter=network-online.target\n"
      let env = "Environment=TIDEMARK_STATE_DIR=\(EngineState.directory())\n"
      var files: [(String, String)] = []
      if timer {
        files.append(
          (
            "tidemark-replicate.service",
            "[Unit]\nDescription=tidemark replication cycle\n\(common)\n[Service]\nType=oneshot\n"
              + "ExecStart=\(binary) replicate --once --config \(path)\n\(env)"
          ))
        files.append(
          (
            "tidemark-replicate.timer",
            "[Unit]\nDescription=tidemark replication cycle (\(calendar))\n\n[Timer]\nOnCalendar=\(calendar)\n"
              + "Persistent=true\nAccuracySec=1s\n\n[Install]\nWantedBy=timers.target\n"
          ))
      } else {
        files.append(
          (
            "tidemark.service",
            "[Unit]\nDescription=tidemark replication daemon\n\(common)\n[Service]\nType=simple\n"
              + "ExecStart=\(binary) daemon --config \(path)\nExecReload=/bin/kill -HUP $MAINPID\n"
              + "TimeoutStopSec=30min\nRestart=on-failure\nRestartSec=30s\n\(env)\n[Install]\nWantedBy=multi-user.target\n"
          ))
      }
      try Sys.mkdirAll(BytePath(unitDir), 0o755)
      for (name, text) in files {
        try Array(text.utf8).withUnsafeBytes {
          try Sys.writeAtomically(BytePath(unitDir + "/" + name), $0, mode: 0o644)
        }
        if !global.quiet { Out.line("wrote \(unitDir)/\(name)") }
      }
      if !noEnable {
        try systemctl(["daemon-reload"])
        try systemctl(["enable", "--now", timer ? "tidemark-replicate.timer" : "tidemark.service"])
      }
    case "remove":
      if !noEnable { try? systemctl(["disable", "--now", timer ? "tidemark-replicate.timer" : "tidemark.service"]) }
      for name in units where FileManager.default.fileExists(atPath: unitDir + "/" + name) {
        try FileManager.default.removeItem(atPath: unitDir + "/" + name)
        if !global.quiet { Out.line("removed \(unitDir)/\(name)") }
      }
      if !noEnable { try? systemctl(["daemon-reload"]) }
    default:
      throw TidemarkError(.usage, "unknown action \(action)", hint: "use install or remove")
    }
  }

  func systemctl(_ args: [String]) throws {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/systemctl")
    p.arguments = args
    do { try p.run() } catch {
      throw TidemarkError(
        .general, "cannot run systemctl: \(error)", hint: "install the units with --no-enable and enable them by hand")
    }
    p.waitUntilExit()
    guard p.terminationStatus == 0 else {
      throw TidemarkError(.general, "systemctl \(args.joined(separator: " ")) failed (exit \(p.terminationStatus))")
    }
  }
}
