// One replication cycle, as named steps: lock → fence → hooks → back up the sources → replicate to every target
// (in parallel) → inspect (snapshot guard, tripwire) → retain → prune and consolidate → record (state, metrics,
// alerts). `replicate --once` runs one; the daemon runs one per tick. Every lock a step takes is released when the
// step ends, fails or is cancelled (an interrupt cancels the cycle's task tree; see RepositoryLock and HeldLocks).
import Foundation
import Logging
import TidemarkBackends
import TidemarkCore
import TidemarkOperations
import TidemarkSystem

/// A standby's cycle: refused before anything is recorded (no state, no alerts).
struct StandbyRefusal: Error {
  var error: TidemarkError
}

public struct Cycle: Sendable {
  public let config: EngineConfig
  /// The DC repository.
  public let access: RepositoryAccess
  public let stateDir: StateDirectory
  public var logger: Logger
  /// The daemon's keys: its cycles open the repository without deriving the password's key again.
  public var keys: KeyCache? = nil
  public var clock: any WallClock = SystemWallClock()
  /// The daemon's change journal over the path sources: backups read only what changed (see SourceJournal).
  public var journal: SourceJournal? = nil
  /// The daemon's DC index between cycles (see IndexCache).
  public var indexCache: IndexCache? = nil
  /// Seconds between syncs that list every pack on both sides.
  public static let fullListingEvery = 6 * 3600.0

  public init(config: EngineConfig, access: RepositoryAccess, stateDir: StateDirectory, logger: Logger) {
    self.config = config
    self.access = access
    self.stateDir = stateDir
    self.logger = logger
  }

  /// What one cycle is working with as it goes from step to step.
  struct Run {
    var state: EngineState
    var failures: [String] = []
    var made: Snapshot? = nil
    var addedThisCycle = 0
  }

  /// Runs one cycle. A failed cycle is recorded (state, metrics, alerts, on-failure hooks) and then thrown.
  public func run() async throws {
    try stateDir.prepare()
    let lock = try stateDir.lockCycle()
    defer { lock.release() }
    var run = Run(state: stateDir.loadState())
    let start = clock.now()
    run.state.lastCycleStart = start
    run.state.cycles += 1
    do {
      let repo: Repository
      if let keys { repo = try await keys.open(access) } else { repo = try await access.open() }
      // Locks an earlier cycle left when it was killed: restic would refuse the repository until `unlock`.
      _ = try? await RepositoryLock.removeDead(repo)
      let probes = try await fence(repo, &run)
      try await Hooks.run(config.hooks.before, phase: "before")
      if let indexCache {
        try await indexCache.load(repo, location: access.location)
      } else {
        try await repo.loadIndex()
      }
      try await backUpPaths(repo, &run)
      try await backUpStreams(repo, &run)
      let outcomes = await replicate(repo, probes: probes, &run)
      let implausible = try await inspect(repo, &run)
      let opened = try await retain(repo, outcomes: outcomes, ignoring: implausible, &run)
      try await maintain(repo, targets: opened, &run)
      try await recordPending(repo, outcomes: outcomes, &run)
      try await Hooks.run(config.hooks.after, phase: "after")
    } catch let e as StandbyRefusal {
      throw e.error
    } catch {
      run.failures.append("\(error)")
    }
    try await record(&run)
    if run.failures.isEmpty { indexCache?.keep() } else { indexCache?.drop() }
    if !run.failures.isEmpty {
      try? await Hooks.run(config.hooks.onFailure, phase: "on-failure")
      throw TidemarkError(
        .general, "cycle failed: \(run.failures.joined(separator: "; "))",
        hint: "`tidemark status` shows each target")
    }
    logger.info("\(String(format: "cycle done in %.1f s", (run.state.lastCycleEnd ?? start) - start))")
  }

  // MARK: Steps

  /// Roles (see Site): a standby runs no cycle; a site that a target outranks is fenced. Returns each target's
  /// backend and role as read.
  func fence(_ repo: Repository, _ run: inout Run) async throws -> [TargetProbe] {
    let own = try await Site.load(repo)
    run.state.siteRole = (own.role ?? .primary).rawValue
    run.state.siteEpoch = own.epoch
    // A keeper (no sources, no targets: the DR host looking after its own copy) takes no backup and replicates
    // nothing, so there is nothing to fence: it runs on a standby's repository too.
    if config.sources.isEmpty && config.targets.isEmpty { return [] }
    if own.role == .standby, let (m, h) = Site.fence(own: own, targets: []) {
      throw StandbyRefusal(error: TidemarkError(.general, m, hint: h))
    }
    let probes = await probeTargets(repo)
    if let (m, h) = Site.fence(own: own, targets: probes.compactMap { p in p.state.map { (p.name, $0) } }) {
      throw TidemarkError(.general, m, hint: h)
    }
    return probes
  }

