// What a target that failed still lacks, as the cycle records it in state.json (pending snapshots and bytes).
import TidemarkCore

extension Cycle {
  /// What a target that failed this cycle still lacks. Snapshots: those of the DC newer than the target's newest
  /// (all of them when it never replicated). Bytes: the DC's pack bytes when it never replicated, else what it
  /// lacked before plus what this cycle's backups added (an upper bound: a failed run may have copied some).
  static func pending(
    _ t: inout EngineState.TargetState, dcSnapshots: [Snapshot], dcPackBytes: Int, addedThisCycle: Int
  ) {
    if let newest = t.newestSnapshot, let i = dcSnapshots.firstIndex(where: { $0.id?.hex == newest }) {
      t.pendingSnapshots = dcSnapshots.count - i - 1
    } else if let time = t.newestSnapshotTime {
      t.pendingSnapshots = dcSnapshots.filter { Double($0.time.seconds) > time }.count
    } else {
      t.pendingSnapshots = dcSnapshots.count
    }
    if t.lastSuccess == nil {
      t.pendingBytes = dcPackBytes
    } else {
      t.pendingBytes = min(dcPackBytes, (t.pendingBytes ?? 0) + addedThisCycle)
    }
  }
}
