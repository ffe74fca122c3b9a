// Pins `ForgetPolicy` to restic 0.14's retention semantics: restic's own golden files (Fixtures/forget, see its
// README) for every policy restic tests, plus durations, descriptions, grouping and Go's calendar arithmetic.
import Foundation
import Testing
import TidemarkCore
import TidemarkOperations

private let forgetFixtures = fixtures.appendingPathComponent("forget")

/// restic's `TestApplyPolicy` policies, in the order of its golden files `policy_keep_snapshots_<i>`.
private let resticPolicies: [ForgetPolicy] = {
  func p(_ f: (inout ForgetPolicy) -> Void) -> ForgetPolicy {
    var x = ForgetPolicy()
    f(&x)
    return x
  }
  func d(_ s: String) -> RetentionDuration { try! RetentionDuration(parsing: s) }
  return [
    p { _ in },
    p { $0.last = 10 },
    p { $0.last = 15 },
    p { $0.last = 99 },
    p { $0.last = 200 },
    p { $0.hourly = 20 },
    p { $0.daily = 3 },
    p { $0.daily = 10 },
    p { $0.daily = 30 },
    p { ($0.last, $0.daily) = (5, 5) },
    p { ($0.last, $0.daily) = (2, 10) },
    p { $0.weekly = 2 },
    p { $0.weekly = 4 },
    p { ($0.daily, $0.weekly) = (3, 4) },
    p { $0.monthly = 6 },
    p { ($0.daily, $0.weekly, $0.monthly) = (2, 2, 6) },
    p { $0.yearly = 10 },
    p { ($0.daily, $0.weekly, $0.monthly, $0.yearly) = (7, 2, 3, 10) },
    p { $0.keepTags = [["foo"]] },
    p { $0.keepTags = [["foo", "bar"]] },
    p { $0.keepTags = [["foo"], ["bar"]] },
    p { $0.within = d("1d") },
    p { $0.within = d("2d") },
    p { $0.within = d("7d") },
    p { $0.within = d("1m") },
    p { $0.within = d("1m14d") },
    p { $0.within = d("1y1d1m") },
    p { $0.within = d("13d23h") },
    p { $0.within = d("2m2h") },
    p { $0.within = d("1y2m3d3h") },
    p { $0.withinHourly = d("1y2m3d3h") },
    p { $0.withinDaily = d("1y2m3d3h") },
    p { $0.withinWeekly = d("1y2m3d3h") },
    p { $0.withinMonthly = d("1y2m3d3h") },
    p { $0.withinYearly = d("1y2m3d3h") },
    p {
      $0.within = d("1h")
      $0.withinHourly = d("1d")
      $0.withinDaily = d("7d")
      $0.withinWeekly = d("1m")
      $0.withinMonthly = d("1y")
      $0.withinYearly = d("9999y")
    },
  ]
}()

private let zeroTree = BlobID(RawID.hash([]))

/// restic's test input (`testExpireSnapshots`), each snapshot given a distinct ID by its position.
private func loadInput() throws -> [Snapshot] {
  let v = try JSON.parse(Array(try Data(contentsOf: forgetFixtures.appendingPathComponent("input.json"))))
  return try (v.array ?? []).enumerated().map { i, e in
    let time = try #require(e["time"]?.string.flatMap { Timestamp(rfc3339: $0) })
    var s = Snapshot(time: time, tree: zeroTree, paths: (e["paths"]?.array ?? []).compactMap(\.string))
    s.tags = (e["tags"]?.array ?? []).compactMap(\.string)
    s.id = SnapshotID(RawID.hash(Array("snapshot \(i)".utf8)))
    return s
  }
}

/// What the golden files record of a snapshot: time (Go's RFC 3339), tags, paths.
private func describe(_ s: Snapshot) -> String {
  "\(s.time.rfc3339Nano) tags=\(s.tags) paths=\(s.paths)"
}