  /// The path sources, together in one snapshot.
  func backUpPaths(_ repo: Repository, _ run: inout Run) async throws {
    let paths = config.sourcePaths.map { BytePath($0) }
    guard !paths.isEmpty else { return }
    var opts = BackupOptions()
    opts.paths = paths
    if let h = config.host { opts.host = h }
    opts.excludes = config.sources.flatMap { s -> [PathPattern] in
      if case .path(_, let ex) = s.kind { return ex.map(PathPattern.init) }
      return []
    }
    opts.programVersion = "tidemark \(TidemarkVersion.string)"
    let start = clock.now()
    let journal = self.journal
    let plan = try await journal?.plan(now: start, fullScan: config.fullScan.inSeconds)
    if let plan, let changes = plan.changes {
      opts.changes = changes
      opts.parent = plan.parent
      opts.treeMayHoldHardLinks = journal?.hardLinks ?? true
    }
    let result: BackupResult
    var fallback = plan?.why
    do {
      result = try await access.withLock(repo, exclusive: false, overlap: true) { [opts] in
        do {
          return try await TidemarkOperations.Backup(repository: repo, options: opts).run()
        } catch let doubt as JournalDoubt {
          fallback = doubt.reason
          var walk = opts
          walk.changes = nil
          walk.parent = nil
          return try await TidemarkOperations.Backup(repository: repo, options: walk).run()
        }
      }
    } catch {
      journal?.failed()
      throw error
    }
    journal?.finished(result, start: start, fallback: fallback)
    if result.fromJournal {
      logger.info(
        "backup from the change journal: \(opts.changes?.dirty.count ?? 0) directories read again")
    } else if journal != nil, let fallback {
      logger.info("backup walked the sources in full: \(fallback)")
    }
    run.made = result.snapshot
    run.made?.id = result.snapshotID
    run.state.lastSnapshot = result.snapshotID?.hex
    run.state.lastSnapshotTime = Double(result.snapshot.time.seconds)
    run.state.backupBytesAdded = result.saver.bytesStored
    run.addedThisCycle += result.saver.bytesStored
    logger.info(
      "backup: snapshot \(result.snapshotID?.short ?? "-") (\(Human.bytes(Int64(result.saver.bytesStored))) added)")
    if !result.stats.errors.isEmpty { run.failures.append("backup: \(result.stats.errors.count) files unreadable") }
  }

  /// Stream-like sources (command, postgres, sqlite, redis; see SourceStream): each is stored as one file,
  /// `filename`, in a snapshot of its own. A source that fails leaves no snapshot: its output may be cut short.
  func backUpStreams(_ repo: Repository, _ run: inout Run) async throws {
    SourceStream.clean(tmp: stateDir.tmp)
    for source in config.sources {
      guard let filename = source.kind.filename else { continue }
      let stream: SourceStream
      do {
        stream = try await SourceStream.start(source.kind, tmp: stateDir.tmp)
      } catch let e as SourceFailure {
        run.failures.append(e.message)
        continue
      }
      var opts = BackupOptions()
      if let h = config.host { opts.host = h }
      opts.stdinFilename = filename
      opts.stdinFD = stream.fd
      opts.programVersion = "tidemark \(TidemarkVersion.string)"
      let result: BackupResult
      do {
        result = try await access.withLock(repo, exclusive: false, overlap: true) {
          try await TidemarkOperations.Backup(repository: repo, options: opts).run()
        }
      } catch {
        await stream.cancel()
        throw error
      }
      if let problem = await stream.finish() {
        if let id = result.snapshotID { try? await repo.backend.remove(Handle(.snapshot, id.hex)) }
        run.failures.append("\(problem); its snapshot was discarded")
        continue
      }
      run.made = result.snapshot
      run.made?.id = result.snapshotID
      run.addedThisCycle += result.saver.bytesStored
      logger.info("backup: \(filename) from \(stream.what): snapshot \(result.snapshotID?.short ?? "-")")
    }
  }

