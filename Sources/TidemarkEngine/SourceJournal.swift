// The daemon's change journal over a configuration's path sources (see ChangeJournal), and what a cycle needs to
// trust it: the snapshot whose backup started right after the changes were last taken (the baseline), when the
// sources were last walked in full, and whether their tree holds files with several names. A cycle backs up
// from the journal when all of that holds; otherwise it walks in full and says why (no journal, no baseline
// yet after a start, a full scan due, the journal in doubt, a failed or incomplete backup before).
import Foundation
import Synchronization
import TidemarkCore
import TidemarkOperations
import TidemarkSystem

public final class SourceJournal: Sendable {
  struct State {
    var baseline: SnapshotID? = nil
    var lastFullScan: Double? = nil
    var hardLinks = true
    var lastMode = "walk"
    var lastReason: String? = nil
    var lastDirty = 0
    var fullScans = 0
    var journalBackups = 0
    var eventsAtLastTake = 0
    var lastTake: Double? = nil
    var eventsPerSecond = 0.0
  }

  /// Nil when the journal could not start (`unavailable` says why).
  public let journal: ChangeJournal?
  public let unavailable: String?
  public let paths: [String]
  let state = Mutex(State())

  /// Starts a journal over `paths`; `onChange` is called at the first change after each backup, except for
  /// changes under `quiet` (the daemon's own state directory and a local repository: its own writes must not
  /// start cycles).
  public init(paths: [String], quiet: [String] = [], onChange: (@Sendable () -> Void)? = nil) {
    self.paths = paths
    do {
      journal = try ChangeJournal(
        roots: paths.map { BytePath($0).absolute() }, quiet: quiet.map { BytePath($0).absolute() },
        onChange: onChange)
      unavailable = nil
    } catch {
      journal = nil
      unavailable = error.description
    }
  }

  public func close() { journal?.close() }

  /// What the next backup should do: the changes to back up from, or nil and why the sources are walked in full.
  /// Takes the journal's changes either way: a full walk that starts now covers them.
  func plan(now: Double, fullScan: Double) async throws -> (
    changes: ChangeJournal.Changes?, parent: SnapshotID?, why: String?
  ) {
    guard let journal else { return (nil, nil, "no change journal: \(unavailable ?? "off")") }
    // Turning handles into paths is a system call or two per directory: off the cooperative pool.
    let changes = try await Blocking.run { journal.take() }
    let total = journal.counters.events
    return state.withLock { s in
      if let t = s.lastTake, now > t { s.eventsPerSecond = Double(total - s.eventsAtLastTake) / (now - t) }
      s.lastTake = now
      s.eventsAtLastTake = total
      s.lastDirty = changes.dirty.count + changes.fresh.count
      guard let baseline = s.baseline else { return (nil, nil, "the first backup since the journal started") }
      guard let last = s.lastFullScan, now - last < fullScan else { return (nil, nil, "a full scan is due") }
      if let doubt = changes.doubt { return (nil, nil, doubt) }
      return (changes, baseline, nil)
    }
  }

  var hardLinks: Bool { state.withLock { $0.hardLinks } }

  /// After a backup that started at `start`: it is the next one's baseline unless some files could not be read
  /// (a full walk tries them again).
  func finished(_ r: BackupResult, start: Double, fallback: String?) {
    state.withLock { s in
      s.baseline = r.stats.errors.isEmpty ? r.snapshotID : nil
      if r.fromJournal {
        s.journalBackups += 1
        s.hardLinks = s.hardLinks || r.sawHardLinks
        s.lastMode = "journal"
        s.lastReason = nil
      } else {
        s.fullScans += 1
        s.lastFullScan = start
        s.hardLinks = r.sawHardLinks
        s.lastMode = "walk"
        s.lastReason = fallback
      }
    }
  }

  /// A backup failed: the next one walks in full.
  func failed() { state.withLock { $0.baseline = nil } }

  /// The journal's part of the state (status, metrics).
  var report: EngineState.JournalReport {
    let counters = journal?.counters
    return state.withLock { s in
      EngineState.JournalReport(
        active: journal != nil, unavailable: unavailable, lastBackup: s.lastMode, lastWalkReason: s.lastReason,
        dirtyDirectories: s.lastDirty, pendingDirectories: counters?.pendingDirectories ?? 0,
        events: counters?.events ?? 0, overflows: counters?.overflows ?? 0, eventsPerSecond: s.eventsPerSecond,
        fullScans: s.fullScans, journalBackups: s.journalBackups, lastFullScan: s.lastFullScan)
    }
  }
}
