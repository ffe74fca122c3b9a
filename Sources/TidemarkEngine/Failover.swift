// Failover and role reversal: the rules behind `tidemark failover`, `promote`, `demote` and `role`. The role and
// fencing epoch live in each site's repository (see Site); the replication cycle checks them.
import Foundation
import Logging
import TidemarkCore
import TidemarkOperations
import TidemarkSystem

/// This site's repository and configuration, and what its targets (the other sites) say about themselves.
public struct SiteContext: Sendable {
  public let cycle: Cycle
  public let repo: Repository
  public let own: SiteState
  public var config: EngineConfig { cycle.config }

  public struct Peer: Sendable {
    public var name: String
    public var location: String
    public var state: SiteState?
    public var error: String?
    public var snapshots: Set<String>?
  }

  public init(cycle: Cycle, repo: Repository, own: SiteState) {
    self.cycle = cycle
    self.repo = repo
    self.own = own
  }

  public static func open(_ cycle: Cycle) async throws -> SiteContext {
    let repo = try await cycle.access.open()
    return SiteContext(cycle: cycle, repo: repo, own: try await Site.load(repo))
  }

  /// Every target's role (in parallel); an unreachable target has an error instead. `snapshots`: also list the
  /// snapshot files each target holds.
  public func peers(snapshots: Bool = false) async -> [Peer] {
    let key = repo.key
    let cycle = self.cycle
    return await withTaskGroup(of: (Int, Peer).self) { g in
      for (i, t) in config.targets.enumerated() {
        g.addTask {
          var p = Peer(name: t.name, location: t.repository)
          do {
            let b = try cycle.targetBackend(t)
            p.state = try await Site.load(b, key: key)
            if snapshots { p.snapshots = Set(try await b.list(.snapshot).map(\.name)) }
          } catch {
            p.error = "\(error)"
          }
          return (i, p)
        }
      }
      var out: [(Int, Peer)] = []
      for await r in g { out.append(r) }
      return out.sorted { $0.0 < $1.0 }.map(\.1)
    }
  }

  /// The newest snapshot of this configuration's path sources (optionally of one host), or `ref`.
  public func snapshotToRestore(_ ref: String?, host: String?) async throws -> Snapshot? {
    if let ref { return try await repo.findSnapshot(ref, host: host) }
    let paths = config.sourcePaths
    guard !paths.isEmpty else { return nil }
    let want = Set(paths)
    let all = try await repo.listSnapshots().filter { s in
      Set(s.paths) == want && (host == nil || s.hostname == host)
    }
    guard let newest = all.max(by: { $0.time < $1.time }) else {
      throw TidemarkError(
        .notFound,
        "no snapshot of \(paths.joined(separator: " "))\(host.map { " from host \($0)" } ?? "") in \(repo.backend.location)",
        hint: "name one with --snapshot ID (`tidemark snapshots` lists them)")
    }
    return newest
  }

  /// Restores each source path of `snap` to where it was (in place), like `tidemark restore ID:PATH --in-place`:
  /// only what differs is written; `delete` removes what the snapshot lacks inside those paths.
  public func restoreInPlace(_ snap: Snapshot, delete: Bool, dryRun: Bool) async throws -> [RestoreStats] {
    let paths = config.sourcePaths.isEmpty ? snap.paths : config.sourcePaths
    let repo = self.repo
    return try await cycle.access.withLock(
      repo, exclusive: false, overlap: true, prepare: { try await repo.loadIndex() }
    ) {
      var all: [RestoreStats] = []
      for sel in try await RestoreSelection.eachPath(repo, snap, paths: paths) {
        var opts = RestoreOptions(target: sel.destination)
        opts.dryRun = dryRun
        opts.delete = delete
        try sel.configure(&opts)
        cycle.logger.info(
          "\(dryRun ? "would restore" : "restoring") snapshot \(snap.id!.short):\(BytePath.display(RestoreSelection.joined(sel.path))) in place to \(sel.destination)"
        )
        let stats = try await Restore(repository: repo, options: opts).run(tree: sel.tree)
        cycle.logger.info(
          "\(dryRun ? "would change" : "done"): \(stats.filesCreated) files created, \(stats.filesUpdated) updated, \(stats.filesUnchanged) unchanged, \(stats.entriesDeleted) deleted"
        )
        if !stats.errors.isEmpty {
          for e in stats.errors { cycle.logger.error("error: \(e)") }
          throw TidemarkError(
            .general,
            "\(stats.errors.count) error\(stats.errors.count == 1 ? "" : "s") during restore; the paths named above were not restored",
            hint: "run `tidemark check --read-data` if the repository may be damaged")
        }
        all.append(stats)
      }
      return all
    }
  }

