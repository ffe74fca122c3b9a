// `check` and `prune`: wiring and output; the work is in TidemarkOperations (Check.swift, Prune.swift).
import ArgumentParser
import Foundation
import TidemarkCore
import TidemarkEngine
import TidemarkOperations

struct CheckCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "check",
    abstract: "Check the repository for errors.",
    discussion: """
      Checks that every index file decodes, every pack the index names exists with the right size, every \
      snapshot and every tree it reaches loads, and every blob a tree names is indexed. With --read-data \
      (or a subset), packs are read in full: content hash, header against the index, and every blob \
      decrypted and hashed. A damaged pack is named together with the snapshots and files that need it.

      Takes a shared lock, so backups can run meanwhile. Exit code 1 when anything is wrong.
      """)
  @OptionGroup var global: GlobalOptions
  @Flag(help: "Read all packs and verify every blob.") var readData = false
  @Option(
    help: ArgumentHelp(
      "Read a subset of the packs: n/m (the n-th of m slices), x% (random share) or a size (random packs up to 2G).",
      valueName: "subset")) var readDataSubset: String?
  @Flag(help: "Report blobs no snapshot uses as errors.") var checkUnused = false
  @Flag(help: "Accepted for restic compatibility (tidemark keeps no cache to bypass).") var withCache = false

  func run() async throws {
    var opts = CheckOptions()
    opts.checkUnused = checkUnused
    if let s = readDataSubset {
      opts.readData = try CheckOptions.parseSubset(s)
    } else if readData {
      opts.readData = .all
    }
    let repo = try await global.open()
    let quiet = global.quiet || global.json
    // Checking writes nothing: it may start while its lock is confirmed.
    let report = try await global.withLock(repo, exclusive: false, overlap: true) {
      try await Check.run(repo, options: opts) { phase in if !quiet { Out.line(phase) } }
    }
    if global.json {
      Out.raw(report.json())
    } else {
      for n in report.notes where !global.quiet { Out.line(n) }
      for e in report.errors { Out.err("error: \(e)") }
      for d in report.damaged {
        Out.err("damaged pack \(d.pack.hex) (\(d.reason)) is needed by:")
        if d.affected.isEmpty { Out.err("  no snapshot (its blobs are unused; `tidemark prune` removes it)") }
        for a in d.affected {
          Out.err("  snapshot \(a.snapshot.id!.short) of \(Out.time(a.snapshot.time)) (\(a.snapshot.hostname)):")
          for p in a.paths.prefix(50) { Out.err("    \(p)") }
          if a.paths.count > 50 { Out.err("    … and \(a.paths.count - 50) more") }
        }
      }
      if report.errors.isEmpty && !global.quiet {
        if report.packsRead > 0 {
          Out.line("read \(report.packsRead) packs (\(Out.bytes(Int64(report.bytesRead))))")
        }
        Out.line("no errors were found")
      }
    }
    if !report.errors.isEmpty {
      let n = report.errors.count
      throw TidemarkError(
        .general, "check found \(n) error\(n == 1 ? "" : "s")",
        hint: report.damaged.isEmpty
          ? "see the lines above"
          : "restore the affected files from another copy (a DR replica) or forget those snapshots")
    }
  }
}

/// The flags `prune` and `forget --prune` share.
struct PruneFlags: ParsableArguments {
  @Option(
    help: ArgumentHelp(
      "Tolerate this much unused space: a percentage of the used size (5%), a size (1G) or 'unlimited'.",
      valueName: "limit")) var maxUnused = "5%"
  @Option(help: ArgumentHelp("Repack at most this much data per run (e.g. 10G).", valueName: "size"))
  var maxRepackSize: String?
  @Flag(help: "Repack packs holding uncompressed data (repository version 2).") var repackUncompressed = false

  func options(dryRun: Bool) throws -> PruneOptions {
    var o = PruneOptions()
    o.maxUnused = try PruneOptions.parseMaxUnused(maxUnused)
    if let s = maxRepackSize { o.maxRepackBytes = try PruneOptions.parseSize(s, what: "--max-repack-size") }
    o.repackUncompressed = repackUncompressed
    o.dryRun = dryRun
    return o
  }
}

