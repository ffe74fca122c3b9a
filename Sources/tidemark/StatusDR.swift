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

  /// --rpo, else alerts.rpo of the configuration, else 15 minutes; in seconds.
  func rpoSeconds(_ config: EngineConfig?) throws -> Double {
    if let r = rpo {
      guard let d = EngineConfig.parseDuration(r), d > .zero else {
        throw TidemarkError(.usage, "invalid duration \(r) for --rpo", hint: "use e.g. 90s, 15m, 1h")
      }
      return Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }
    return Double((config?.alerts.rpo ?? .seconds(900)).components.seconds)
  }

  /// Per host, the newest snapshot in the repository and its lag against the RPO. Read-only: takes no lock
  /// (snapshot files are written atomically, so a concurrent replication or backup cannot be seen half-done).
  func runOnRepository(_ location: String, rpo: Double) async throws {
    let repo = try await global.open()
    let snapshots = try await repo.listSnapshots()  // oldest first
    var byHost: [String: [Snapshot]] = [:]
    for s in snapshots { byHost[s.hostname, default: []].append(s) }
    var names: [String] = []
    for h in hosts.isEmpty ? byHost.keys.sorted() : hosts where !names.contains(h) { names.append(h) }
    let now = Date().timeIntervalSince1970
    let labels = ["OK", "WARN", "CRIT"]
    var level = names.isEmpty ? 2 : 0
    var rows: [[String]] = []
    var w = JSONWriter()
    w.raw("{\"repository\":")
    w.string(repo.backend.location)
    w.raw(",\"rpo_seconds\":\(Int(rpo)),\"hosts\":[")
    for (i, host) in names.enumerated() {
      let newest = byHost[host]?.last
      let time = newest.map { Double($0.time.seconds) + Double($0.time.nanoseconds) / 1e9 }
      let lag = time.map { max(0, now - $0) }
      let l = lag.map { $0 > 2 * rpo ? 2 : ($0 > rpo ? 1 : 0) } ?? 2
      level = max(level, l)
      if i > 0 { w.comma() }
      w.raw("{\"host\":")
      w.string(host)
      if let id = newest?.id { w.raw(",\"newest_snapshot\":\"\(id.hex)\"") }
      if let time { w.raw(",\"snapshot_time\":\(Int(time))") }
      if let lag { w.raw(",\"lag_seconds\":\(Int(lag))") }
      w.raw(",\"snapshots\":\(byHost[host]?.count ?? 0),\"status\":\"\(labels[l])\"}")
      rows.append([
        host, newest?.id.map { String($0.hex.prefix(8)) } ?? "-", newest.map { Out.time($0.time) } ?? "-",
        lag.map { Out.duration($0) } ?? "never", labels[l],
      ])
    }
    w.raw("],\"status\":\"\(labels[level])\"}\n")
    if global.json {
      Out.raw(w.out)
    } else {
      printTable(header: ["Host", "Newest", "Time", "Lag", "Status"], rows: rows)
      let what =
        names.isEmpty
        ? "no snapshots" + (hosts.isEmpty ? "" : " of \(hosts.joined(separator: ", "))")
        : "\(names.count) host\(names.count == 1 ? "" : "s")"
      Out.line("\(labels[level]): \(what) in \(repo.backend.location), RPO \(Out.duration(rpo))")
    }
    if level > 0 { throw ExitCode(Int32(level)) }
  }
}
