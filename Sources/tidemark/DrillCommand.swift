// `tidemark drill`: arguments and output; the drill itself is TidemarkEngine's Drill.
import ArgumentParser
import Foundation
import Logging
import TidemarkCore
import TidemarkEngine
import TidemarkOperations

struct DrillCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "drill",
    abstract: "Restore the newest snapshot of every source from DR, verify it, and measure RTO and RPO.",
    discussion: """
      For each target (--target NAME, repeatable; `local` for the configuration's own repository; default: \
      drill.targets, else every target): restores the newest snapshot of each configured source into a scratch \
      directory (drill.scratch, default STATE_DIR/drill-scratch), reads every restored file back and checks it \
      against the snapshot's content hashes, runs the source's `verify` command on the copy ({} is its path), \
      then deletes the copy (--keep leaves it).

      RTO: the wall time of restore and verification. RPO: now minus the time of the newest snapshot. \
      A Markdown report goes to drill.reports (default STATE_DIR/reports); drill.json in the state directory \
      feeds the tidemark_drill_* metrics; a failure raises the configured alerts (alert kind `drill`). \
      Exit code 0 when every drill passed, 1 otherwise.
      """)
  @OptionGroup var global: GlobalOptions
  @Option(name: .customLong("target"), help: "Drill this target (repeatable; `local`: the repository itself).")
  var targets: [String] = []
  @Flag(help: "Keep the restored copy in the scratch directory.") var keep = false

  func run() async throws {
    guard let config = try global.engineConfig() else {
      throw TidemarkError(.usage, "drill needs a configuration", hint: "pass --config FILE (or set TIDEMARK_CONFIG)")
    }
    let quiet = global.quiet || global.json
    var d = Drill(cycle: try global.cycle(config, logger: EngineLog.console(quiet: quiet)))
    d.keep = keep
    d.say = { s in if !quiet { Out.err(s) } }
    var state = await d.run(try d.plan(targets))
    await d.record(&state)
    if global.json {
      Out.raw(state.json())
    } else {
      printTable(
        header: ["Repository", "Result", "RTO", "RPO", "Files", "Bytes", "Failure"],
        rows: state.repositories.map { r in
          [
            r.name, r.ok ? "ok" : "FAILED", String(format: "%.1f s", r.rtoSeconds),
            r.rpoSeconds.map { Out.duration($0) } ?? "-", "\(r.filesVerified)", Out.bytes(r.bytesVerified),
            r.failures.first.map { $0.count > 72 ? $0.prefix(70) + "…" : $0 } ?? "",
          ]
        })
      if let p = state.report { Out.line("report: \(p)") }
    }
    if !state.ok {
      throw TidemarkError(
        .general,
        "drill failed: "
          + state.repositories.flatMap { r in r.failures.map { "\(r.name): \($0)" } }.joined(separator: "; "))
    }
  }
}
