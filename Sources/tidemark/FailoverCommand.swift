// Failover and role reversal: `tidemark failover`, `promote`, `demote` and `role`. The role and fencing epoch
// live in each site's repository (see TidemarkOperations/Site.swift); the replication cycle checks them.
import ArgumentParser
import Foundation
import Logging
import TidemarkCore
import TidemarkEngine
import TidemarkOperations

extension GlobalOptions {
  /// This site's repository, configuration and role, for failover, promote and demote.
  func site(for what: String) async throws -> SiteContext {
    guard let config = try engineConfig() else {
      throw TidemarkError(
        .usage, "\(what) needs this site's configuration", hint: "pass --config FILE (or set TIDEMARK_CONFIG)")
    }
    return try await SiteContext.open(try cycle(config, logger: EngineLog.console(quiet: quiet)))
  }
}

struct FailoverCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "failover",
    abstract: "Make this (DR) site the primary after the primary site is lost, and restore its data in place.",
    discussion: """
      Run on the DR machine with its own configuration (--config): its repository is the replica the lost \
      primary replicated into, its targets point back at the primary's repository.

      1. Refuses when a target is reachable and not a standby: the primary may still be running \
      (use `demote` there and `promote` here for a planned switch), unless --force.
      2. Records in this site's repository that it is the primary, with a new fencing epoch (one above any \
      epoch seen). The old primary reads it when it comes back and stops its cycles (fenced) until it is demoted.
      3. Restores the newest snapshot of the configured source paths (or --snapshot) in place: only what \
      differs is written; --delete removes what the snapshot does not have.

      Then start the cycles here (`tidemark schedule install` or `systemctl start tidemark`). Running \
      failover again repeats the restore without raising the epoch again.
      """)
  @OptionGroup var global: GlobalOptions
  @Option(help: "Restore this snapshot (ID, prefix or latest) instead of the newest of the source paths.")
  var snapshot: String?
  @Option(name: [.customShort("H"), .long], help: "Take the newest snapshot of this host.") var host: String?
  @Flag(help: "Delete what the snapshot does not have, inside the restored source paths.") var delete = false
  @Flag(name: .customLong("no-restore"), help: "Only record the new role; restore nothing.") var noRestore = false
  @Flag(name: [.customShort("n"), .long], help: "Show what would be done; change nothing.") var dryRun = false
  @Flag(help: "Fail over even when a target is reachable and not a standby.") var force = false

  func run() async throws {
    let site = try await global.site(for: "failover")
    let say: (String) -> Void = { [quiet = global.quiet] s in if !quiet { Out.err(s) } }
    let (epoch, snap) = try await site.failover(
      snapshot: snapshot, host: host, restore: !noRestore, delete: delete, dryRun: dryRun, force: force, say: say)
    if global.json {
      Out.line(
        "{\"role\":\"primary\",\"epoch\":\(epoch),\"dry_run\":\(dryRun),\"snapshot\":\(snap.map { "\"\($0.id!.hex)\"" } ?? "null")}"
      )
    }
    if !dryRun {
      say("next: start the cycles here (`tidemark schedule install --config …`); when the old primary returns, run")
      say("`tidemark demote` there: this site's cycles then send it only what is new.")
    }
  }
}

struct PromoteCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "promote",
    abstract: "Make this site the primary again (planned role switch), with a new fencing epoch.",
    discussion: """
      For a planned switch (e.g. back to the original DC): on the current primary run a last cycle \
      (`tidemark replicate --once`) and `tidemark demote`; then run `tidemark promote --restore` here.

      Refuses, unless --force: when a target is still primary, when a target cannot be reached (its role is \
      unknown; after a site loss use `tidemark failover`), and when a target holds snapshots this repository \
      lacks (the last cycle did not reach here). --restore puts the newest snapshot of the source paths back \
      in place (only what differs is written; --delete removes what it does not have).
      """)
  @OptionGroup var global: GlobalOptions
  @Flag(help: "Restore the newest snapshot of the source paths in place after promoting.") var restore = false
  @Flag(help: "With --restore: delete what the snapshot does not have, inside the source paths.") var delete = false
  @Flag(help: "Promote even when a target is unreachable, still primary, or ahead.") var force = false

  func run() async throws {
    let site = try await global.site(for: "promote")
    try await site.promote(restore: restore, delete: delete, force: force) { [quiet = global.quiet] s in
      if !quiet { Out.err(s) }
    }
  }
}

struct DemoteCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "demote",
    abstract: "Make this site a standby: its cycles and prunes are refused; the primary replicates into it.",
    discussion: """
      Run on the old primary when it comes back after a failover (its cycles report `fenced` until then), \
      or on the current primary, after a last cycle, before promoting the other site. The standby keeps the \
      highest epoch it has seen. Stop its timer or daemon (`systemctl stop tidemark`); cycles there now fail \
      with a message saying so.
      """)
  @OptionGroup var global: GlobalOptions

  func run() async throws {
    let site = try await global.site(for: "demote")
    try await site.demote { [quiet = global.quiet] s in if !quiet { Out.err(s) } }
  }
}

struct RoleCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "role",
    abstract: "Show this site's role and fencing epoch, and those of its targets.",
    discussion: """
      With --config: this site's repository and every target. With -r only: that repository's role and the \
      history of its role changes.
      """)
  @OptionGroup var global: GlobalOptions

  func run() async throws {
    let repo = try await global.open()
    let own = try await Site.load(repo)
    var peers: [SiteContext.Peer] = []
    if let config = try global.engineConfig(), global.repo == nil {
      peers = await SiteContext(
        cycle: try global.cycle(config, logger: EngineLog.console(quiet: global.quiet)), repo: repo, own: own
      ).peers()
    }
    if global.json {
      Out.raw(SiteContext.roleJSON(own: own, peers: peers))
      return
    }
    Out.line("this site (\(repo.backend.location)): \(own.summary(implicit: peers.isEmpty ? nil : .primary))")
    for r in own.history.reversed().dropFirst() {
      Out.line("  before: \(r.role.rawValue) at epoch \(r.epoch) since \(r.time) (\(r.reason) on \(r.hostname))")
    }
    for p in peers {
      Out.line(
        "target \(p.name) (\(p.location)): \(p.state?.summary(implicit: .standby) ?? "unreachable: \(p.error ?? "?")")")
    }
  }
}

extension GlobalOptions {
  /// A demoted site refuses to prune (or forget in) its own repository, the one its configuration names; the
  /// primary still manages it as a target (`-r` from there).
  func refuseOnStandby(_ repo: Repository, _ what: String) async throws {
    guard self.repo == nil, try engineConfig() != nil else { return }
    try await Site.refuseOnStandby(repo, what)
  }
}
