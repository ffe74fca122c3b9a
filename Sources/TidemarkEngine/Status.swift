// What `tidemark status` reports and its exit code for monitoring checks: per target (from the state) or per
// host (from a repository), the lag of the newest snapshot against the RPO: OK within it, WARN above it, CRIT
// above twice it, never replicated, or after a failed cycle. A failed last drill is a warning.
import Foundation
import TidemarkCore

public enum Health: Int, Sendable, Comparable {
  case ok = 0
  case warn, crit

  public var label: String { ["OK", "WARN", "CRIT"][rawValue] }

  public static func < (a: Health, b: Health) -> Bool { a.rawValue < b.rawValue }

  /// The level of a lag (nil: nothing replicated yet) against the RPO.
  public static func of(lag: Double?, rpo: Double) -> Health {
    guard let lag else { return .crit }
    return lag > 2 * rpo ? .crit : (lag > rpo ? .warn : .ok)
  }
}

public enum StatusReport {
  public struct Target: Sendable {
    public var state: EngineState.TargetState
    public var lag: Double?
    public var health: Health
  }

  /// The configuration's targets as its state records them, and the overall level.
  public static func targets(_ state: EngineState, drill: DrillState?, now: Double, rpo: Double) -> (
    targets: [Target], health: Health
  ) {
    var level: Health = state.lastCycleSuccess || state.cycles == 0 ? .ok : .crit
    if state.targets.isEmpty && state.cycles == 0 { level = .crit }
    let out = state.targets.map { t -> Target in
      let lag = t.newestSnapshotTime.map { max(0, now - $0) }
      return Target(state: t, lag: lag, health: Health.of(lag: lag, rpo: rpo))
    }
    level = max(level, out.map(\.health).max() ?? .ok)
    if let d = drill, !d.ok { level = max(level, .warn) }
    if state.tripwire != nil || !(state.implausibleSnapshots ?? []).isEmpty { level = .crit }
    return (out, level)
  }

  /// The RPO in seconds: `option` (a duration such as 90s, 15m, 1h), else the configuration's alerts.rpo, else 15
  /// minutes; the same default the alerts use, so `status` and the alerts agree on what is late.
  public static func rpoSeconds(_ option: String?, config: EngineConfig?) throws -> Double {
    if let r = option {
      guard let d = EngineConfig.parseDuration(r), d > .zero else {
        throw TidemarkError(.usage, "invalid duration \(r) for --rpo", hint: "use e.g. 90s, 15m, 1h")
      }
      return d.inSeconds
    }
    return Double((config?.alerts.rpo ?? .seconds(900)).components.seconds)
  }

  public struct Host: Sendable {
    public var name: String
    public var newest: Snapshot?
    public var snapshots: Int
    public var time: Double?
    public var lag: Double?
    public var health: Health
  }

  /// Per host (`only`, else every host of `snapshots`, oldest first), the newest snapshot and its lag; no host at
  /// all is CRIT.
  public static func hosts(_ snapshots: [Snapshot], only: [String], now: Double, rpo: Double) -> (
    hosts: [Host], health: Health
  ) {
    var byHost: [String: [Snapshot]] = [:]
    for s in snapshots { byHost[s.hostname, default: []].append(s) }
    var names: [String] = []
    for h in only.isEmpty ? byHost.keys.sorted() : only where !names.contains(h) { names.append(h) }
    var level: Health = names.isEmpty ? .crit : .ok
    let out = names.map { name -> Host in
      let newest = byHost[name]?.last
      let time = newest.map { Double($0.time.seconds) + Double($0.time.nanoseconds) / 1e9 }
      let lag = time.map { max(0, now - $0) }
      let h = Health.of(lag: lag, rpo: rpo)
      level = max(level, h)
      return Host(name: name, newest: newest, snapshots: byHost[name]?.count ?? 0, time: time, lag: lag, health: h)
    }
    return (out, level)
  }

