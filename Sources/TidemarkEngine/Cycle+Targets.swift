// The cycle's targets: opening them, reading their roles, replicating into them, and what a failed one lacks.
import Foundation
import TidemarkBackends
import TidemarkCore
import TidemarkOperations

extension Cycle {
  func targetPassword(_ t: EngineConfig.Target, _ password: [UInt8]) async throws -> [UInt8] {
    guard let f = t.passwordFile else { return password }
    return try await PasswordSource(file: f).read(envPrefix: "TARGET_")
  }

  func targetBackend(_ t: EngineConfig.Target) throws -> any Backend {
    try BackendLocation.open(
      t.repository, options: t.options, uploadKiB: t.limitUploadKiB.flatMap { $0 > 0 ? $0 : nil },
      trust: TLSTrust(caFiles: t.caFiles), warn: { [logger] in logger.warning("\($0)") })
  }

  public func openTarget(_ t: EngineConfig.Target) async throws -> Repository {
    try await Repository.open(
      backend: try targetBackend(t), password: try await targetPassword(t, try await access.password()))
  }

  /// Each target's backend and site role, read in parallel before the cycle; an unreachable target has neither
  /// (replicating to it fails and is reported as usual).
  func probeTargets(_ repo: Repository) async -> [TargetProbe] {
    let key = repo.key
    return await withTaskGroup(of: TargetProbe.self) { g in
      for (i, t) in config.targets.enumerated() {
        g.addTask {
          var p = TargetProbe(index: i, name: t.name)
          do {
            let b = try targetBackend(t)
            p.backend = b
            p.state = try await Site.load(b, key: key)
          } catch {
            p.state = nil
          }
          return p
        }
      }
      var out: [TargetProbe] = []
      for await p in g { out.append(p) }
      return out.sorted { $0.index < $1.index }
    }
  }

  /// Creates the replica if needed and syncs it; returns the stats, the newest snapshot now on the target and the
  /// target as opened (with the source's master key).
  /// `newest`: the snapshot this cycle made; once the sync succeeded it is on the target (a successful sync
  /// copies every snapshot file), so the target's snapshots need not be loaded to know its newest.
  func replicate(
    _ repo: Repository, _ t: EngineConfig.Target, _ password: [UInt8], verifiedKey: KeyID?, newest made: Snapshot?,
    backend: (any Backend)? = nil, fullListing: Bool = true
  ) async throws -> (ReplicaStats, Snapshot?, Repository) {
    let target = try await Replica.create(
      source: repo, target: try backend ?? targetBackend(t), password: try await targetPassword(t, password),
      verifiedKey: verifiedKey)
    _ = try? await RepositoryLock.removeDead(target)  // as on the DC: a killed cycle's locks
    let stats: ReplicaStats
    do {
      stats = try await Replica.sync(source: repo, target: target, fullListing: fullListing)
    } catch let e as ReplicaError {
      throw e.error
    }
    let newest: Snapshot?
    if let made {
      newest = made
    } else {
      newest = try await target.listSnapshots().last
    }
    return (stats, newest, target)
  }

  /// What a target that failed this cycle still lacks. Snapshots: those of the DC newer than the target's newest
  /// (all of them when it never replicated). Bytes: the DC's pack bytes when it never replicated, else what it
  /// lacked before plus what this cycle's backups added (an upper bound: a failed run may have copied some).
  public static func pending(
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
