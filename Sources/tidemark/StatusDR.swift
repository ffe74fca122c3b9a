// `tidemark status -r REPO`: the RPO seen from the DR side, from the repository alone (no state file of the DC).
import ArgumentParser
import Foundation
import TidemarkCore
import TidemarkEngine
import TidemarkOperations

extension StatusCommand {
  /// The repository `status` reads directly: -r/--repo, or TIDEMARK_REPOSITORY/RESTIC_REPOSITORY when no engine
  /// configuration is named (--config, TIDEMARK_CONFIG). nil: the state-file mode.
  var repositoryMode: String? {
    if let r = global.repo { return r }
    let configured = global.config != nil || !(ProcessInfo.processInfo.environment["TIDEMARK_CONFIG"] ?? "").isEmpty
    return configured ? nil : GlobalOptions.env("REPOSITORY")
  }

  /// Per host, the newest snapshot in the repository and its lag against the RPO. Read-only: takes no lock
  /// (snapshot files are written atomically, so a concurrent replication or backup cannot be seen half-done).
  func runOnRepository(_ location: String, rpo: Double) async throws {
    let repo = try await global.open()
    let (list, health) = StatusReport.hosts(
      try await repo.listSnapshots(), only: hosts, now: Date().timeIntervalSince1970, rpo: rpo)
    let names = list.map(\.name)
    let level = health.rawValue
    let rows = list.map { h in
      [
        h.name, h.newest?.id.map { String($0.hex.prefix(8)) } ?? "-", h.newest.map { Out.time($0.time) } ?? "-",
        h.lag.map { Out.duration($0) } ?? "never", h.health.label,
      ]
    }
    if global.json {
      Out.raw(StatusReport.json(repository: repo.backend.location, hosts: list, rpo: rpo, health: health))
    } else {
      printTable(header: ["Host", "Newest", "Time", "Lag", "Status"], rows: rows)
      let what =
        names.isEmpty
        ? "no snapshots" + (hosts.isEmpty ? "" : " of \(hosts.joined(separator: ", "))")
        : "\(names.count) host\(names.count == 1 ? "" : "s")"
      Out.line("\(health.label): \(what) in \(repo.backend.location), RPO \(Out.duration(rpo))")
    }
    if level > 0 { throw ExitCode(Int32(level)) }
  }
}
