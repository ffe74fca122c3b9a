// `tidemark forget`: restic 0.14's forget. Snapshots are grouped (--group-by), the policy (ForgetPolicy, in
// TidemarkOperations) is applied to each group, and the snapshot files of the removed ones are deleted under an
// exclusive lock. The output (text and --json) is restic's. Data is not touched: that is prune's job.
import ArgumentParser
import Foundation
import TidemarkCore
import TidemarkEngine
import TidemarkOperations

struct Forget: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Remove snapshots from the repository.",
    discussion: """
      Snapshots are first divided into groups according to --group-by (default: host and paths), and the policy \
      given by the --keep-* options is applied to each group on its own. With snapshot IDs as arguments, exactly \
      those snapshots are removed and no policy applies.
      Only the snapshot files are removed; the data they referenced stays until prune (or use --prune).
      Without any --keep-* option nothing is removed. Counts must be 0 or more (restic 0.15's -1 for "unlimited" \
      is not accepted: restic 0.14 would remove every snapshot for it).
      DURATION is restic's: numbers with the units y, m, d, h, e.g. 1y5m7d2h, counted back from the newest \
      snapshot that is not in the future.
      """)

  @OptionGroup var global: GlobalOptions

  @Option(
    name: [.customShort("l"), .long], parsing: .unconditional,
    help: ArgumentHelp("Keep the last n snapshots.", valueName: "n"))
  var keepLast = 0
  @Option(
    name: [.customShort("H"), .long], parsing: .unconditional,
    help: ArgumentHelp("Keep the last n hourly snapshots.", valueName: "n"))
  var keepHourly = 0
  @Option(
    name: [.customShort("d"), .long], parsing: .unconditional,
    help: ArgumentHelp("Keep the last n daily snapshots.", valueName: "n"))
  var keepDaily = 0
  @Option(
    name: [.customShort("w"), .long], parsing: .unconditional,
    help: ArgumentHelp("Keep the last n weekly snapshots.", valueName: "n"))
  var keepWeekly = 0
  @Option(
    name: [.customShort("m"), .long], parsing: .unconditional,
    help: ArgumentHelp("Keep the last n monthly snapshots.", valueName: "n"))
  var keepMonthly = 0
  @Option(
    name: [.customShort("y"), .long], parsing: .unconditional,
    help: ArgumentHelp("Keep the last n yearly snapshots.", valueName: "n"))
  var keepYearly = 0
  @Option(
    parsing: .unconditional,
    help: ArgumentHelp("Keep snapshots newer than DURATION (e.g. 1y5m7d2h) before the newest.", valueName: "duration"))
  var keepWithin = ""
  @Option(
    parsing: .unconditional,
    help: ArgumentHelp("Keep hourly snapshots newer than DURATION before the newest.", valueName: "duration"))
  var keepWithinHourly = ""
  @Option(
    parsing: .unconditional,
    help: ArgumentHelp("Keep daily snapshots newer than DURATION before the newest.", valueName: "duration"))
  var keepWithinDaily = ""
  @Option(
    parsing: .unconditional,
    help: ArgumentHelp("Keep weekly snapshots newer than DURATION before the newest.", valueName: "duration"))
  var keepWithinWeekly = ""
  @Option(
    parsing: .unconditional,
    help: ArgumentHelp("Keep monthly snapshots newer than DURATION before the newest.", valueName: "duration"))
  var keepWithinMonthly = ""
  @Option(
    parsing: .unconditional,
    help: ArgumentHelp("Keep yearly snapshots newer than DURATION before the newest.", valueName: "duration"))
  var keepWithinYearly = ""
  @Option(
    help: ArgumentHelp(
      "Keep snapshots with all of these tags (comma-separated; repeatable for any list).", valueName: "taglist"))
  var keepTag: [String] = []

  @Option(help: "Only consider snapshots of this host (repeatable).") var host: [String] = []
  @Option(
    help: ArgumentHelp(
      "Only consider snapshots with all of these tags (comma-separated; repeatable for any list).",
      valueName: "taglist"))
  var tag: [String] = []
  @Option(help: "Only consider snapshots that include this path (repeatable).") var path: [String] = []
  @Flag(name: [.customShort("c"), .long], help: "Compact table output.") var compact = false
  @Option(
    name: [.customShort("g"), .long], parsing: .unconditional,
    help: ArgumentHelp(
      "Group snapshots by host, paths and/or tags, comma-separated ('' for no grouping).",
      valueName: "group"))
  var groupBy = "host,paths"
  @Flag(name: [.customShort("n"), .long], help: "Remove nothing; print what would be removed.") var dryRun = false
  @Flag(help: "Run prune afterwards, under the same exclusive lock (prune's flags apply).") var prune = false
  @OptionGroup var pruneFlags: PruneFlags
  @Argument(
    help: ArgumentHelp(
      "Remove exactly these snapshots (IDs, unique prefixes or `latest`); no policy applies.",
      valueName: "snapshot-id"))
  var snapshotIDs: [String] = []

  func run() async throws {
    let pruneOptions = prune ? try pruneFlags.options(dryRun: dryRun) : nil
    let policy = try ForgetPolicy(
      last: keepLast, hourly: keepHourly, daily: keepDaily, weekly: keepWeekly, monthly: keepMonthly,
      yearly: keepYearly, within: keepWithin, withinHourly: keepWithinHourly, withinDaily: keepWithinDaily,
      withinWeekly: keepWithinWeekly, withinMonthly: keepWithinMonthly, withinYearly: keepWithinYearly,
      keepTags: keepTag)
    let grouping = try SnapshotGrouping(parsing: groupBy)
    if global.noLock && !dryRun {
      throw TidemarkError(.usage, "--no-lock is only applicable in combination with --dry-run for forget command")
    }
    let repo = try await global.open()
    if !dryRun { try await global.refuseOnStandby(repo, "forget") }
    // A dry run only reads, so a shared lock does; removing needs the repository to itself.
    try await global.withLock(repo, exclusive: !dryRun || prune) {
      let removed = try await forget(repo, policy: policy, grouping: grouping)
      if let pruneOptions, !removed.isEmpty || !dryRun {
        if text && !dryRun && !removed.isEmpty {
          Out.line("\(removed.count) snapshots have been removed, running prune")
        }
        // A dry run plans as if the snapshots it would remove were gone.
        try await runPrune(repo, options: pruneOptions, global: global, ignoring: dryRun ? removed : [])
      }
    }
  }

  private var text: Bool { !global.json && !global.quiet }

  /// Returns the snapshots that were (or, in a dry run, would be) removed.
  @discardableResult
  private func forget(_ repo: Repository, policy: ForgetPolicy, grouping: SnapshotGrouping) async throws
    -> Set<SnapshotID>
  {
    let d = TidemarkOperations.Forget.decide(
      try await repo.listSnapshots(), names: snapshotIDs, policy: policy, grouping: grouping,
      filter: SnapshotFilter(hosts: host, tags: tag, paths: path))
    if !snapshotIDs.isEmpty {
      report(d.problems)
    } else if policy.isEmpty {
      if text { Out.line("no policy was specified, no snapshots will be removed") }
    } else if text {
      Out.line("Applying Policy: \(policy)")
    }
    for (key, result) in d.groups where text {
      if global.verbose >= 1 && !key.description.isEmpty { Out.line("snapshots for (\(key.description)):") }
      for (verb, list) in [("keep", result.keep), ("remove", result.remove)] where !list.isEmpty {
        Out.line("\(verb) \(list.count) snapshots:")
        printSnapshotTable(list, reasons: verb == "keep" ? result.reasons : nil, compact: compact)
        Out.line("")
      }
    }
    var retained = RetainedFiles()
    if !d.remove.isEmpty {
      if !dryRun {
        retained = try await removeSnapshots(repo, d.remove)
      } else {
        // A dry run names only what a real run could delete (and plans its prune without exactly those).
        retained = try await RetainedFiles.of(d.remove.map { Handle(.snapshot, $0.hex) }, in: repo.backend)
        let would = d.remove.filter { !retained.contains(Handle(.snapshot, $0.hex)) }
        if text && !would.isEmpty {
          Out.line("Would have removed the following snapshots:")
          Out.line("{" + would.map(\.short).joined(separator: " ") + "}")
          Out.line("")
        }
        if let summary = retained.summary, !global.quiet {
          if global.json { Out.err(summary) } else { Out.line(summary) }
        }
      }
    }
    if global.json && !d.groups.isEmpty { Out.raw(TidemarkOperations.Forget.json(d.groups)) }
    return Set(d.remove.filter { !retained.contains(Handle(.snapshot, $0.hex)) })
  }

  /// Snapshot arguments skipped, in restic's words; `latest` is the newest snapshot passing --host/--tag/--path.
  private func report(_ problems: [SnapshotSelection.Problem]) {
    for p in problems {
      switch p {
      case .noLatest:
        Out.err(
          "Ignoring \"latest\", no snapshot matched given filter (Paths:[\(path.joined(separator: " "))] "
            + "Tags:[\(tag.map(TagList.parse).map(TagList.describe).joined(separator: " "))] Hosts:[\(host.joined(separator: " "))])"
        )
      case .notFound(let arg):
        Out.err("Ignoring \(Out.jsonString(arg)): no matching ID found for prefix \(Out.jsonString(arg))")
      case .ambiguous(let arg):
        Out.err("Ignoring \(Out.jsonString(arg)): multiple IDs with prefix \(Out.jsonString(arg)) found")
      case .filtersIgnored: Out.err("Ignoring filters as there are explicit snapshot ids given")
      }
    }
  }

  /// Deletes the snapshot files (Forget.remove), with restic's lines; returns those the storage keeps until a
  /// date (S3 Object Lock), which stay and are named in one more line.
  private func removeSnapshots(_ repo: Repository, _ ids: [SnapshotID]) async throws -> RetainedFiles {
    let start = ContinuousClock.now
    let verbose = global.verbose >= 2 && text
    let retained = try await TidemarkOperations.Forget.remove(repo, ids) { h in
      if verbose { Out.line("removed \(h)") }
    }
    if text {
      let secs = Double((ContinuousClock.now - start).components.seconds)
      let done = ids.count - retained.count
      Out.line("[\(Out.duration(secs))] 100.00%  \(done) / \(ids.count) files deleted")
    }
    if let summary = retained.summary, !global.quiet {
      if global.json { Out.err(summary) } else { Out.line(summary) }
    }
    return retained
  }
}

