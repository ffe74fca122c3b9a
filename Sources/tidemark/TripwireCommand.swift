// `tidemark tripwire ack`: lifts the ransomware tripwire's freeze after someone has looked (see Tripwire).
import ArgumentParser
import Foundation
import TidemarkCore
import TidemarkEngine

struct TripwireCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "tripwire",
    abstract: "Acknowledge the ransomware tripwire and the snapshot guard's findings.",
    discussion: """
      Each cycle compares every new snapshot with the one before it: the share of files modified or deleted, \
      and the share of changed bytes that turned from compressible to incompressible. Beyond the thresholds of \
      `tripwire:` the cycle fails with an alert; the snapshot is kept and replicated, and retention and prune \
      are frozen on this site and on every target until `tidemark tripwire ack`. The snapshot guard's \
      implausible snapshots (forged times) are also listed in the alert: `ack` accepts them as genuine, so that \
      retention counts them again. Look first: `tidemark diff` against the snapshot before, `tidemark mount`.
      """,
    subcommands: [Ack.self])

  struct Ack: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Lift the tripwire's freeze and accept the snapshots the guard found implausible.")
    @OptionGroup var global: GlobalOptions

    func run() throws {
      guard let config = try global.engineConfig() else {
        throw TidemarkError(
          .usage, "tripwire ack needs a configuration", hint: "pass --config FILE (or set TIDEMARK_CONFIG)")
      }
      let (freeze, accepted) = try Tripwire.acknowledge(StateDirectory.of(config))
      if global.json {
        var w = JSONWriter()
        w.raw("{\"lifted\":\(freeze != nil),\"accepted_snapshots\":[")
        for (i, id) in accepted.enumerated() {
          if i > 0 { w.raw(",") }
          w.string(id)
        }
        w.raw("]}\n")
        Out.raw(w.out)
        return
      }
      if let freeze {
        Out.line(
          "tripwire lifted: snapshot \(freeze.snapshot.prefix(8)) (\(freeze.evidence)); retention and prune run "
            + "again from the next cycle")
      } else {
        Out.line("the tripwire was not set")
      }
      if !accepted.isEmpty {
        Out.line("accepted as genuine: \(accepted.map { String($0.prefix(8)) }.joined(separator: ", "))")
      }
    }
  }
}
