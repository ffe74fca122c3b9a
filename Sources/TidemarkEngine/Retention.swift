// The cycle's retention: `retention:` (and a target's own) as restic's forget policy, applied per host and paths
// through the same path as `tidemark forget`, with the engine's guards: the newest snapshot of every group stays,
// and so do the snapshots a target still needs as its last common one.
import Foundation
import TidemarkCore
import TidemarkOperations

public enum Retention {
  /// The configuration's keep-* values as restic's policy.
  public static func policy(_ r: EngineConfig.Retention) throws -> ForgetPolicy {
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
    return p
  }

  /// What the policy removes from `snapshots`, less each group's newest and the `needed` ones.
  public static func plan(_ snapshots: [Snapshot], _ policy: ForgetPolicy, keeping needed: Set<String> = [])
    -> [SnapshotID]
  {
    var remove: [SnapshotID] = []
    for (key, result) in Forget.plan(snapshots, policy: policy, grouping: .default) {
      _ = key
      let newest = (result.keep + result.remove).max { $0.time < $1.time }?.id
      remove += result.remove.compactMap(\.id).filter { $0 != newest && !needed.contains($0.hex) }
    }
    return remove
  }

  /// Forgets by `r` on `repo` under an exclusive lock; returns how many snapshots were removed (snapshot files the
  /// storage keeps until a date stay and are not counted). The snapshots are listed and the policy applied while
  /// the lock is confirmed; the removals wait for it. Snapshots in `ignoring` (IDs, hex) are left out altogether:
  /// kept, and not counted by the policy.
  public static func apply(
    _ repo: Repository, _ r: EngineConfig.Retention, keeping needed: Set<String> = [], ignoring: Set<String> = [],
    retry: Duration = .zero
  ) async throws -> Int {
    let policy = try policy(r)
    return try await RepositoryAccess.withLock(repo, exclusive: true, retry: retry, overlap: true) {
      let counted = try await repo.listSnapshots().filter { s in !ignoring.contains(s.id?.hex ?? "") }
      let remove = plan(counted, policy, keeping: needed)
      let retained = try await Forget.remove(repo, remove)
      return remove.count - retained.count
    }
  }
}
