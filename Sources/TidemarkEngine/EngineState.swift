// What the last cycles did, per target: `state.json` in the configuration's state directory (see
// StateDirectory), written atomically after every cycle and read by `status`, the metrics and the alerts.
import Foundation
import TidemarkCore
import TidemarkSystem

/// The engine's record of its cycles; every field is optional or defaulted so that older files still decode.
public struct EngineState: Codable, Sendable {
  public struct TargetState: Codable, Sendable {
    public var name: String
    public var repository: String
    /// The newest snapshot known to be fully on the target, and its capture time (Unix seconds).
    public var newestSnapshot: String?
    public var newestSnapshotTime: Double?
    public var lastSuccess: Double?
    public var lastError: String?
    public var consecutiveFailures = 0
    public var bytesCopiedLast = 0
    public var bytesCopiedTotal = 0
    /// The target's key file that opened with the target password (checked again when it disappears).
    public var keyID: String?
    /// When a sync last compared every pack on both sides (see `Cycle.fullListingEvery`).
    public var lastFullSync: Double?
    /// What the target still lacks (0 after a successful sync; see `Cycle.pending` for a failed one).
    public var pendingSnapshots: Int?
    public var pendingBytes: Int?
    /// Prune on this target: last run, bytes it freed.
    public var lastPrune: Double?
    public var lastPruneFreedBytes: Int?

    public init(name: String, repository: String) {
      self.name = name
      self.repository = repository
    }
  }
  public var lastCycleStart: Double?
  public var lastCycleEnd: Double?
  public var lastCycleSuccess = false
  public var lastCycleError: String?
  public var lastSnapshot: String?
  public var lastSnapshotTime: Double?
  public var backupBytesAdded = 0
  public var repositorySizeBytes = 0
  public var cycles = 0
  public var cyclesSkipped = 0
  public var targets: [TargetState] = []

  /// The Prometheus metrics of this state (for `metrics.textfile`, the pushgateway and the daemon's /metrics).
  public func metricFamilies(now: Double) -> [MetricFamily] {
    func target(_ t: TargetState, _ v: Double) -> MetricSample { MetricSample(labels: [("target", t.name)], value: v) }
    var f: [MetricFamily] = [
      .gauge(
        "tidemark_replication_lag_seconds", "Now minus the capture time of the newest snapshot on the target.",
        targets.compactMap { t in t.newestSnapshotTime.map { target(t, max(0, now - $0)) } }),
      .counter(
        "tidemark_replicated_bytes_total", "Bytes copied to the target by replication.",
        targets.map { target($0, Double($0.bytesCopiedTotal)) }),
      .gauge(
        "tidemark_target_consecutive_failures", "Failed replications to the target since its last success.",
        targets.map { target($0, Double($0.consecutiveFailures)) }),
      .gauge(
        "tidemark_target_pending_snapshots", "Snapshots on the DC not yet on the target (as of the last cycle).",
        targets.compactMap { t in t.pendingSnapshots.map { target(t, Double($0)) } }),
      .gauge(
        "tidemark_target_pending_bytes", "Pack bytes on the DC not yet on the target (an upper bound).",
        targets.compactMap { t in t.pendingBytes.map { target(t, Double($0)) } }),
    ]
    if let a = lastCycleStart, let b = lastCycleEnd {
      f.append(.gauge("tidemark_cycle_duration_seconds", "Duration of the last cycle.", [MetricSample(b - a)]))
    }
    f += [
      .gauge("tidemark_cycle_success", "1 when the last cycle succeeded.", [MetricSample(lastCycleSuccess ? 1 : 0)]),
      .counter("tidemark_cycles_total", "Cycles run.", [MetricSample(Double(cycles))]),
      .counter(
        "tidemark_cycles_skipped_total", "Cycles skipped because the previous one overran.",
        [MetricSample(Double(cyclesSkipped))]),
      .gauge(
        "tidemark_backup_bytes_added", "Bytes the last backup added to the repository.",
        [MetricSample(Double(backupBytesAdded))]),
    ]
    if let t = lastSuccess {
      f.append(
        .gauge("tidemark_last_success_timestamp_seconds", "When the last successful cycle ended.", [MetricSample(t)]))
    }
    f.append(
      .gauge(
        "tidemark_repository_size_bytes", "Size of the DC repository's packs.",
        [MetricSample(Double(repositorySizeBytes))]))
    if let t = lastPrune {
      f.append(.gauge("tidemark_prune_last_timestamp_seconds", "When prune last started on the DC.", [MetricSample(t)]))
    }
    if let d = lastPruneDuration {
      f.append(.gauge("tidemark_prune_duration_seconds", "Duration of the last prune.", [MetricSample(d)]))
    }
    if let b = lastPruneFreedBytes {
      f.append(.gauge("tidemark_prune_freed_bytes", "Bytes the last prune freed on the DC.", [MetricSample(Double(b))]))
    }
    f.append(
      .counter(
        "tidemark_pruned_bytes_total", "Bytes freed by prune, on the DC and every target.",
        [MetricSample(Double(prunedBytesTotal))]))
    f.append(
      .gauge(
        "tidemark_target_prune_freed_bytes", "Bytes the last prune freed on the target.",
        targets.compactMap { t in t.lastPruneFreedBytes.map { target(t, Double($0)) } }))
    if let n = indexFiles {
      f.append(.gauge("tidemark_index_files", "Index files in the DC repository.", [MetricSample(Double(n))]))
    }
    f.append(
      .gauge(
        "tidemark_tripwire_frozen",
        "Whether the ransomware tripwire holds retention and prune (1) until `tidemark tripwire ack`.",
        [MetricSample(tripwire == nil ? 0 : 1)]))
    if let forged = implausibleSnapshots {
      f.append(
        .gauge(
          "tidemark_implausible_snapshots",
          "Snapshots dated later than this site first saw them (forged times?): kept, not counted by retention.",
          [MetricSample(Double(forged.count))]))
    }
    if let j = journal {
      f += [
        .gauge(
          "tidemark_journal_active", "1 when a change journal (fanotify) drives backups; 0: full walks (see status).",
          [MetricSample(j.active ? 1 : 0)]),
        .counter("tidemark_journal_events_total", "Change events the journal read.", [MetricSample(Double(j.events))]),
        .gauge(
          "tidemark_journal_events_per_second", "Change events per second between the last two backups.",
          [MetricSample(j.eventsPerSecond)]),
        .gauge(
          "tidemark_journal_dirty_directories",
          "Directories the last backup read again because the journal named them.",
          [MetricSample(Double(j.dirtyDirectories))]),
        .counter(
          "tidemark_journal_overflows_total", "Times the kernel's event queue overflowed (a full walk followed).",
          [MetricSample(Double(j.overflows))]),
        .counter(
          "tidemark_full_scans_total", "Backups that walked the path sources in full.",
          [MetricSample(Double(j.fullScans))]),
        .counter(
          "tidemark_journal_backups_total", "Backups driven by the change journal.",
          [MetricSample(Double(j.journalBackups))]),
      ]
    }
    if let role = siteRole, let epoch = siteEpoch {
      f.append(
        .gauge(
          "tidemark_site_primary", "1 when this site is the primary (runs the cycles).",
          [MetricSample(role == "primary" ? 1 : 0)]))
      f.append(
        .gauge(
          "tidemark_site_epoch", "This site's fencing epoch (raised by every failover and promote).",
          [MetricSample(Double(epoch))]))
    }
    return f
  }