struct PruneCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "prune",
    abstract: "Remove data no snapshot needs.",
    discussion: """
      Deletes packs no snapshot needs and repacks partly used ones until the unused space is within \
      --max-unused. Takes an exclusive lock: it waits (--retry-lock) or refuses while a backup or mount holds \
      a lock. The order of its steps (new packs, new index, then deletions) means an interruption at any \
      point leaves a repository that checks clean; run prune again to finish.
      """)
  @OptionGroup var global: GlobalOptions
  @OptionGroup var flags: PruneFlags
  @Flag(name: [.customShort("n"), .long], help: "Only show what would be done.") var dryRun = false

  func run() async throws {
    let options = try flags.options(dryRun: dryRun)
    let repo = try await global.open()
    try await global.refuseOnStandby(repo, "prune")
    try await global.withLock(repo, exclusive: true) {
      try await runPrune(repo, options: options, global: global)
    }
  }
}

/// Plans and (unless dry-run) carries out a prune; prints restic's statistics. The caller holds an exclusive lock.
func runPrune(
  _ repo: Repository, options: PruneOptions, global: GlobalOptions, ignoring: Set<SnapshotID> = []
) async throws {
  let say: @Sendable (String) -> Void = { [quiet = global.quiet || global.json] s in if !quiet { Out.line(s) } }
  let st = try await Prune.run(repo, options: options, ignoring: ignoring, progress: say) { plan in
    if !global.json && !global.quiet { printPlan(plan.stats, verbose: global.verbose > 0) }
    if options.dryRun && global.verbose > 1 && !global.json {
      Out.line(
        "would remove \(plan.removeFirst.count) unreferenced packs, repack \(plan.repack.count), remove \(plan.remove.count)"
      )
    }
  }
  if global.json { Out.raw(st.json(dryRun: options.dryRun)) }
  var lines = st.retained.summary.map { [$0] } ?? []
  if st.retentionExtended > 0, let until = st.retentionExtendedUntil {
    lines.append("retention of \(st.retentionExtended) packs in use extended to \(UTCDate.format(until))")
  }
  for line in lines where !global.quiet {
    if global.json { Out.err(line) } else { Out.line(line) }
  }
}

/// restic's prune statistics block.
func printPlan(_ st: PruneStats, verbose: Bool) {
  func b(_ n: Int) -> String { Out.bytes(Int64(n)) }
  func pct(_ a: Int, _ t: Int) -> String { t == 0 ? "0.000%" : String(format: "%.3f%%", Double(a) * 100 / Double(t)) }
  func row(_ label: String, _ blobs: Int, _ size: Int) -> String {
    label.padding(toLength: 14, withPad: " ", startingAt: 0) + String(blobs).leftPadded(10) + " blobs / " + b(size)
  }
  let total = st.totalBytes
  let unusedSize = st.duplicateBytes + st.unusedBytes
  Out.line("")
  if verbose {
    Out.line(row("used:", st.usedBlobs, st.usedBytes))
    if st.duplicateBlobs > 0 { Out.line(row("duplicates:", st.duplicateBlobs, st.duplicateBytes)) }
    Out.line(row("unused:", st.unusedBlobs, st.unusedBytes))
    if st.unreferencedBytes > 0 { Out.line("unreferenced:                    " + b(st.unreferencedBytes)) }
    Out.line(row("total:", st.totalBlobs, total))
    Out.line("unused size: \(pct(unusedSize, total)) of total size")
    Out.line("")
  }
  Out.line(row("to repack:", st.repackBlobs, st.repackBytes))
  Out.line(row("this removes:", st.repackRemovedBlobs, st.repackRemovedBytes))
  Out.line(row("to delete:", st.removeBlobs, st.removeBytes + st.unreferencedBytes))
  Out.line(row("total prune:", st.removeBlobs + st.repackRemovedBlobs, st.prunedBytes))
  Out.line(row("remaining:", st.totalBlobs - st.removeBlobs - st.repackRemovedBlobs, total - st.prunedBytes))
  Out.line(
    "unused size after prune: \(b(st.unusedAfterBytes)) (\(pct(st.unusedAfterBytes, total - st.prunedBytes)) of remaining size)"
  )
  Out.line("")
  if verbose {
    Out.line("totally used packs: " + String(st.packsUsed).leftPadded(10))
    Out.line("partly used packs:  " + String(st.packsPartlyUsed).leftPadded(10))
    Out.line("unused packs:       " + String(st.packsUnused).leftPadded(10))
    Out.line("")
    Out.line("to keep:      " + String(st.packsKeep).leftPadded(10) + " packs")
    Out.line("to repack:    " + String(st.packsRepack).leftPadded(10) + " packs")
    Out.line("to delete:    " + String(st.packsRemove).leftPadded(10) + " packs")
    if st.packsUnreferenced > 0 {
      Out.line("to delete:    " + String(st.packsUnreferenced).leftPadded(10) + " unreferenced packs")
    }
    Out.line("")
  }
}