private func describe(golden v: JSONValue) -> String {
  let tags = (v["tags"]?.array ?? []).compactMap(\.string)
  let paths = (v["paths"]?.array ?? []).compactMap(\.string)
  return "\(v["time"]?.string ?? "?") tags=\(tags) paths=\(paths)"
}

private func describe(_ r: ForgetPolicy.KeepReason) -> String {
  let c = r.counters
  return describe(r.snapshot)
    + " matches=\(r.matches) counters=\([c.last, c.hourly, c.daily, c.weekly, c.monthly, c.yearly])"
}

private func describe(goldenReason v: JSONValue) -> String {
  let c = v["counters"]
  let counters = ["last", "hourly", "daily", "weekly", "monthly", "yearly"].map { c?[$0]?.int ?? 0 }
  let matches = (v["matches"]?.array ?? []).compactMap(\.string)
  return describe(golden: v["snapshot"] ?? .null) + " matches=\(matches) counters=\(counters)"
}

@Suite struct ForgetPolicyTests {
  @Test(arguments: 0..<36) func resticGoldenFile(_ index: Int) throws {
    #expect(resticPolicies.count == 36)
    let input = try loadInput()
    #expect(input.count == 103)
    let golden = try JSON.parse(
      Array(try Data(contentsOf: forgetFixtures.appendingPathComponent("policy_keep_snapshots_\(index)"))))
    let policy = resticPolicies[index]
    let result = policy.apply(to: input)

    #expect(result.keep.map(describe) == (golden["keep"]?.array ?? []).map { describe(golden: $0) })
    #expect(result.reasons.map(describe) == (golden["reasons"]?.array ?? []).map { describe(goldenReason: $0) })
    #expect(result.reasons.map { $0.snapshot.id } == result.keep.map(\.id))
    // Removed: exactly the rest, newest first.
    let kept = Set(result.keep.map(\.id))
    let rest = input.filter { !kept.contains($0.id) }
    #expect(result.keep.count + result.remove.count == input.count)
    #expect(Set(result.remove.map(\.id)) == Set(rest.map(\.id)))
    #expect(zip(result.remove, result.remove.dropFirst()).allSatisfy { $0.time >= $1.time })
    if policy.sum > 0 { #expect(result.keep.count <= policy.sum) }
  }

  @Test func emptyPolicyKeepsEverything() throws {
    let input = try loadInput()
    let p = ForgetPolicy()
    #expect(p.isEmpty)
    var negative = ForgetPolicy()
    negative.last = -1
    #expect(!negative.isEmpty)  // restic 0.14: a rule that never matches (the CLI refuses it)
    #expect(negative.apply(to: input).keep.isEmpty)
    let r = p.apply(to: input)
    #expect(r.keep.count == input.count && r.remove.isEmpty)
    #expect(r.reasons.allSatisfy { $0.matches == ["policy is empty"] })
  }

  @Test func durationsParseAndPrintAsRestic() throws {
    let d = try RetentionDuration(parsing: " 1y2m3d4h ")
    #expect(d == RetentionDuration(years: 1, months: 2, days: 3, hours: 4))
    #expect(d.description == "1y2m3d4h")
    #expect(try RetentionDuration(parsing: "1y1d1m").description == "1y1m1d")
    #expect(try RetentionDuration(parsing: "2d3d").days == 3)
    #expect(try RetentionDuration(parsing: "-2d").description == "-2d")
    #expect(try RetentionDuration(parsing: "").isZero)
    for (bad, message) in [
      ("5", "no unit found after number 5"), ("5x", "invalid unit 'x' found after number 5"),
      ("d", "no number found"), ("1d-", "no number found"),
    ] {
      #expect(throws: (any Error).self) { try RetentionDuration(parsing: bad) }
      do {
        _ = try RetentionDuration(parsing: bad)
      } catch let e as TidemarkError {
        #expect(e.message == message)
      }
    }
  }

  /// The "Applying Policy" line, as restic 0.14 printed it for the same flags.
  @Test func descriptionIsResticsSentence() throws {
    var p = ForgetPolicy()
    (p.last, p.monthly, p.keepTags, p.within) = (2, 1, [["t1"]], try RetentionDuration(parsing: "1m2d"))
    #expect(
      p.description
        == "keep 2 latest, 1 monthly snapshots and all snapshots with tags [[t1]] and all snapshots within 1m2d of the newest"
    )
    var q = ForgetPolicy()
    (q.last, q.weekly, q.withinDaily) = (1, 3, try RetentionDuration(parsing: "1y2d"))
    q.keepTags = [TagList.parse("a, b"), TagList.parse("c")]
    #expect(
      q.description
        == "keep 1 latest, 3 weekly snapshots, daily snapshots within 1y2d and all snapshots with tags [[a, b] [c]]")
    var l = ForgetPolicy()
    l.last = 2
    #expect(l.description == "keep 2 latest snapshots")
  }

  @Test func groupingByHostPathsTags() throws {
    #expect(throws: (any Error).self) { try SnapshotGrouping(parsing: "host,foo") }
    #expect(try SnapshotGrouping(parsing: "") == SnapshotGrouping())
    #expect(try SnapshotGrouping(parsing: "hosts,path") == .default)
    let t = Timestamp(seconds: 1_700_000_000, nanoseconds: 0, offset: 0)
    func snap(_ host: String, _ paths: [String], _ tags: [String]) -> Snapshot {
      var s = Snapshot(time: t, tree: zeroTree, paths: paths)
      (s.hostname, s.tags) = (host, tags)
      return s
    }
    let all = [
      snap("b", ["/y", "/x"], ["t2", "t1"]), snap("a", ["/x", "/y"], []), snap("b", ["/x", "/y"], ["t1", "t2"]),
      snap("a", ["/z"], ["t1", "t2"]),
    ]
    let byDefault = SnapshotGrouping.default.group(all)
    #expect(
      byDefault.map(\.key.json) == [
        #"{"hostname":"a","paths":["/x","/y"],"tags":null}"#, #"{"hostname":"a","paths":["/z"],"tags":null}"#,
        #"{"hostname":"b","paths":["/x","/y"],"tags":null}"#,
      ])
    #expect(byDefault[2].snapshots.count == 2)
    #expect(byDefault[2].snapshots[0].paths == ["/x", "/y"])  // sorted, as restic sorts in place
    #expect(byDefault[2].snapshots[0].tags == ["t2", "t1"])  // tags untouched unless grouped by them
    let byTags = try SnapshotGrouping(parsing: "tags").group(all)
    #expect(
      byTags.map(\.key.json) == [
        #"{"hostname":"","paths":null,"tags":["t1","t2"]}"#, #"{"hostname":"","paths":null,"tags":null}"#,
      ])
    #expect(byTags[0].snapshots.count == 3)
    #expect(byTags[0].snapshots[0].tags == ["t1", "t2"])
    #expect(SnapshotGrouping().group(all).count == 1)
  }

  @Test func tagListsMatchAsRestic() {
    var s = Snapshot(time: .now(), tree: zeroTree, paths: ["/a"])
    #expect(s.hasTags(TagList.parse("")))  // untagged matches the empty tag
    s.tags = ["x", "y"]
    #expect(!s.hasTags(TagList.parse("")))
    #expect(s.hasTags(TagList.parse("y, x")))
    #expect(!s.hasTags(TagList.parse("x,z")))
    #expect(s.hasTagList([["z"], ["x"]]))
    #expect(s.hasTagList([]))
    #expect(TagList.describe(TagList.parse(" a ,b")) == "[a, b]")
  }

  /// Week buckets are ISO weeks of the snapshot's own civil date; months step back with Go's normalisation.
  @Test func calendarArithmeticIsGos() throws {
    // 2020-12-31 (week 2020-53) and 2021-01-03 (a Sunday, still week 2020-53) share a bucket: only one kept.
    var p = ForgetPolicy()
    p.weekly = 5
    let times = [
      "2021-01-04T00:00:00Z", "2021-01-03T23:59:59Z", "2020-12-31T10:00:00Z", "2020-12-27T10:00:00Z",
      "2019-12-30T01:00:00+02:00", "2019-12-29T22:30:00Z",
    ]
    let input = times.enumerated().map { i, t in
      var x = Snapshot(time: Timestamp(rfc3339: t)!, tree: zeroTree, paths: [])
      x.id = SnapshotID(RawID.hash([UInt8(i)]))
      return x
    }
    // 2019-12-30 at +02:00 is Monday of ISO week 2020-01 (in UTC it would be Sunday 2019-12-29, week 2019-52,
    // sharing a bucket with the next one).
    #expect(
      p.apply(to: input).keep.map(\.time.rfc3339) == [
        "2021-01-04T00:00:00Z", "2021-01-03T23:59:59Z", "2020-12-27T10:00:00Z", "2019-12-30T01:00:00+02:00",
        "2019-12-29T22:30:00Z",
      ])

    // 2016-03-31 minus one month is "2016-02-31", which Go normalises to 2016-03-02.
    var m = ForgetPolicy()
    m.within = RetentionDuration(months: 1)
    let edge = ["2016-03-31T12:00:00Z", "2016-03-02T12:00:01Z", "2016-03-02T12:00:00Z"].enumerated().map { i, t in
      var x = Snapshot(time: Timestamp(rfc3339: t)!, tree: zeroTree, paths: [])
      x.id = SnapshotID(RawID.hash([UInt8(i)]))
      return x
    }
    #expect(m.apply(to: edge, now: Timestamp(rfc3339: "2017-01-01T00:00:00Z")!).keep.count == 2)
  }

  /// A snapshot in the local zone steps back by the zone's rules: July (+02:00) minus 6 months is January (+01:00).
  @Test func withinFollowsTheLocalZonesRules() throws {
    // A Berlin-like zone: +01:00, and +02:00 from 2024-03-31T01:00Z to 2024-10-27T01:00Z.
    let berlin: (Int64) -> Int32 = { t in (1_711_846_800..<1_729_990_800).contains(t) ? 7200 : 3600 }
    let input = [
      "2024-07-15T12:00:00+02:00", "2024-01-15T12:30:00+01:00", "2024-01-15T11:30:00+01:00",
      "2024-01-15T10:30:00+01:00",
    ].enumerated()
      .map { i, t in
        var x = Snapshot(time: Timestamp(rfc3339: t)!, tree: zeroTree, paths: [])
        x.id = SnapshotID(RawID.hash([UInt8(i)]))
        return x
      }
    var p = ForgetPolicy()
    p.within = RetentionDuration(months: 6)
    let now = Timestamp(rfc3339: "2025-01-01T00:00:00Z")!
    #expect(p.apply(to: input, now: now, localOffset: berlin).keep.count == 2)
    // Cut-off 2024-01-15 12:00 local = 11:00Z; in a fixed +02:00 zone it is 10:00Z, and 11:30+01:00 is after that.
    #expect(p.apply(to: input, now: now, localOffset: { _ in 0 }).keep.count == 3)
  }

  @Test func futureSnapshotsAreNotLatest() throws {
    let input = ["2030-01-01T00:00:00Z", "2020-01-02T00:00:00Z", "2020-01-01T00:00:00Z", "2019-12-30T00:00:00Z"]
      .enumerated().map { i, t in
        var x = Snapshot(time: Timestamp(rfc3339: t)!, tree: zeroTree, paths: [])
        x.id = SnapshotID(RawID.hash([UInt8(i)]))
        return x
      }
    var p = ForgetPolicy()
    p.within = RetentionDuration(days: 2)
    let now = Timestamp(rfc3339: "2025-01-01T00:00:00Z")!
    #expect(p.apply(to: input, now: now).keep.count == 3)  // the future one, and the two within 2d of 2020-01-02
    #expect(p.apply(to: input, now: Timestamp(rfc3339: "2000-01-01T00:00:00Z")!).keep.count == 4)
  }
}