  public var lastSuccess: Double?
  /// This site's role and fencing epoch as the last cycle read them (see Site); a fenced site keeps its role
  /// here until it is demoted.
  public var siteRole: String?
  public var siteEpoch: Int?

  /// Prune on the DC: when it last ran (its start), how long it took, what it freed; `prunedBytesTotal` counts
  /// every side (the DC and the targets).
  public var lastPrune: Double?
  public var lastPruneDuration: Double?
  public var lastPruneFreedBytes: Int?
  public var prunedBytesTotal = 0
  public var lastPruneError: String?
  /// Index files on the DC after the last cycle.
  public var indexFiles: Int?
  /// When this site first listed each snapshot of its own repository (ID → Unix time), and the snapshots dated
  /// implausibly far after that (see SnapshotGuard).
  public var snapshotsFirstSeen: [String: Double]?
  public var implausibleSnapshots: [String]?
  /// Implausible snapshots someone accepted as genuine (`tidemark tripwire ack`).
  public var acceptedSnapshots: [String]?
  /// When the snapshot guard last listed the repository.
  public var snapshotsChecked: Double?
  /// The tripwire (see Tripwire): the share of files changed by each of the last cycles' snapshots, and the
  /// freeze it set, if any: retention and prune wait until `tidemark tripwire ack`.
  public var changeHistory: [Double]?
  public var tripwire: TripwireFreeze?
  /// The daemon's change journal over the path sources, as of the last cycle (nil: no journal was kept, e.g.
  /// `replicate --once`).
  public var journal: JournalReport?

  public struct JournalReport: Codable, Sendable, Equatable {
    /// The journal runs (false: every backup walks the sources; `unavailable` says why).
    public var active: Bool
    public var unavailable: String?
    /// How the last backup found the changes: "journal" or "walk".
    public var lastBackup: String
    /// Why the last backup walked the sources in full.
    public var lastWalkReason: String?
    /// Directories the last backup read again because the journal named them.
    public var dirtyDirectories: Int
    /// Directories recorded since the last backup.
    public var pendingDirectories: Int
    public var events: Int
    public var overflows: Int
    public var eventsPerSecond: Double
    public var fullScans: Int
    public var journalBackups: Int
    public var lastFullScan: Double?
  }

  public init() {}
}
