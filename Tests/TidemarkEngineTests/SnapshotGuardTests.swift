// The forged-time guard: a snapshot dated later than the moment this site first listed it (beyond the clock
// skew) is implausible; sightings are kept across cycles and dropped with the snapshot.
import Testing
import TidemarkCore

@testable import TidemarkEngine

struct SnapshotGuardTests {
  static func snapshot(_ n: UInt8, at seconds: Int64) -> Snapshot {
    var s = Snapshot(
      time: Timestamp(seconds: seconds, nanoseconds: 0, offset: 0), tree: BlobID(RawID.hash([n])), paths: ["/d"])
    s.id = SnapshotID(RawID.hash([n, n]))
    return s
  }

  @Test func futureDatedSnapshotsAreImplausibleAndOnlyThey() {
    let genuine = [Self.snapshot(1, at: 9_000), Self.snapshot(2, at: 9_950)]
    let forged = [Self.snapshot(3, at: 50_000), Self.snapshot(4, at: 20_000)]
    var seen: [String: Double] = [:]
    let found = SnapshotGuard.check(genuine + forged, firstSeen: &seen, now: 10_000, skew: 900)
    // Oldest first; a genuine one within the skew of its sighting passes.
    #expect(found == [forged[1].id!.hex, forged[0].id!.hex])
    #expect(seen.count == 4 && seen.values.allSatisfy { $0 == 10_000 })
  }

  @Test func aSightingIsKeptSoTimePassingDoesNotLaunderAForgery() {
    let forged = Self.snapshot(3, at: 50_000)
    var seen: [String: Double] = [:]
    _ = SnapshotGuard.check([forged], firstSeen: &seen, now: 10_000, skew: 900)
    // Later cycles still compare with the first sighting, until the snapshot's own time has come.
    #expect(SnapshotGuard.check([forged], firstSeen: &seen, now: 30_000, skew: 900) == [forged.id!.hex])
    #expect(seen[forged.id!.hex] == 10_000)
    // Snapshots that are gone are forgotten; a new one is first seen now.
    let next = Self.snapshot(5, at: 30_100)
    #expect(SnapshotGuard.check([next], firstSeen: &seen, now: 30_000, skew: 900).isEmpty)
    #expect(seen == [next.id!.hex: 30_000])
  }
}
