// The cycle's maintenance half: retention (forget by policy) on the DC and on every target that replicated, then,
// when `prune.schedule` says so, prune on each of them, and at every cycle the consolidation of index files once
// more than `prune.max-index-files` accumulate. Each side takes its exclusive lock on its own; a side that
// someone else holds a lock on (a mount, a restore, a check) is skipped this cycle with a warning and done by a
// later one: retention and prune never wait for, or break, another process's lock.
import Foundation
import TidemarkCore
import TidemarkOperations

extension Cycle {
  /// One side of the cycle: the DC (`target == nil`) or a target, as opened this cycle.
  struct Side: Sendable {
    var name: String
    var target: Int?
    var repository: Repository
  }

  /// The snapshot guard and the tripwire on this site's own repository (see SnapshotGuard and Tripwire): the
  /// implausible snapshots are recorded in the state, fail the cycle (which raises the alert) and are returned,
  /// for retention to leave out; every new snapshot's change profile is judged against the one before it.
  func inspect(_ repo: Repository, _ run: inout Run) async throws -> Set<String> {
    let snapshots = try await repo.listSnapshots()
    let now = clock.now()
    let skew = Double(config.clockSkew.components.seconds)
    let interval = Double((config.snapshotInterval ?? config.interval).components.seconds)
    var seen = run.state.snapshotsFirstSeen ?? [:]
    let accepted = Set(run.state.acceptedSnapshots ?? [])
    let found = SnapshotGuard.check(
      snapshots, firstSeen: &seen, flagged: Set(run.state.implausibleSnapshots ?? []), accepted: accepted, now: now,
      skew: skew, previousCheck: run.state.snapshotsChecked, interval: interval)
    run.state.snapshotsFirstSeen = seen
    run.state.snapshotsChecked = now
    run.state.implausibleSnapshots = found.implausible
    run.state.acceptedSnapshots = accepted.filter { seen[$0] != nil }.sorted()
    if !found.implausible.isEmpty {
      let ids = found.implausible.map { String($0.prefix(8)) }.joined(separator: ", ")
      logger.error("\(found.implausible.count) snapshots with implausible times: \(ids)")
      run.failures.append(
        "\(found.implausible.count) snapshots are dated implausibly (later than this site first saw them, or slipped "
          + "into their host's past; forged times?): \(ids); they are kept and retention does not count them; look "
          + "at them, then remove them with `tidemark forget ID`, or accept them with `tidemark tripwire ack`")
    }
    for (host, n) in found.bursts.sorted(by: { $0.key < $1.key }) {
      run.failures.append(
        "\(n) new snapshots of host \(host.isEmpty ? "(none)" : host) are dated within the last cycle, far more than "
          + "one per \(Int(interval)) s (`snapshot-interval`): who is writing them?")
    }
    try await trip(repo, snapshots: snapshots, new: found.new, implausible: Set(found.implausible), &run)
    return Set(found.implausible)
  }

  /// The tripwire: each new snapshot (the newest ten at most) against its predecessor.
  func trip(
    _ repo: Repository, snapshots: [Snapshot], new: [String], implausible: Set<String>, _ run: inout Run
  ) async throws {
    guard config.tripwire.enabled else { return }
    var byID: [String: Snapshot] = [:]
    for s in snapshots { if let id = s.id?.hex { byID[id] = s } }
    for id in new.suffix(10) where !implausible.contains(id) {
      guard let s = byID[id], let before = Self.predecessor(of: s, in: snapshots, excluding: implausible) else {
        continue
      }
      let profile = try await ChangeProfile.compare(repo, before: before, after: s)
      var history = run.state.changeHistory ?? []
      if let evidence = Tripwire.judge(profile, history: history, config: config.tripwire) {
        let line =
          "tripwire: snapshot \(id.prefix(8)) of \(s.hostname): \(evidence); it is stored and replicated, and "
          + "retention and prune are frozen on every side until `tidemark tripwire ack --config \(config.file)`"
        logger.critical("\(line)")
        run.failures.append(line)
        if run.state.tripwire == nil {
          run.state.tripwire = TripwireFreeze(since: clock.now(), snapshot: id, evidence: evidence)
        }
      } else {
        history.append(profile.changedShare)
        run.state.changeHistory = history.suffix(Tripwire.historyLength)
      }
    }
  }

