// The ransomware tripwire. Every new snapshot of this site's repository is compared with the one before it (same
// host and paths; see ChangeProfile): the share of files modified or deleted, and the share of the changed bytes
// that turned from compressible to incompressible. Ransomware shows as both: most files rewritten, and text,
// databases and documents turned into bytes that no longer compress. Beyond the thresholds of `tripwire:` the
// cycle fails with an alert that states the evidence. The snapshot itself is kept and replicated (it may hold the
// last good state of some files), but retention and prune are frozen, on this site and on every target, until
// someone has looked and runs `tidemark tripwire ack`: nothing that could be the way back is forgotten meanwhile.
import TidemarkCore
import TidemarkOperations

/// A tripped wire: retention and prune wait until it is acknowledged.
public struct TripwireFreeze: Codable, Sendable, Equatable {
  /// When it tripped (Unix seconds).
  public var since: Double
  /// The snapshot whose change profile tripped it (ID, hex).
  public var snapshot: String
  /// What was seen, as one line.
  public var evidence: String

  public init(since: Double, snapshot: String, evidence: String) {
    (self.since, self.snapshot, self.evidence) = (since, snapshot, evidence)
  }
}

public enum Tripwire {
  /// How many cycles' change shares the baseline remembers.
  public static let historyLength = 20

  /// The evidence when `p` trips the wire set by `config`, given the change shares of earlier snapshots; nil
  /// when it does not.
  public static func judge(_ p: ChangeProfile, history: [Double], config: EngineConfig.Tripwire) -> String? {
    guard config.enabled else { return nil }
    var evidence: [String] = []
    let changed = p.modified + p.deleted
    let usual = median(history)
    if changed >= config.minFiles, p.changedShare >= config.changedFiles,
      p.changedShare >= config.baseline * usual
    {
      evidence.append(
        "\(changed) of \(p.filesBefore) files (\(percent(p.changedShare))) modified or deleted, against a usual "
          + "\(percent(usual))")
    }
    if p.modified >= config.minFiles, p.incompressibleShare >= config.incompressible {
      evidence.append(
        "\(percent(p.incompressibleShare)) of the \(Human.bytes(Int64(p.changedBytes))) changed turned from "
          + "compressible to incompressible (encrypted?)")
    }
    return evidence.isEmpty ? nil : evidence.joined(separator: "; ")
  }

  static func median(_ xs: [Double]) -> Double {
    guard !xs.isEmpty else { return 0 }
    let s = xs.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
  }

  static func percent(_ x: Double) -> String {
    x >= 0.1 ? "\(Int((x * 100).rounded()))%" : "\(Double(Int((x * 1000).rounded())) / 10)%"
  }

  /// `tidemark tripwire ack`: lifts the freeze and accepts the snapshots the guard found implausible (they count
  /// towards retention from now on). Returns what was lifted and accepted. Waits for no cycle: while one runs,
  /// it fails with `.locked`.
  public static func acknowledge(_ stateDir: StateDirectory) throws -> (freeze: TripwireFreeze?, accepted: [String]) {
    try stateDir.prepare()
    let lock = try stateDir.lockCycle()
    defer { lock.release() }
    var state = stateDir.loadState()
    let freeze = state.tripwire
    let accepted = state.implausibleSnapshots ?? []
    state.tripwire = nil
    state.acceptedSnapshots = Array(Set((state.acceptedSnapshots ?? []) + accepted)).sorted()
    state.implausibleSnapshots = []
    try stateDir.save(state)
    return (freeze, accepted)
  }
}
