// Forgetting snapshots: the one retention path that `tidemark forget` and the replication cycle share. Snapshots
// are grouped (restic's --group-by), the policy decides per group, and the snapshot files are removed a few at a
// time. The caller holds an exclusive lock; data is freed by a later prune.
import Foundation
import TidemarkCore

public enum Forget {
  public typealias Group = (key: SnapshotGrouping.Key, result: ForgetPolicy.Result)

  /// The policy's decision per group of `snapshots`.
  public static func plan(_ snapshots: [Snapshot], policy: ForgetPolicy, grouping: SnapshotGrouping) -> [Group] {
    grouping.group(snapshots).map { (key, snaps) in (key, policy.apply(to: snaps)) }
  }

  /// Deletes the snapshot files (a few at a time; the first failure stops the rest). `removed` hears each one.
  public static func remove(
    _ repo: Repository, _ ids: [SnapshotID], removed: @escaping @Sendable (Handle) -> Void = { _ in }
  ) async throws {
    try await repo.writeGate.pass()
    try await forEachConcurrently(ids, limit: 4) { id in
      let h = Handle(.snapshot, id.hex)
      do {
        try await repo.backend.remove(h)
      } catch {
        throw TidemarkError(.general, "unable to remove \(h) from the repository: \(error)")
      }
      removed(h)
    }
  }
}
