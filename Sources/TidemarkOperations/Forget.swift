// Forgetting snapshots: the one retention path that `tidemark forget` and the replication cycle share. Snapshots
// are grouped (restic's --group-by), the policy decides per group, and the snapshot files are removed a few at a
// time. The caller holds an exclusive lock; data is freed by a later prune.
import Foundation
import Synchronization
import TidemarkCore

public enum Forget {
  public typealias Group = (key: SnapshotGrouping.Key, result: ForgetPolicy.Result)

  /// The policy's decision per group of `snapshots`.
  public static func plan(_ snapshots: [Snapshot], policy: ForgetPolicy, grouping: SnapshotGrouping) -> [Group] {
    grouping.group(snapshots).map { (key, snaps) in (key, policy.apply(to: snaps)) }
  }

  /// What `forget` removes: the policy's groups (empty when snapshots are named or there is no policy), the
  /// snapshots removed (sorted, each once), and why named snapshots were skipped.
  public struct Decision: Sendable {
    public var groups: [Group] = []
    public var remove: [SnapshotID] = []
    public var problems: [SnapshotSelection.Problem] = []
  }

  /// Fails with one line when `repo`'s storage refuses deletes (an append-only server): `what` (forget, prune)
  /// cannot run through it, and retention for such a copy belongs to the host that holds it.
  public static func ensureDeletable(_ repo: Repository, for what: String) async throws {
    guard try await repo.backend.refusesDeletes() else { return }
    throw TidemarkError(
      .general,
      "\(repo.backend.location) refuses deletes (an append-only server): \(what) cannot run through it; nothing was "
        + "removed",
      hint:
        "retention for this copy runs on the server's host, on the repository's local path (a keeper configuration; "
        + "see docs/security.md)")
  }

  /// restic's forget decision over `all` (oldest first). With `names`, exactly those snapshots (SnapshotSelection,
  /// the filter's paths taken as absolute as restic does for `latest`); otherwise the policy per group of the
  /// snapshots passing `filter`.
  public static func decide(
    _ all: [Snapshot], names: [String], policy: ForgetPolicy, grouping: SnapshotGrouping, filter: SnapshotFilter
  ) -> Decision {
    var d = Decision()
    var remove: [SnapshotID] = []
    if !names.isEmpty {
      var f = filter
      f.paths = f.paths.map(SnapshotSelection.absolute)
      let (found, problems) = SnapshotSelection.select(all, names: names, filter: f)
      (remove, d.problems) = (found.compactMap(\.id), problems)
    } else if !policy.isEmpty {
      d.groups = plan(filter.apply(all), policy: policy, grouping: grouping)
      remove = d.groups.flatMap { $0.result.remove.compactMap(\.id) }
    }
    d.remove = Set(remove).sorted()
    return d
  }

  /// restic's `forget --json` document: `[{"tags","host","paths","keep","remove","reasons"}]`, empty lists as
  /// `null`, then a newline.
  public static func json(_ groups: [Group]) -> [UInt8] {
    var w = JSONWriter()
    func list(_ items: [Snapshot]) {
      if items.isEmpty { return w.raw("null") }
      w.raw("[")
      for (i, s) in items.enumerated() {
        if i > 0 { w.comma() }
        s.listingJSON(into: &w)
      }
      w.raw("]")
    }
    w.raw("[")
    for (g, (key, result)) in groups.enumerated() {
      if g > 0 { w.comma() }
      w.raw("{\"tags\":")
      if let tags = key.tags { w.stringArray(tags) } else { w.raw("null") }
      w.raw(",\"host\":")
      w.string(key.hostname)
      w.raw(",\"paths\":")
      if let paths = key.paths { w.stringArray(paths) } else { w.raw("null") }
      w.raw(",\"keep\":")
      list(result.keep)
      w.raw(",\"remove\":")
      list(result.remove)
      w.raw(",\"reasons\":")
      if result.reasons.isEmpty { w.raw("null") }
      for (i, r) in result.reasons.enumerated() {
        w.raw(i == 0 ? "[" : ",")
        w.raw("{\"snapshot\":")
        w.out += r.snapshot.encode()
        w.raw(",\"matches\":")
        w.stringArray(r.matches)
        w.raw(",\"counters\":{")
        let c = r.counters
        let counters = [
          ("last", c.last), ("hourly", c.hourly), ("daily", c.daily), ("weekly", c.weekly), ("monthly", c.monthly),
          ("yearly", c.yearly),
        ].filter { $0.1 != 0 }
        w.raw(counters.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ","))
        w.raw("}}")
        if i == result.reasons.count - 1 { w.raw("]") }
      }
      w.raw("}")
    }
    w.raw("]\n")
    return w.out
  }

  /// Deletes the snapshot files (a few at a time; the first failure stops the rest). `removed` hears each one.
  /// Storage that refuses deletes (an append-only server) fails before anything is removed (see
  /// `ensureDeletable`). A snapshot file the storage keeps until a date (S3 Object Lock) stays, snapshot and all:
  /// it is returned, and a prune that follows still sees it and keeps its data.
  @discardableResult
  public static func remove(
    _ repo: Repository, _ ids: [SnapshotID], removed: @escaping @Sendable (Handle) -> Void = { _ in }
  ) async throws -> RetainedFiles {
    if ids.isEmpty { return RetainedFiles() }
    try await ensureDeletable(repo, for: "forget")
    try await repo.writeGate.pass()
    let retained = Mutex(RetainedFiles())
    try await forEachConcurrently(ids, limit: 4) { id in
      let h = Handle(.snapshot, id.hex)
      do {
        try await repo.backend.remove(h)
      } catch let e as FileRetained {
        retained.withLock { $0.add(h, e.until) }
        return
      } catch {
        throw TidemarkError(.general, "unable to remove \(h) from the repository: \(error)")
      }
      removed(h)
    }
    return retained.withLock { $0 }
  }
}
