// Snapshots whose times cannot be true. A compromised primary can write snapshots dated in the future, so that
// retention (keep-last, keep-daily, …) counts them as the newest and forgets the genuine ones. Every site notes
// when it first listed each snapshot of its own repository; a snapshot dated later than that, by more than the
// configured clock skew, is implausible: it is kept, retention neither counts it nor lets it push others out,
// and the cycle fails with an alert naming it until someone has looked (and forgotten it by ID).
import Foundation
import TidemarkCore

public enum SnapshotGuard {
  /// Records `now` as the first sighting of every snapshot not seen before, forgets the sightings of snapshots
  /// no longer listed, and returns the IDs (hex) of the snapshots dated more than `skew` seconds after their
  /// first sighting, oldest first.
  public static func check(
    _ snapshots: [Snapshot], firstSeen: inout [String: Double], now: Double, skew: Double
  ) -> [String] {
    var listed: Set<String> = []
    var implausible: [(String, Double)] = []
    for s in snapshots {
      guard let id = s.id?.hex else { continue }
      listed.insert(id)
      let seen = firstSeen[id] ?? now
      firstSeen[id] = seen
      let time = Double(s.time.seconds) + Double(s.time.nanoseconds) / 1e9
      if time > seen + skew { implausible.append((id, time)) }
    }
    firstSeen = firstSeen.filter { listed.contains($0.key) }
    return implausible.sorted { $0.1 < $1.1 }.map(\.0)
  }
}