/// restic's snapshot table (`PrintSnapshots`): oldest first, times in the local zone, a Reasons column for kept
/// snapshots, a blank line between rows when some snapshot has several paths, and the count as footer.
func printSnapshotTable(_ list: [Snapshot], reasons: [ForgetPolicy.KeepReason]?, compact: Bool) {
  var matches: [SnapshotID: [String]] = [:]
  for r in reasons ?? [] { if let id = r.snapshot.id { matches[id] = r.matches } }
  let rows = list.enumerated().sorted { a, b in
    a.element.time != b.element.time ? a.element.time < b.element.time : a.offset < b.offset
  }
  .map(\.element)
  var header: [String]
  if compact {
    header = ["ID", "Time", "Host", "Tags  "]
  } else {
    header = ["ID", "Time", "Host      ", "Tags      "]
    if reasons?.isEmpty == false { header.append("Reasons") }
    header.append("Paths")
  }
  var cells: [[String]] = []
  var multiline = false
  for s in rows {
    let time = Out.time(Timestamp.local(seconds: s.time.seconds, nanoseconds: s.time.nanoseconds))
    var row = [s.id?.short ?? "", time, s.hostname]
    if compact {
      row.append(s.tags.joined(separator: "\n"))
    } else {
      row.append(s.tags.joined(separator: ","))
      if reasons?.isEmpty == false { row.append(matches[s.id!]?.joined(separator: "\n") ?? "") }
      row.append(s.paths.joined(separator: "\n"))
      if s.paths.count > 1 { multiline = true }
    }
    cells.append(row)
  }
  // Widths in bytes, as Go's len.
  var widths = header.map(\.utf8.count)
  for row in cells {
    for (i, c) in row.enumerated() {
      widths[i] = max(
        widths[i], c.split(separator: "\n", omittingEmptySubsequences: false).map(\.utf8.count).max() ?? 0)
    }
  }
  let rule = String(repeating: "-", count: widths.reduce(0, +) + 2 * (widths.count - 1))
  func lines(_ row: [String]) -> [String] {
    let fields = row.map { $0.split(separator: "\n", omittingEmptySubsequences: false).map(String.init) }
    let height = fields.map(\.count).max() ?? 1
    return (0..<height).map { k in
      var s = ""
      for (i, f) in fields.enumerated() {
        let v = k < f.count ? f[k] : ""
        if i > 0 { s += "  " }
        s += v + String(repeating: " ", count: max(0, widths[i] - v.utf8.count))
      }
      while s.hasSuffix(" ") { s.removeLast() }
      return s
    }
  }
  for l in lines(header) { Out.line(l) }
  Out.line(rule)
  for (i, row) in cells.enumerated() {
    for (k, l) in lines(row).enumerated() { Out.line(multiline && i > 0 && k == 0 ? "\n" + l : l) }
  }
  Out.line(rule)
  Out.line("\(list.count) snapshots")
}
