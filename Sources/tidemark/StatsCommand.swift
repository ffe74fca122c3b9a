// `tidemark stats`: restic's counting modes over the chosen snapshots.
import ArgumentParser
import TidemarkCore
import TidemarkEngine
import TidemarkOperations

struct StatsCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "stats",
    abstract: "Scan the repository and show basic statistics.",
    discussion: """
      Walks the chosen snapshots (default: all, or those matching --host/--tag/--path; `latest` is the newest \
      of those) and counts, by --mode:

        restore-size       (default) what a restore writes: every entry, hard links once
        files-by-contents  files unique by content, and their size
        raw-data           the blobs used, each once, at their stored size (and compression)
        blobs-per-file     for files unique by content, their blobs once per path

      --json prints restic's fields (total_size, total_file_count, total_blob_count, snapshots_count; raw-data \
      adds total_uncompressed_size, compression_ratio, compression_progress and compression_space_saving).
      """)
  @OptionGroup var global: GlobalOptions
  @Option(help: "Counting mode: restore-size (default), files-by-contents, blobs-per-file or raw-data.")
  var mode = "restore-size"
  @Option(name: [.customShort("H"), .long], help: "Only snapshots of this host (repeatable).") var host: [String] = []
  @Option(help: "Only snapshots with these tags (comma-separated for all of them; repeatable for any).")
  var tag: [String] = []
  @Option(help: "Only snapshots with this (absolute) path (repeatable).") var path: [String] = []
  @Argument(help: "Snapshot IDs, unique prefixes or `latest` (default: all matching the filters).")
  var snapshots: [String] = []

  func run() async throws {
    let m = try StatsMode(parsing: mode)
    let repo = try await global.open()
    let stats = try await global.withLock(
      repo, exclusive: false, overlap: true, prepare: { try await repo.loadIndex() }
    ) {
      if !global.json { Out.line("scanning...") }
      let snaps = try await selectSnapshots(
        repo, ids: snapshots, filter: SnapshotFilter(hosts: host, tags: tag, paths: path))
      return try await RepositoryStats.compute(repo, snapshots: snaps, mode: m)
    }
    if global.json {
      Out.line(stats.json)
      return
    }
    Out.line("Stats in \(m.rawValue) mode:")
    if stats.totalUncompressedSize > 0 {
      // The extra compression lines as restic 0.16+ prints them (restic 0.14 has none).
      Out.line("     Snapshots processed:  \(stats.snapshotsCount)")
      if stats.totalBlobCount > 0 { Out.line("        Total Blob Count:  \(stats.totalBlobCount)") }
      if stats.totalFileCount > 0 { Out.line("        Total File Count:  \(stats.totalFileCount)") }
      Out.line(" Total Uncompressed Size:  \(GoFormat.padded(GoFormat.bytes(stats.totalUncompressedSize), 5))")
      Out.line("              Total Size:  \(GoFormat.padded(GoFormat.bytes(stats.totalSize), 5))")
      if stats.compressionProgress > 0 {
        Out.line("    Compression Progress:  \(String(format: "%.2f", stats.compressionProgress))%")
      }
      if stats.compressionRatio > 0 {
        Out.line("       Compression Ratio:  \(String(format: "%.2f", stats.compressionRatio))x")
      }
      if stats.compressionSpaceSaving > 0 {
        Out.line("Compression Space Saving:  \(String(format: "%.2f", stats.compressionSpaceSaving))%")
      }
      return
    }
    Out.line("Snapshots processed:   \(stats.snapshotsCount)")
    if stats.totalBlobCount > 0 { Out.line("   Total Blob Count:   \(stats.totalBlobCount)") }
    if stats.totalFileCount > 0 { Out.line("   Total File Count:   \(stats.totalFileCount)") }
    Out.line("         Total Size:   \(GoFormat.padded(GoFormat.bytes(stats.totalSize), 5))")
  }

}