  /// `tidemark status --json` from the state: the last cycle, every target with its lag and level, the last drill
  /// and this site's role; monitoring reads these keys.
  public static func json(_ state: EngineState, targets: [Target], drill: DrillState?, rpo: Double, health: Health)
    -> [UInt8]
  {
    var w = JSONWriter()
    w.raw("{\"cycles\":\(state.cycles),\"last_cycle_success\":\(state.lastCycleSuccess),\"rpo_seconds\":\(Int(rpo))")
    if let e = state.lastCycleError {
      w.raw(",\"last_cycle_error\":")
      w.string(e)
    }
    if let t = state.lastCycleEnd { w.raw(",\"last_cycle_end\":\(Int(t))") }
    if let t = state.lastPrune { w.raw(",\"last_prune\":\(Int(t))") }
    w.raw(",\"pruned_bytes_total\":\(state.prunedBytesTotal)")
    if let f = state.tripwire {
      w.raw(",\"tripwire\":{\"since\":\(Int(f.since)),\"snapshot\":")
      w.string(f.snapshot)
      w.raw(",\"evidence\":")
      w.string(f.evidence)
      w.raw("}")
    }
    if let j = state.journal {
      w.raw(",\"journal\":{\"active\":\(j.active),\"last_backup\":")
      w.string(j.lastBackup)
      if let u = j.unavailable {
        w.raw(",\"unavailable\":")
        w.string(u)
      }
      if let r = j.lastWalkReason {
        w.raw(",\"last_walk_reason\":")
        w.string(r)
      }
      w.raw(
        ",\"dirty_directories\":\(j.dirtyDirectories),\"pending_directories\":\(j.pendingDirectories),\"events\":\(j.events),\"events_per_second\":"
      )
      w.number(j.eventsPerSecond)
      w.raw(",\"overflows\":\(j.overflows),\"full_scans\":\(j.fullScans),\"journal_backups\":\(j.journalBackups)")
      if let t = j.lastFullScan { w.raw(",\"last_full_scan\":\(Int(t))") }
      w.raw("}")
    }
    if let ids = state.implausibleSnapshots, !ids.isEmpty {
      w.raw(",\"implausible_snapshots\":[")
      for (i, id) in ids.enumerated() {
        if i > 0 { w.comma() }
        w.string(id)
      }
      w.raw("]")
    }
    w.raw(",\"targets\":[")
    for (i, r) in targets.enumerated() {
      let t = r.state
      if i > 0 { w.comma() }
      w.raw("{\"name\":")
      w.string(t.name)
      w.raw(",\"repository\":")
      w.string(t.repository)
      if let s = t.newestSnapshot { w.raw(",\"newest_snapshot\":\"\(s)\"") }
      if let lag = r.lag { w.raw(",\"lag_seconds\":\(Int(lag))") }
      if let s = t.lastSuccess { w.raw(",\"last_success\":\(Int(s))") }
      if let e = t.lastError {
        w.raw(",\"last_error\":")
        w.string(e)
      }
      w.raw(",\"consecutive_failures\":\(t.consecutiveFailures),\"bytes_copied_total\":\(t.bytesCopiedTotal)")
      if let n = t.pendingSnapshots { w.raw(",\"pending_snapshots\":\(n)") }
      if let n = t.pendingBytes { w.raw(",\"pending_bytes\":\(n)") }
      w.raw(",\"status\":\"\(r.health.label)\"}")
    }
    w.raw("]")
    // The last drill: a failed one is a warning (the data may not be recoverable as it is).
    if let d = drill {
      let rto = d.repositories.map(\.rtoSeconds).max() ?? 0
      w.raw(",\"last_drill\":{\"ok\":\(d.ok),\"end\":\(Int(d.end)),\"rto_seconds\":\(String(format: "%.3f", rto))}")
    }
    if let role = state.siteRole, let epoch = state.siteEpoch { w.raw(",\"role\":\"\(role)\",\"epoch\":\(epoch)") }
    w.raw(",\"status\":\"\(health.label)\"}\n")
    return w.out
  }

  /// `tidemark status -r REPO --json`: per host its newest snapshot, lag and level, and the overall level.
  public static func json(repository: String, hosts: [Host], rpo: Double, health: Health) -> [UInt8] {
    var w = JSONWriter()
    w.raw("{\"repository\":")
    w.string(repository)
    w.raw(",\"rpo_seconds\":\(Int(rpo)),\"hosts\":[")
    for (i, h) in hosts.enumerated() {
      if i > 0 { w.comma() }
      w.raw("{\"host\":")
      w.string(h.name)
      if let id = h.newest?.id { w.raw(",\"newest_snapshot\":\"\(id.hex)\"") }
      if let time = h.time { w.raw(",\"snapshot_time\":\(Int(time))") }
      if let lag = h.lag { w.raw(",\"lag_seconds\":\(Int(lag))") }
      w.raw(",\"snapshots\":\(h.snapshots),\"status\":\"\(h.health.label)\"}")
    }
    w.raw("],\"status\":\"\(health.label)\"}\n")
    return w.out
  }
}
