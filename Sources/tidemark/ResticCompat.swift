// What several restic-style commands share: choosing snapshots as restic does, with restic's reports.
import TidemarkCore
import TidemarkOperations

/// restic's snapshot selection (SnapshotSelection) with restic's reports on stderr, as `find` and `stats` word
/// them.
func selectSnapshots(_ repo: Repository, ids: [String], filter: SnapshotFilter) async throws -> [Snapshot] {
  let (out, problems) = SnapshotSelection.select(try await repo.listSnapshots(), names: ids, filter: filter)
  for p in problems {
    switch p {
    case .noLatest:
      func list(_ a: [String]) -> String { "[" + a.joined(separator: " ") + "]" }
      let tags = list(filter.tags.map { "[" + $0.split(separator: ",").joined(separator: ", ") + "]" })
      Out.err(
        "Ignoring \"latest\", no snapshot matched given filter (Paths:\(list(filter.paths)) Tags:\(tags) Hosts:\(list(filter.hosts)))"
      )
    case .ambiguous(let ref): Out.err("Ignoring \"\(ref)\": multiple IDs with prefix \"\(ref)\" found")
    case .notFound(let ref): Out.err("Ignoring \"\(ref)\": no matching ID found for prefix \"\(ref)\"")
    case .filtersIgnored: Out.err("Ignoring filters as there are explicit snapshot ids given")
    }
  }
  return out
}
