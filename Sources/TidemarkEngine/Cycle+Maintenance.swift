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

  /// Retention on the DC and on every target that replicated, all at once: each waits out its own lock's pause.
  /// Retention guard: the newest snapshot each target holds stays on the DC too (a target that has been failing
  /// for a while still needs its newest snapshot as the last common one). Returns the sides as opened, for
  /// prune.
  func retain(_ repo: Repository, outcomes: [TargetOutcome], _ run: inout Run) async throws -> [Side] {
    let needed = Set(run.state.targets.compactMap { $0.newestSnapshot })
    var sides = [Side(name: config.repository, target: nil, repository: repo)]
    var policies: [Int: EngineConfig.Retention] = [:]
    for o in outcomes where o.stats != nil {
      guard let target = o.repository else { continue }
      sides.append(Side(name: "target \(config.targets[o.index].name)", target: o.index, repository: target))
      policies[o.index] = config.targets[o.index].retention ?? config.retention
    }
    let results = await withTaskGroup(of: (Int, Result<Int, Error>?).self) { g in
      for (k, side) in sides.enumerated() {
        let policy = side.target.map { policies[$0]! } ?? config.retention
        guard !policy.isEmpty else { continue }
        g.addTask {
          do {
            return (
              k,
              .success(
                try await Retention.apply(
                  side.repository, policy, keeping: side.target == nil ? needed : [], retry: access.lockRetry))
            )
          } catch {
            return (k, .failure(error))
          }
        }
      }
      var out: [(Int, Result<Int, Error>?)] = []
      for await x in g { out.append(x) }
      return out.sorted { $0.0 < $1.0 }
    }
    for (k, result) in results {
      let side = sides[k]
      switch result {
      case .success(let n)?:
        if n > 0 { logger.info("retention: forgot \(n) snapshots on \(side.name)") }
      case .failure(let e as TidemarkError)? where e.kind == .locked:
        logger.warning("retention on \(side.name) skipped this cycle: \(e)")
      case .failure(let e)?:
        if side.target == nil { throw e }
        run.failures.append("retention on \(side.name): \(e)")
      case nil:
        break
      }
    }
    return sides
  }

  /// Prune (when due) and index consolidation on every side. Each side's schedule counts from its own last
  /// prune, so a side that was skipped (someone held a lock) is pruned at the next cycle, not a period later.
  func maintain(_ repo: Repository, targets sides: [Side], _ run: inout Run) async throws {
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