  /// Replicates to every target at once; a failing target does not stop the others. Records each outcome in
  /// the state.
  func replicate(_ repo: Repository, probes: [TargetProbe], _ run: inout Run) async -> [TargetOutcome] {
    let targets = config.targets
    let previous = run.state.targets
    let made = run.made
    let now = clock.now()
    let password: [UInt8]
    do {
      password = try await access.password()
    } catch {
      run.failures.append("\(error)")
      return []
    }
    let outcomes = await withTaskGroup(of: TargetOutcome.self) { g in
      for (i, t) in targets.enumerated() {
        g.addTask {
          do {
            let known = previous.first { $0.name == t.name && $0.repository == t.repository }
            // Packs are compared in full now and then (that heals packs lost on the target); in between
            // only what the new index files name is looked up.
            let full = known?.lastFullSync.map { now - $0 > Cycle.fullListingEvery } ?? true
            let (stats, newest, target) = try await replicate(
              repo, t, password, verifiedKey: known?.keyID.flatMap(KeyID.init(hex:)), newest: made,
              backend: probes.first { $0.index == i }?.backend, fullListing: full)
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
    let end = clock.now()
    for outcome in outcomes {
      let t = targets[outcome.index]
      var ts =
        run.state.targets.first { $0.name == t.name } ?? EngineState.TargetState(name: t.name, repository: t.repository)
      ts.repository = t.repository
      if let stats = outcome.stats {
        ts.lastSuccess = end
        ts.lastError = nil
        ts.consecutiveFailures = 0
        ts.bytesCopiedLast = stats.bytesCopied
        ts.bytesCopiedTotal += stats.bytesCopied
        ts.keyID = outcome.keyID
        if outcome.fullListing { ts.lastFullSync = end }
        ts.pendingSnapshots = 0
        ts.pendingBytes = 0
        if let newest = outcome.newest {
          ts.newestSnapshot = newest.id?.hex
          ts.newestSnapshotTime = Double(newest.time.seconds)
        }
        logger.info(
          "target \(t.name): copied \(Human.bytes(Int64(stats.bytesCopied))) (\(stats.snapshotsCopied) snapshots)")
      } else {
        let e = outcome.error ?? "unknown error"
        ts.lastError = e
        ts.consecutiveFailures += 1
        run.failures.append("target \(t.name): \(e)")
      }
      run.state.targets.removeAll { $0.name == t.name }
      run.state.targets.append(ts)
    }
    run.state.targets.removeAll { s in !config.targets.contains { $0.name == s.name } }
    return outcomes
  }

  /// What each failed target still lacks, against the DC as retention left it; the DC's size.
  func recordPending(_ repo: Repository, outcomes: [TargetOutcome], _ run: inout Run) async throws {
    run.state.repositorySizeBytes = try await repo.backend.list(.pack).reduce(0) { $0 + $1.size }
    run.state.indexFiles = try await repo.backend.list(.index).count
    let failed = outcomes.filter { $0.stats == nil }.map { config.targets[$0.index].name }
    guard !failed.isEmpty else { return }
    let dcSnapshots = try await repo.listSnapshots()
    for i in run.state.targets.indices where failed.contains(run.state.targets[i].name) {
      Cycle.pending(
        &run.state.targets[i], dcSnapshots: dcSnapshots, dcPackBytes: run.state.repositorySizeBytes,
        addedThisCycle: run.addedThisCycle)
    }
  }

  /// Saves the state, writes the metrics textfile, pushes to the gateway and raises alerts.
  func record(_ run: inout Run) async throws {
    run.state.lastCycleEnd = clock.now()
    run.state.lastCycleSuccess = run.failures.isEmpty
    run.state.lastCycleError = run.failures.first
    if run.failures.isEmpty { run.state.lastSuccess = run.state.lastCycleEnd }
    if let journal { run.state.journal = journal.report }
    try stateDir.save(run.state)
    let alerts = Alerts(config: config, logger: logger)
    await alerts.publishMetrics(stateDir.metricsText(now: clock.now()))
    await alerts.raise(for: run.state, failures: run.failures, now: clock.now())
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

/// A target's backend and site role as read before the cycle.
struct TargetProbe: Sendable {
  var index: Int
  var name: String
  var backend: (any Backend)? = nil
  var state: SiteState? = nil
}

/// Unix seconds now; injected so that engine logic is tested without waiting on the wall clock.
public protocol WallClock: Sendable {
  func now() -> Double
}

public struct SystemWallClock: WallClock {
  public init() {}
  public func now() -> Double { Date().timeIntervalSince1970 }
}

extension EngineConfig {
  /// The `path` sources, in order.
  public var sourcePaths: [String] {
    sources.compactMap { s in
      if case .path(let p, _) = s.kind { return p }
      return nil
    }
  }
}