  /// The snapshot `s` follows: its parent when listed, else the newest earlier one of its host and paths.
  static func predecessor(of s: Snapshot, in all: [Snapshot], excluding: Set<String>) -> Snapshot? {
    let usable = all.filter { $0.id != nil && !excluding.contains($0.id!.hex) && $0.id != s.id }
    if let p = s.parent, let parent = usable.first(where: { $0.id == p }) { return parent }
    let paths = s.paths.sorted()
    return
      usable
      .filter { $0.hostname == s.hostname && $0.paths.sorted() == paths && $0.time.seconds <= s.time.seconds }
      .max { ($0.time.seconds, $0.time.nanoseconds) < ($1.time.seconds, $1.time.nanoseconds) }
  }

  /// Retention guard: the newest snapshot each target holds stays on the DC too (a target that has been failing
  /// for a while still needs its newest snapshot as the last common one). Returns the sides as opened, for
  /// prune.
  func retain(
    _ repo: Repository, outcomes: [TargetOutcome], ignoring forged: Set<String>, _ run: inout Run
  ) async throws -> [Side] {
    let needed = Set(run.state.targets.compactMap { $0.newestSnapshot })
    var sides = [Side(name: config.repository, target: nil, repository: repo)]
    var policies: [Int: EngineConfig.Retention] = [:]
    for o in outcomes where o.stats != nil {
      guard let target = o.repository else { continue }
      // A target that refuses deletes (an append-only server) keeps everything the DC sends: its retention,
      // prune and index consolidation run on the DR host (a keeper). An own `retention:` for it is a mistake.
      if (try? await target.backend.refusesDeletes()) == true {
        if config.targets[o.index].retention != nil {
          run.failures.append(
            "target \(config.targets[o.index].name): `retention:` is set, but its server refuses deletes "
              + "(append-only): retention for it belongs to the DR side (a keeper there); remove `retention:` from "
              + "the target")
        }
        continue
      }
      sides.append(Side(name: "target \(config.targets[o.index].name)", target: o.index, repository: target))
      policies[o.index] = config.targets[o.index].retention ?? config.retention
    }
    if let freeze = run.state.tripwire {
      logger.warning(
        "retention is frozen by the tripwire (snapshot \(freeze.snapshot.prefix(8)): \(freeze.evidence)) until `tidemark tripwire ack`"
      )
      return sides
    }
    // What each side's retention is given, decided before any task starts; each task hands back its own job
    // with the result, so nothing is looked up by position afterwards.
    struct Job: Sendable {
      var side: Side
      var policy: EngineConfig.Retention
      var keeping: Set<String>
      var ignoring: Set<String>
    }
    let jobs = sides.map { side in
      Job(
        side: side, policy: side.target.map { policies[$0] ?? config.retention } ?? config.retention,
        keeping: side.target == nil ? needed : [], ignoring: side.target == nil ? forged : [])
    }
    let retry = access.lockRetry
    let results = await withTaskGroup(of: (Job, Result<Int, Error>).self) { g in
      for job in jobs where !job.policy.isEmpty {
        g.addTask {
          do {
            let n = try await Retention.apply(
              job.side.repository, job.policy, keeping: job.keeping, ignoring: job.ignoring, retry: retry)
            return (job, .success(n))
          } catch {
            return (job, .failure(error))
          }
        }
      }
      var out: [(Job, Result<Int, Error>)] = []
      for await x in g { out.append(x) }
      return out
    }
    for (job, result) in results.sorted(by: { ($0.0.side.target ?? -1) < ($1.0.side.target ?? -1) }) {
      let side = job.side
      switch result {
      case .success(let n):
        if n > 0 { logger.info("retention: forgot \(n) snapshots on \(side.name)") }
      case .failure(let e as TidemarkError) where e.kind == .locked:
        logger.warning("retention on \(side.name) skipped this cycle: \(e)")
      case .failure(let e):
        if side.target == nil { throw e }
        run.failures.append("retention on \(side.name): \(e)")
      }
    }
    return sides
  }

