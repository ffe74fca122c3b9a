// `tidemark copy`: restic 0.14's `copy` (source --from-repo, destination --repo), output and all.
import ArgumentParser
import Foundation
import TidemarkCore
import TidemarkEngine
import TidemarkOperations
import TidemarkSystem

struct CopyCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "copy",
    abstract: "Copy snapshots from another repository (--from-repo) into this one (--repo).",
    discussion: """
      The repositories have different keys, so every blob the destination lacks is read, decrypted and \
      verified, then compressed and encrypted again. A snapshot is skipped when the destination already has a \
      copy of it (the same `original` and the same time, tree, host, user, paths, tags and excludes); a copy \
      records the source snapshot's ID (or its own `original`) in `original`, so copying again, by tidemark or \
      restic, copies only what is new. Files are not re-chunked: create the destination with \
      `tidemark init --copy-chunker-params --from-repo SRC` so that its own backups deduplicate against the \
      copies. Packs, then the index, then each snapshot are written, so an interrupted copy leaves a \
      consistent repository, and the next run reuses what was indexed (a failed copy indexes what it stored). \
      Shared locks on both repositories; --no-lock spares only the source.
      """)
  @OptionGroup var global: GlobalOptions
  @OptionGroup var from: FromRepositoryOptions
  @Option(name: [.customShort("H"), .long], help: "Only snapshots of this host, when no ID is given (repeatable).")
  var host: [String] = []
  @Option(help: "Only snapshots with these tags (`a,b`: all of them; repeatable: any), when no ID is given.")
  var tag: [String] = []
  @Option(help: "Only snapshots with this path (repeatable), when no ID is given.") var path: [String] = []
  @Argument(help: "Snapshot IDs or `latest` (default: all snapshots that match the filters).") var ids: [String] = []

  func run() async throws {
    let source = try await from.open(global, needFor: "copy")
    let destination = try await global.open()
    let filter = SnapshotFilter(hosts: host, tags: tag, paths: path)
    let verbose = !global.quiet && !global.json

    // As restic: --no-lock spares only the source; the destination is written, so it is always locked.
    var unresolved = 0
    let stats = try await Copy.withLocks(
      source: source, destination: destination, lockSource: !global.noLock, retry: try global.lockRetry
    ) {
      let (selected, missing) = try await select(source, filter)
      unresolved = missing
      let existing = filter.apply(try await destination.listSnapshots())
      return try await Copy.run(
        from: source, to: destination, snapshots: selected, destinationSnapshots: existing
      ) { e in
        guard verbose else { return }
        switch e {
        case .snapshot(let s):
          Out.line("")
          Out.line("snapshot \(s.id!.short) of [\(s.paths.joined(separator: " "))] at \(GoFormat.timeString(s.time)))")
        case .skipped(let s, let copy):
          Out.line("skipping source snapshot \(s.id!.short), was already copied to snapshot \(copy.id!.short)")
        case .copying:
          Out.line("  copy started, this may take a while...")
        case .saved(_, let id):
          Out.line("snapshot \(id.short) saved")
        }
      }
    }
    if global.json { Out.raw(stats.json()) }
    if unresolved > 0 {
      throw TidemarkError(
        .notFound, "\(unresolved) of the given snapshot IDs matched no source snapshot (the others were copied)",
        hint: "list them with `tidemark snapshots --repo SOURCE`")
    }
  }

  /// The source snapshots to copy and how many given IDs matched none. As restic: with IDs the filters apply
  /// only to `latest`; without, every snapshot that passes them, oldest first.
  func select(_ source: Repository, _ filter: SnapshotFilter) async throws -> ([Snapshot], Int) {
    let (out, problems) = SnapshotSelection.select(try await source.listSnapshots(), names: ids, filter: filter)
    var missing = 0
    for p in problems {
      switch p {
      case .filtersIgnored: Out.err("Ignoring filters as there are explicit snapshot ids given")
      case .noLatest:
        Out.err("Ignoring \"latest\", no snapshot matched given filter (Paths:\(path) Tags:\(tag) Hosts:\(host))")
      case .notFound(let ref): Out.err("Ignoring \"\(ref)\": no matching ID found")
      case .ambiguous(let ref): Out.err("Ignoring \"\(ref)\": prefix is ambiguous")
      }
      if p != .filtersIgnored { missing += 1 }
    }
    return (out, missing)
  }
}
