// The forged-time guard: a snapshot dated later than the moment this site first listed it (beyond the clock
// skew) is implausible, and so is a new one slipped into the past of its host's history; sightings are kept
// across cycles and dropped with the snapshot; a burst of snapshots within one cycle is reported.
import Testing
import TidemarkCore

@testable import TidemarkEngine

struct SnapshotGuardTests {
  static func snapshot(_ n: UInt8, at seconds: Int64, host: String = "dc", paths: [String] = ["/d"]) -> Snapshot {
    var s = Snapshot(
      time: Timestamp(seconds: seconds, nanoseconds: 0, offset: 0), tree: BlobID(RawID.hash([n])), paths: paths)
    s.hostname = host
    s.id = SnapshotID(RawID.hash([n, n]))
    return s
  }

  @Test func futureDatedSnapshotsAreImplausibleAndOnlyThey() {
    let genuine = [Self.snapshot(1, at: 9_000), Self.snapshot(2, at: 9_950)]
    let forged = [Self.snapshot(3, at: 50_000), Self.snapshot(4, at: 20_000)]
    var seen: [String: Double] = [:]
    let found = SnapshotGuard.check(genuine + forged, firstSeen: &seen, now: 10_000, skew: 900)
    // Oldest first; a genuine one within the skew of its sighting passes.
    #expect(found.implausible == [forged[1].id!.hex, forged[0].id!.hex])
    #expect(found.new.isEmpty, "the first listing only records")
    #expect(seen.count == 4 && seen.values.allSatisfy { $0 == 10_000 })
  }

  @Test func aSightingIsKeptSoTimePassingDoesNotLaunderAForgery() {
    let forged = Self.snapshot(3, at: 50_000)
    var seen: [String: Double] = [:]
    _ = SnapshotGuard.check([forged], firstSeen: &seen, now: 10_000, skew: 900)
    // Later cycles still compare with the first sighting, until the snapshot's own time has come.
    #expect(SnapshotGuard.check([forged], firstSeen: &seen, now: 30_000, skew: 900).implausible == [forged.id!.hex])
    #expect(seen[forged.id!.hex] == 10_000)
    // Snapshots that are gone are forgotten; a new one is first seen now.
    let next = Self.snapshot(5, at: 30_100)
    #expect(SnapshotGuard.check([next], firstSeen: &seen, now: 30_000, skew: 900).implausible.isEmpty)
    #expect(seen == [next.id!.hex: 30_000])
  }

  @Test func aSnapshotSlippedIntoThePastIsImplausibleAndStaysSo() {
    let history = [Self.snapshot(1, at: 1_000), Self.snapshot(2, at: 5_000)]
    var seen: [String: Double] = [:]
    _ = SnapshotGuard.check(history, firstSeen: &seen, now: 5_100, skew: 900)
    // A catch-up after an outage (dated in the past, but newer than anything seen of the host) is genuine; one
    // dated before the host's newest known snapshot is not; another host's history is its own, and so is that of
    // other paths (a long backup of /home that started before the last snapshot of /d).
    let catchUp = Self.snapshot(3, at: 6_000)
    let slipped = Self.snapshot(4, at: 3_000)
    let otherHost = Self.snapshot(5, at: 2_000, host: "db")
    let otherPaths = Self.snapshot(6, at: 4_000, paths: ["/home"])
    var found = SnapshotGuard.check(
      history + [catchUp, slipped, otherHost, otherPaths], firstSeen: &seen, now: 20_000, skew: 900,
      previousCheck: 5_100)
    #expect(found.implausible == [slipped.id!.hex])
    #expect(found.new == [otherHost.id!.hex, slipped.id!.hex, otherPaths.id!.hex, catchUp.id!.hex])
    // Still flagged a cycle later (its sighting is no longer new), until accepted.
    let flagged = Set(found.implausible)
    found = SnapshotGuard.check(
      history + [catchUp, slipped], firstSeen: &seen, flagged: flagged, now: 20_300, skew: 900, previousCheck: 20_000)
    #expect(found.implausible == [slipped.id!.hex] && found.new.isEmpty)
    found = SnapshotGuard.check(
      history + [catchUp, slipped], firstSeen: &seen, flagged: flagged, accepted: flagged, now: 20_600, skew: 900,
      previousCheck: 20_300)
    #expect(found.implausible.isEmpty)
  }

  @Test func aBurstOfSnapshotsWithinOneCycleIsReported() {
    var seen: [String: Double] = [:]
    _ = SnapshotGuard.check([Self.snapshot(1, at: 1_000)], firstSeen: &seen, now: 1_000, skew: 60)
    // One cycle of 300 s with snapshots expected every 300 s: two or three are normal, twenty are a burst; a
    // catch-up spread over the last day is not.
    let normal = (0..<3).map { Self.snapshot(UInt8(10 + $0), at: 1_100 + Int64($0) * 60) }
    var found = SnapshotGuard.check(
      [Self.snapshot(1, at: 1_000)] + normal, firstSeen: &seen, now: 1_300, skew: 60, previousCheck: 1_000,
      interval: 300)
    #expect(found.bursts.isEmpty)
    let catchUp = (0..<20).map { Self.snapshot(UInt8(40 + $0), at: -80_000 + Int64($0) * 4_000, host: "db") }
    let burst = (0..<20).map { Self.snapshot(UInt8(80 + $0), at: 1_350 + Int64($0), host: "dc") }
    found = SnapshotGuard.check(
      [Self.snapshot(1, at: 1_000)] + normal + catchUp + burst, firstSeen: &seen, now: 1_600, skew: 60,
      previousCheck: 1_300, interval: 300)
    #expect(found.bursts == ["dc": 20])
  }
}
