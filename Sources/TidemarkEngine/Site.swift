// The role of a site in a DC/DR pair and its fencing epoch, stored in the site's repository beside restic's
// namespaces (`tidemark/<id>`), so the other site reads it over the same transport it replicates through.
//
// Records are immutable and append-only: every role change saves a new encrypted record (like a snapshot
// file, named by the SHA-256 of its bytes) with the next sequence number; the record with the highest `seq` is
// the current one, the others are the history. Saving a new file is atomic on every backend, where replacing
// one is not (SFTP v3 cannot rename over a file).
//
// Rules (checked by the replication cycle and by promote/failover):
// - A repository without records is a primary at epoch 0 when it runs cycles, a standby at epoch 0 as a target.
// - The epoch grows by one whenever a site becomes primary (failover, promote): it is the fencing token.
// - A cycle runs only when its own site is primary and no target has a higher epoch, or the same epoch as a
//   primary (two primaries). A site whose target outranks it is fenced: it must be demoted.
import Foundation
import TidemarkCore
import TidemarkSystem

public struct SiteRecord: Sendable, Equatable, Codable {
  public enum Role: String, Sendable, Codable {
    case primary
    case standby
  }
  public var seq: Int
  public var epoch: Int
  public var role: Role
  /// The machine where the change was made, and when (RFC 3339).
  public var hostname: String
  public var time: String
  /// `failover`, `promote` or `demote`.
  public var reason: String
  /// The snapshot a failover restored, if any.
  public var snapshot: String?

  public init(seq: Int, epoch: Int, role: Role, reason: String, snapshot: String? = nil) {
    self.seq = seq
    self.epoch = epoch
    self.role = role
    self.hostname = SystemInfo.hostname
    self.time = Timestamp.now().rfc3339
    self.reason = reason
    self.snapshot = snapshot
  }
}

/// What a repository says about its site.
public struct SiteState: Sendable {
  /// Every record, oldest first.
  public var history: [SiteRecord]
  public var current: SiteRecord? { history.last }
  public var epoch: Int { current?.epoch ?? 0 }
  /// The role; a repository that never changed role has none (nil).
  public var role: SiteRecord.Role? { current?.role }
  public var nextSeq: Int { (current?.seq ?? 0) + 1 }

  public var summary: String { summary(implicit: nil) }

  /// "primary at epoch 2 since … (promote on dc1)"; without records, "`implicit` (no role recorded, epoch 0)".
  public func summary(implicit: SiteRecord.Role?) -> String {
    guard let c = current else { return "\(implicit.map { $0.rawValue + " " } ?? "")(no role recorded, epoch 0)" }
    return "\(c.role.rawValue) at epoch \(c.epoch) since \(c.time) (\(c.reason) on \(c.hostname))"
  }
}

public enum Site {
  /// Reads the records of the repository on `backend`, decrypting them with `key` (a replica shares its
  /// source's master key, so a site reads its peer's records without the peer's password).
  public static func load(_ backend: any Backend, key: MasterKey) async throws -> SiteState {
    let files = try await backend.list(.site)
    var records: [SiteRecord] = []
    for f in files {
      let h = Handle(.site, f.name)
      let data = try await backend.load(h)
      guard RawID.hash(data).hex == f.name else { throw TidemarkError.corrupt("\(h) does not match its name") }
      guard let plain = try key.open(data) else {
        throw TidemarkError.corrupt(
          "\(backend.location): \(h) fails authentication (damaged, or written with another master key)")
      }
      let json = try Repository.decodeUnpacked(plain)
      records.append(try JSONDecoder().decode(SiteRecord.self, from: Data(json)))
    }
    records.sort { ($0.seq, $0.time) < ($1.seq, $1.time) }
    return SiteState(history: records)
  }

  public static func load(_ repo: Repository) async throws -> SiteState {
    try await load(repo.backend, key: repo.key)
  }

  /// Appends a record; returns the new state.
  @discardableResult
  public static func record(
    _ repo: Repository, role: SiteRecord.Role, epoch: Int, reason: String, snapshot: String? = nil
  ) async throws -> SiteState {
    var state = try await load(repo)
    let r = SiteRecord(seq: state.nextSeq, epoch: epoch, role: role, reason: reason, snapshot: snapshot)
    let enc = JSONEncoder()
    enc.outputFormatting = [.sortedKeys]
    _ = try await repo.saveUnpacked(.site, json: Array(try enc.encode(r)))
    state.history.append(r)
    return state
  }

  /// Refuses `what` (prune, forget) on a standby's own repository: the primary manages it as its target, and
  /// removing data there behind the primary's back would break replication.
  public static func refuseOnStandby(_ repo: Repository, _ what: String) async throws {
    let own = try await load(repo)
    guard own.role == .standby else { return }
    throw TidemarkError(
      .general, "this site is a \(own.summary): \(what) is refused on a standby",
      hint: "the primary manages this repository as its target; `tidemark promote` makes this site primary again")
  }

  /// Why a site with `own` must not run a cycle against targets with `targets` (name, state), or nil when it may.
  public static func fence(own: SiteState, targets: [(name: String, state: SiteState)]) -> (String, String)? {
    if own.role == .standby {
      return (
        "this site is a \(own.summary): a standby does not run cycles or prunes",
        "`tidemark promote` makes it primary again (after the primary's last cycle and `tidemark demote` there)"
      )
    }
    for (name, t) in targets {
      if t.epoch > own.epoch || (t.role == .primary && t.epoch >= own.epoch) {
        return (
          "fenced: target \(name) is \(t.summary); this site is at epoch \(own.epoch), so it no longer is the primary",
          "run `tidemark demote` here; the primary's cycles then replicate into this site's repository"
        )
      }
    }
    return nil
  }
}
