// StatusReport's and SiteContext's JSON documents: the keys, their order and the whole-second numbers that
// `tidemark status --json` and `tidemark role --json` print for monitoring.
import Testing
import TidemarkCore

@testable import TidemarkEngine

struct StatusReportTests {
  static func text(_ b: [UInt8]) -> String { String(decoding: b, as: UTF8.self) }

  @Test func targetsJSONReportsLagAndLevelPerTarget() {
    var state = EngineState()
    state.cycles = 3
    state.lastCycleSuccess = true
    var t = EngineState.TargetState(name: "dr", repository: "sftp:dr:/r")
    t.newestSnapshot = "abc"
    t.newestSnapshotTime = 1000
    t.pendingSnapshots = 0
    state.targets = [t]
    let (targets, health) = StatusReport.targets(state, drill: nil, now: 1000 + 1200.7, rpo: 900)
    #expect(health == .warn)
    #expect(
      Self.text(StatusReport.json(state, targets: targets, drill: nil, rpo: 900, health: health))
        == "{\"cycles\":3,\"last_cycle_success\":true,\"rpo_seconds\":900,\"pruned_bytes_total\":0,\"targets\":["
        + "{\"name\":\"dr\",\"repository\":\"sftp:dr:/r\",\"newest_snapshot\":\"abc\",\"lag_seconds\":1200,"
        + "\"consecutive_failures\":0,\"bytes_copied_total\":0,\"pending_snapshots\":0,\"status\":\"WARN\"}],"
        + "\"status\":\"WARN\"}\n")
  }

  @Test func aTrippedWireAndImplausibleSnapshotsAreCriticalAndInTheJSON() {
    var state = EngineState()
    state.cycles = 1
    state.lastCycleSuccess = true
    state.tripwire = TripwireFreeze(since: 1000.4, snapshot: "4f1c", evidence: "160 of 200 files")
    state.implausibleSnapshots = ["aa", "bb"]
    let (targets, health) = StatusReport.targets(state, drill: nil, now: 2000, rpo: 900)
    #expect(health == .crit)
    #expect(
      Self.text(StatusReport.json(state, targets: targets, drill: nil, rpo: 900, health: health))
        == "{\"cycles\":1,\"last_cycle_success\":true,\"rpo_seconds\":900,\"pruned_bytes_total\":0,"
        + "\"tripwire\":{\"since\":1000,\"snapshot\":\"4f1c\",\"evidence\":\"160 of 200 files\"},"
        + "\"implausible_snapshots\":[\"aa\",\"bb\"],\"targets\":[],\"status\":\"CRIT\"}\n")
  }

  @Test func theJournalIsInTheJSONAndTheMetrics() {
    var state = EngineState()
    state.cycles = 2
    state.lastCycleSuccess = true
    state.journal = EngineState.JournalReport(
      active: true, unavailable: nil, lastBackup: "walk", lastWalkReason: "a full scan is due", dirtyDirectories: 3,
      pendingDirectories: 1, events: 40, overflows: 1, eventsPerSecond: 2.5, fullScans: 2, journalBackups: 7,
      lastFullScan: 1500.2)
    let (targets, health) = StatusReport.targets(state, drill: nil, now: 2000, rpo: 900)
    #expect(
      Self.text(StatusReport.json(state, targets: targets, drill: nil, rpo: 900, health: health))
        == "{\"cycles\":2,\"last_cycle_success\":true,\"rpo_seconds\":900,\"pruned_bytes_total\":0,"
        + "\"journal\":{\"active\":true,\"last_backup\":\"walk\",\"last_walk_reason\":\"a full scan is due\","
        + "\"dirty_directories\":3,\"pending_directories\":1,\"events\":40,\"events_per_second\":2.5,\"overflows\":1,"
        + "\"full_scans\":2,\"journal_backups\":7,\"last_full_scan\":1500},\"targets\":[],\"status\":\"OK\"}\n")
    let names = state.metricFamilies(now: 2000).map(\.name)
    for m in [
      "tidemark_journal_active", "tidemark_journal_events_total", "tidemark_journal_events_per_second",
      "tidemark_journal_dirty_directories", "tidemark_journal_overflows_total", "tidemark_full_scans_total",
      "tidemark_journal_backups_total",
    ] {
      #expect(names.contains(m), "\(m)")
    }
    // Without a journal (one cycle from the command line) the document and the metrics are as before.
    state.journal = nil
    #expect(
      !Self.text(StatusReport.json(state, targets: targets, drill: nil, rpo: 900, health: health)).contains("journal"))
    #expect(!state.metricFamilies(now: 2000).contains { $0.name.hasPrefix("tidemark_journal") })
  }

  @Test func hostsJSONMakesAnEmptyRepositoryCritical() {
    let (hosts, health) = StatusReport.hosts([], only: ["db1"], now: 5000, rpo: 60)
    #expect(
      Self.text(StatusReport.json(repository: "/srv/r", hosts: hosts, rpo: 60, health: health))
        == "{\"repository\":\"/srv/r\",\"rpo_seconds\":60,\"hosts\":[{\"host\":\"db1\",\"snapshots\":0,"
        + "\"status\":\"CRIT\"}],\"status\":\"CRIT\"}\n")
  }

  @Test func roleJSONShowsHistoryAndUnreachableTargets() {
    let own = SiteState(history: [SiteRecord(seq: 1, epoch: 2, role: .primary, reason: "failover")])
    let r = own.history[0]
    let peer = SiteContext.Peer(name: "dc", location: "/dc", state: nil, error: "timeout", snapshots: nil)
    #expect(
      Self.text(SiteContext.roleJSON(own: own, peers: [peer]))
        == "{\"site\":{\"role\":\"primary\",\"epoch\":2,\"since\":\"\(r.time)\"},\"history\":[{\"seq\":1,"
        + "\"epoch\":2,\"role\":\"primary\",\"reason\":\"failover\",\"hostname\":\"\(r.hostname)\","
        + "\"time\":\"\(r.time)\"}],\"targets\":[{\"name\":\"dc\",\"site\":null,\"error\":\"timeout\"}]}\n")
  }

  @Test func rpoComesFromTheOptionElseFifteenMinutes() throws {
    #expect(try StatusReport.rpoSeconds("90s", config: nil) == 90)
    #expect(try StatusReport.rpoSeconds(nil, config: nil) == 900)
    #expect(throws: TidemarkError.self) { try StatusReport.rpoSeconds("0s", config: nil) }
    #expect(throws: TidemarkError.self) { try StatusReport.rpoSeconds("soon", config: nil) }
  }
}