  /// The epoch a failover records: one above every epoch seen, or the current one when this site already
  /// failed over (running failover again repeats the restore, not the epoch).
  public func failoverEpoch(peers: [Peer]) -> (epoch: Int, already: Bool) {
    let maxEpoch = ([own.epoch] + peers.compactMap { $0.state?.epoch }).max()!
    let already = own.role == .primary && own.current?.reason == "failover" && own.epoch >= maxEpoch
    return (already ? own.epoch : maxEpoch + 1, already)
  }

  /// Why a failover must not go ahead: a target that is reachable and not a standby (the primary may still run).
  public func failoverRefusal(peers: [Peer]) -> TidemarkError? {
    for p in peers where p.error == nil {
      if let s = p.state, s.role != .standby {
        return TidemarkError(
          .general,
          "target \(p.name) (\(p.location)) is reachable and \(s.role == nil ? "has no standby role" : s.summary): the primary may still be running",
          hint:
            "for a planned switch run `tidemark demote` there and `tidemark promote` here; if that site is lost for good, pass --force"
        )
      }
    }
    return nil
  }

  /// Why a promote must not go ahead: a target unreachable, still primary, or holding snapshots this site lacks.
  public func promoteRefusal(peers: [Peer]) async throws -> TidemarkError? {
    let mine = Set(try await repo.backend.list(.snapshot).map(\.name))
    for p in peers {
      if let e = p.error {
        return TidemarkError(
          .general, "cannot read the role of target \(p.name): \(e)",
          hint: "if that site is lost, use `tidemark failover`; otherwise pass --force")
      }
      if let s = p.state, s.role != .standby {
        return TidemarkError(
          .general, "target \(p.name) is \(s.role == nil ? "not a standby (no role recorded)" : s.summary)",
          hint: "run a last cycle and `tidemark demote` there first")
      }
      if let theirs = p.snapshots, case let missing = theirs.subtracting(mine), !missing.isEmpty {
        return TidemarkError(
          .general, "target \(p.name) holds \(missing.count) snapshots this repository lacks",
          hint: "run a last cycle there (`tidemark replicate --once`) before promoting this site, or pass --force")
      }
    }
    return nil
  }

  /// The epoch a promote records: one above every epoch seen.
  public func promoteEpoch(peers: [Peer]) -> Int {
    ([own.epoch] + peers.compactMap { $0.state?.epoch }).max()! + 1
  }

  /// The epoch a demote records: the highest seen (a standby keeps it).
  public func demoteEpoch(peers: [Peer]) -> Int {
    ([own.epoch] + peers.compactMap { $0.state?.epoch }).max()!
  }
}