  /// Prune (when due) and index consolidation on every side. Each side's schedule counts from its own last
  /// prune, so a side that was skipped (someone held a lock) is pruned at the next cycle, not a period later.
  func maintain(_ repo: Repository, targets sides: [Side], _ run: inout Run) async throws {
    if run.state.tripwire != nil {
      logger.warning("prune and index consolidation are frozen by the tripwire until `tidemark tripwire ack`")
      return
    }
    let now = clock.now()
    let state = run.state
    let schedule = config.prune.schedule
    func lastPrune(_ side: Side) -> Double? {
      guard let t = side.target else { return state.lastPrune }
      return state.targets.first { $0.name == config.targets[t].name }?.lastPrune
    }
    let due = sides.map { schedule?.isDue(last: lastPrune($0), now: now) ?? false }
    let pruneDue = due.first ?? false
    let maxIndex = config.prune.maxIndexFiles
    var options = PruneOptions()
    options.maxUnused = try PruneOptions.parseMaxUnused(config.prune.maxUnused)
    if let m = config.prune.maxRepackSize { options.maxRepackBytes = m }
    let opts = options
    let results = await withTaskGroup(of: (Int, Result<SideMaintenance, Error>).self) { g in
      for (k, side) in sides.enumerated() {
        g.addTask {
          do {
            return (
              k,
              .success(
                try await Cycle.maintain(
                  side.repository, prune: due[k] ? opts : nil, maxIndexFiles: maxIndex, retry: access.lockRetry))
            )
          } catch {
            return (k, .failure(error))
          }
        }
      }
      var out: [(Int, Result<SideMaintenance, Error>)] = []
      for await x in g { out.append(x) }
      return out.sorted { $0.0 < $1.0 }
    }
    var pruneFailed = false
    for (k, result) in results {
      let side = sides[k]
      switch result {
      case .success(let m):
        if let retained = m.retained { logger.info("prune on \(side.name): \(retained)") }
        if let freed = m.freedBytes {
          logger.info("prune: freed \(Human.bytes(Int64(freed))) on \(side.name)")
          run.state.prunedBytesTotal += freed
          if let t = side.target, let i = run.state.targets.firstIndex(where: { $0.name == config.targets[t].name }) {
            run.state.targets[i].lastPrune = now
            run.state.targets[i].lastPruneFreedBytes = freed
          } else if side.target == nil {
            run.state.lastPruneFreedBytes = freed
          }
        }
      case .failure(let e as TidemarkError) where e.kind == .locked:
        logger.warning("prune on \(side.name) skipped this cycle: \(e)")
        if side.target == nil { pruneFailed = true }
      case .failure(let e):
        run.failures.append("prune on \(side.name): \(e)")
        if side.target == nil { pruneFailed = true }
      }
    }
    if pruneDue && !pruneFailed {
      run.state.lastPrune = now
      run.state.lastPruneDuration = clock.now() - now
    }
  }

  struct SideMaintenance: Sendable {
    var freedBytes: Int?
    /// What prune left in place because the storage keeps it until a date (S3 Object Lock), in words.
    var retained: String?
  }

  /// Under one exclusive lock: prune (when `prune` is given), then consolidation of the index files.
  static func maintain(_ repo: Repository, prune: PruneOptions?, maxIndexFiles: Int, retry: Duration) async throws
    -> SideMaintenance
  {
    let indexCount = try await repo.backend.list(.index).count
    guard prune != nil || indexCount > maxIndexFiles else { return SideMaintenance() }
    return try await RepositoryAccess.withLock(repo, exclusive: true, retry: retry) {
      var out = SideMaintenance()
      if let prune {
        let index = try await StoredIndex.load(repo)
        for f in index.files { repo.index.add(f.file) }
        let plan = try await Prune.plan(repo, index: index, options: prune, ignoring: []) { _ in }
        let stats = try await Prune.execute(repo, index: index, plan: plan) { _ in }
        out.freedBytes = stats.prunedBytes
        out.retained = stats.retained.summary
      }
      _ = try await IndexConsolidation.run(repo, maxFiles: maxIndexFiles)
      return out
    }
  }
}
