// Snapshots whose times cannot be true. A compromised primary can write snapshots dated in the future, so that
// retention (keep-last, keep-daily, …) counts them as the newest and forgets the genuine ones; or dated in the
// past, into the history retention has already thinned, so that they win their day or week over a genuine one.
// Every site notes when it first listed each snapshot of its own repository. A snapshot is implausible when
//   - it is dated later than that first sighting, by more than the clock skew allowed; or
//   - it is dated earlier than its first sighting by more than the skew, and earlier than the newest snapshot of
//     its host and paths this site had already seen: a genuine snapshot arrives in order (replication publishes the
//     snapshots it copies oldest first, one at a time), a forged one is slipped into the past.
// Implausible snapshots are kept; retention neither counts them nor lets them push others out; the cycle fails
// with an alert naming them until someone has looked (and forgotten them by ID, or accepted them with
// `tidemark tripwire ack`). The first listing of a repository only records: there is no history to judge by.
//
// A burst, many snapshots of one host dated within one cycle, far above the expected rate, also alerts.
import TidemarkCore

public enum SnapshotGuard {
  public struct Finding: Sendable, Equatable {
    /// IDs (hex) of the implausible snapshots, oldest first.
    public var implausible: [String] = []
    /// Hosts with more new snapshots dated within the last check's window than the expected rate allows, and how
    /// many.
    public var bursts: [String: Int] = [:]
    /// The snapshots listed for the first time by this check (IDs, hex), oldest first; empty on the first
    /// listing of a repository.
    public var new: [String] = []
  }

  /// Records `now` as the first sighting of every snapshot not seen before, forgets the sightings of snapshots
  /// no longer listed, and judges the snapshots as above. `flagged` are the snapshots found implausible before
  /// (they stay so while listed); `accepted` are never implausible; `previousCheck` is when the last check ran
  /// (nil: never), `interval` the expected seconds between snapshots of one host.
  public static func check(
    _ snapshots: [Snapshot], firstSeen: inout [String: Double], flagged: Set<String> = [],
    accepted: Set<String> = [], now: Double, skew: Double, previousCheck: Double? = nil, interval: Double = 300
  ) -> Finding {
    var f = Finding()
    let firstListing = firstSeen.isEmpty
    var newestKnown: [String: Double] = [:]
    for s in snapshots {
      guard let id = s.id?.hex, firstSeen[id] != nil, !flagged.contains(id) else { continue }
      newestKnown[group(s)] = max(newestKnown[group(s)] ?? -.infinity, seconds(s.time))
    }
    var listed: Set<String> = []
    var implausible: [(String, Double)] = []
    var new: [(String, Double)] = []
    var recent: [String: Int] = [:]
    let window = previousCheck.map { now - $0 + skew } ?? 0
    for s in snapshots {
      guard let id = s.id?.hex else { continue }
      listed.insert(id)
      let time = seconds(s.time)
      let known = firstSeen[id] != nil
      let seen = firstSeen[id] ?? now
      firstSeen[id] = seen
      if !known && !firstListing {
        new.append((id, time))
        if previousCheck != nil, time > now - window { recent[s.hostname, default: 0] += 1 }
      }
      if accepted.contains(id) { continue }
      if time > seen + skew || flagged.contains(id) {
        implausible.append((id, time))
      } else if !known, !firstListing, time < seen - skew, let newest = newestKnown[group(s)], time < newest {
        implausible.append((id, time))
      }
    }
    firstSeen = firstSeen.filter { listed.contains($0.key) }
    f.implausible = implausible.sorted { $0.1 < $1.1 }.map(\.0)
    f.new = new.sorted { $0.1 < $1.1 }.map(\.0)
    if previousCheck != nil {
      let expected = max(1, window / max(1, interval))
      for (host, n) in recent where Double(n) > 3 * expected + 3 { f.bursts[host] = n }
    }
    return f
  }

  /// Snapshots are judged against the history of their host and paths (as retention groups them by default): a
  /// long backup of other paths on the same host may finish after shorter ones that started later.
  static func group(_ s: Snapshot) -> String { s.hostname + "\u{0}" + s.paths.sorted().joined(separator: "\u{0}") }

  static func seconds(_ t: Timestamp) -> Double { Double(t.seconds) + Double(t.nanoseconds) / 1e9 }
}