extension SiteContext {
  /// Fails over to this site: refuses (unless `force`) while a target is reachable and not a standby, records
  /// this site as primary with a new fencing epoch (once: a repeated failover keeps its epoch), then restores the
  /// newest snapshot of the source paths (or `ref`) in place when `restore`. Returns the epoch and the snapshot.
  public func failover(
    snapshot ref: String?, host: String?, restore: Bool, delete: Bool, dryRun: Bool, force: Bool,
    say: (String) -> Void
  ) async throws -> (epoch: Int, snapshot: Snapshot?) {
    let peers = await peers()
    for p in peers { if let e = p.error { say("target \(p.name): unreachable (\(e))") } }
    if !force, let refusal = failoverRefusal(peers: peers) { throw refusal }
    let snap = restore ? try await snapshotToRestore(ref, host: host) : nil
    let (epoch, already) = failoverEpoch(peers: peers)
    if dryRun {
      say(already ? "already primary at epoch \(epoch)" : "would record: primary at epoch \(epoch)")
    } else if already {
      say("this site is already the primary at epoch \(epoch) (failover of \(own.current!.time))")
    } else {
      try await Site.record(repo, role: .primary, epoch: epoch, reason: "failover", snapshot: snap?.id?.hex)
      say("this site is now the primary at epoch \(epoch)")
    }
    if let snap {
      _ = try await restoreInPlace(snap, delete: delete, dryRun: dryRun)
    }
    return (epoch, snap)
  }

  /// A planned switch to this site: unless it already is primary, refuses (unless `force`) per
  /// `promoteRefusal` and records it as primary with a new epoch; `restore` then puts the newest snapshot of the
  /// source paths back in place.
  public func promote(restore: Bool, delete: Bool, force: Bool, say: (String) -> Void) async throws {
    if own.role == .primary {
      say("this site is already the \(own.summary)")
    } else {
      let peers = await peers(snapshots: true)
      if !force, let refusal = try await promoteRefusal(peers: peers) { throw refusal }
      let epoch = promoteEpoch(peers: peers)
      try await Site.record(repo, role: .primary, epoch: epoch, reason: "promote")
      say("this site is now the primary at epoch \(epoch)")
    }
    if restore, let snap = try await snapshotToRestore(nil, host: nil) {
      _ = try await restoreInPlace(snap, delete: delete, dryRun: false)
    }
  }

  /// Records this site as a standby, keeping the highest epoch seen, so its own cycles and prunes stop and the
  /// primary replicates into it.
  public func demote(say: (String) -> Void) async throws {
    if own.role == .standby {
      say("this site is already a \(own.summary)")
      return
    }
    let epoch = demoteEpoch(peers: await peers())
    try await Site.record(repo, role: .standby, epoch: epoch, reason: "demote")
    say("this site is now a standby at epoch \(epoch): the primary's cycles replicate into \(repo.backend.location)")
  }

  /// `tidemark role --json`: this site's role (`site`), its history and each target's role or error.
  public static func roleJSON(own: SiteState, peers: [Peer]) -> [UInt8] {
    func json(_ s: SiteState?) -> String {
      guard let s else { return "null" }
      let role = s.role.map { "\"\($0.rawValue)\"" } ?? "null"
      return "{\"role\":\(role),\"epoch\":\(s.epoch),\"since\":\(s.current.map { "\"\($0.time)\"" } ?? "null")}"
    }
    var w = JSONWriter()
    w.raw("{\"site\":\(json(own)),\"history\":[")
    for (i, r) in own.history.enumerated() {
      if i > 0 { w.comma() }
      w.raw("{\"seq\":\(r.seq),\"epoch\":\(r.epoch),\"role\":\"\(r.role.rawValue)\",\"reason\":")
      w.string(r.reason)
      w.raw(",\"hostname\":")
      w.string(r.hostname)
      w.raw(",\"time\":\"\(r.time)\"}")
    }
    w.raw("],\"targets\":[")
    for (i, p) in peers.enumerated() {
      if i > 0 { w.comma() }
      w.raw("{\"name\":")
      w.string(p.name)
      w.raw(",\"site\":\(json(p.state))")
      if let e = p.error {
        w.raw(",\"error\":")
        w.string(e)
      }
      w.raw("}")
    }
    w.raw("]}\n")
    return w.out
  }
}
