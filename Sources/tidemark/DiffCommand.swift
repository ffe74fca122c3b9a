// `tidemark diff`: what changed from one snapshot to another, in restic's format.
import ArgumentParser
import TidemarkCore
import TidemarkEngine
import TidemarkOperations

struct DiffCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "diff",
    abstract: "Show differences between two snapshots.",
    discussion: """
      Lists what changed from the first snapshot to the second, one path a line (directories end in /), \
      then a summary. The first characters of a line say what happened:

        +  added
        -  removed
        M  the file's content was modified
        T  the type changed (e.g. a file became a symlink or a directory)
        U  the metadata (mode, times, owner, ...) changed (with --metadata)

      A snapshot is an ID, a unique ID prefix or `latest`. With --json: one {"message_type":"change"} object \
      a line, then a {"message_type":"statistics"} object, as restic prints them.
      """)
  @OptionGroup var global: GlobalOptions
  @Flag(help: "Also print changes in metadata.") var metadata = false
  @Argument(help: "The two snapshots: from, to.") var snapshots: [String] = []

  func run() async throws {
    guard snapshots.count == 2 else { throw TidemarkError(.usage, "specify two snapshot IDs") }
    let repo = try await global.open()
    let json = global.json
    let quiet = global.quiet
    let stats = try await global.withLock(
      repo, exclusive: false, overlap: true, prepare: { try await repo.loadIndex() }
    ) {
      let s1 = try await repo.findSnapshot(snapshots[0])
      let s2 = try await repo.findSnapshot(snapshots[1])
      if !json && !quiet {
        Out.line("comparing snapshot \(s1.id!.short) to \(s2.id!.short):")
        Out.line("")
      }
      let cache = TreeCache(repo: repo)
      return try await SnapshotDiff.compare(s1.tree, s2.tree, cache: cache, metadata: metadata) { c in
        guard !quiet else { return }
        if json {
          Out.raw(c.json)
        } else {
          Out.raw(Array(GoFormat.padded(c.modifier, 5).utf8) + c.path + [10])
        }
      }
    }
    for w in stats.warnings { Out.err(w) }
    if json { return Out.raw(stats.json(source: snapshots[0], target: snapshots[1])) }
    let (a, r) = (stats.added, stats.removed)
    func n(_ v: Int) -> String { GoFormat.right(v, 5) }
    Out.line("")
    Out.line("Files:       \(n(a.files)) new, \(n(r.files)) removed, \(n(stats.changedFiles)) changed")
    Out.line("Dirs:        \(n(a.dirs)) new, \(n(r.dirs)) removed")
    Out.line("Others:      \(n(a.others)) new, \(n(r.others)) removed")
    Out.line("Data Blobs:  \(n(a.dataBlobs)) new, \(n(r.dataBlobs)) removed")
    Out.line("Tree Blobs:  \(n(a.treeBlobs)) new, \(n(r.treeBlobs)) removed")
    Out.line("  Added:   \(GoFormat.padded(GoFormat.bytes(a.bytes), 5))")
    Out.line("  Removed: \(GoFormat.padded(GoFormat.bytes(r.bytes), 5))")
  }
}
