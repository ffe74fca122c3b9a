// Forget policy: which snapshots a retention policy keeps, with restic 0.14's exact semantics
// (`internal/restic/snapshot_policy.go`, `snapshot_group.go`), so that `tidemark forget` and
// `restic forget` with the same flags keep and remove the same snapshots, for the same reasons.
//
// Pure: no I/O, no clock or time zone read behind the caller's back (both are parameters with
// system defaults). Values only; everything here is Sendable.
//
// The algorithm, as restic runs it on each group of snapshots:
//   1. Sort newest first (stable: snapshots with equal times keep their input order).
//   2. `latest` is the newest snapshot that is not in the future; `--keep-within*` durations count back from it
//      in calendar terms (years, months, days as Go's `AddDate`, then hours).
//   3. Walk the list once. A snapshot is kept when any rule matches, and every matching rule is recorded:
//      - `--keep-tag L`: it has all tags of one list L ("has tags [a, b]"),
//      - `--keep-within D`: it is strictly newer than latest − D ("within D"),
//      - `--keep-last/-hourly/-daily/-weekly/-monthly/-yearly N`: each has a bucket function (a running number,
//        YYYYMMDDHH, YYYYMMDD, ISO year and week, YYYYMM, YYYY of the snapshot's civil time in its own stored zone
//        offset) and a counter starting at N. When the snapshot's bucket differs from the previous *kept-by-this-rule*
//        bucket and the counter is above zero, it is kept ("daily snapshot") and the counter goes down. So the newest
//        snapshot of each bucket is the one kept, and equal buckets are only counted once.
//      - `--keep-within-hourly/-daily/… D`: the same buckets, without a counter, for snapshots newer than latest − D
//        ("daily within D").
//   4. Counters after each kept snapshot are reported with it, as restic does.
// An empty policy keeps everything ("policy is empty"). Counts below zero never match (restic 0.14 has no
// "unlimited"); the CLI refuses them.
import Foundation
import TidemarkCore

/// restic's tag lists: `--tag a,b` / `--keep-tag a,b` means "all of a and b"; repeating the flag means "any list".
public enum TagList {
  /// Splits at commas and trims white space around each tag (`"a, b"` is `["a", "b"]`, `""` is `[""]`).
  public static func parse(_ text: String) -> [String] {
    text.split(separator: ",", omittingEmptySubsequences: false).map {
      $0.trimmingCharacters(in: .whitespacesAndNewlines)
    }
  }

  /// restic's `%v` of a tag list: `[a, b]`.
  public static func describe(_ list: [String]) -> String { "[" + list.joined(separator: ", ") + "]" }
}

extension Snapshot {
  /// restic's `HasTags`: the snapshot has every tag of `list`; an empty tag in the list matches a snapshot
  /// without tags (so `--tag ''` selects untagged snapshots).
  public func hasTags(_ list: [String]) -> Bool {
    for tag in list {
      if tag.isEmpty && tags.isEmpty { return true }
      if !tags.contains(tag) { return false }
    }
    return true
  }

  /// restic's `HasTagList`: no lists, or at least one list whose tags the snapshot all has.
  public func hasTagList(_ lists: [[String]]) -> Bool { lists.isEmpty || lists.contains { hasTags($0) } }

  /// restic's `HasPaths`: the snapshot has each of `paths` (exact string match).
  public func hasPaths(_ wanted: [String]) -> Bool { wanted.allSatisfy { paths.contains($0) } }

  /// restic's `HasHostname`: no hosts given, or the snapshot's host is one of them.
  public func hasHostname(_ hosts: [String]) -> Bool { hosts.isEmpty || hosts.contains(hostname) }
}

/// A retention policy: restic's `ExpirePolicy`.
public struct ForgetPolicy: Sendable, CustomStringConvertible {
  public var last = 0
  public var hourly = 0
  public var daily = 0
  public var weekly = 0
  public var monthly = 0
  public var yearly = 0
  public var within = RetentionDuration()
  public var withinHourly = RetentionDuration()
  public var withinDaily = RetentionDuration()
  public var withinWeekly = RetentionDuration()
  public var withinMonthly = RetentionDuration()
  public var withinYearly = RetentionDuration()
  /// Keep snapshots that have all tags of at least one of these lists.
  public var keepTags: [[String]] = []

  public init() {}

  /// The policy from `forget`'s flags: the counts, the `--keep-within*` durations as given (restic's `1y5m7d2h`;
  /// "" for none) and the `--keep-tag` lists (`a,b`). Negative counts and durations are refused: restic 0.14
  /// removes every snapshot for them, later versions read -1 as unlimited.
  public init(
    last: Int, hourly: Int, daily: Int, weekly: Int, monthly: Int, yearly: Int, within: String,
    withinHourly: String, withinDaily: String, withinWeekly: String, withinMonthly: String, withinYearly: String,
    keepTags: [String]
  ) throws {
    for (name, n) in [
      ("keep-last", last), ("keep-hourly", hourly), ("keep-daily", daily), ("keep-weekly", weekly),
      ("keep-monthly", monthly), ("keep-yearly", yearly),
    ] where n < 0 {
      throw TidemarkError(
        .usage, "--\(name) \(n): counts must be 0 or more",
        hint: "restic 0.14 removes every snapshot for a negative count and later versions read -1 as unlimited; "
          + "give the number of snapshots to keep")
    }
    (self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly) =
      (last, hourly, daily, weekly, monthly, yearly)
    func duration(_ name: String, _ text: String) throws -> RetentionDuration {
      let d: RetentionDuration
      do {
        d = try RetentionDuration(parsing: text)
      } catch let e as TidemarkError {
        throw TidemarkError(
          .usage, "invalid argument \"\(text)\" for \"--\(name)\" flag: \(e.message)", hint: "use e.g. 1y5m7d2h")
      }
      if [d.years, d.months, d.days, d.hours].contains(where: { $0 < 0 }) {
        throw TidemarkError(.usage, "--\(name) \(text): durations must not be negative")
      }
      return d
    }
    self.within = try duration("keep-within", within)
    self.withinHourly = try duration("keep-within-hourly", withinHourly)
    self.withinDaily = try duration("keep-within-daily", withinDaily)
    self.withinWeekly = try duration("keep-within-weekly", withinWeekly)
    self.withinMonthly = try duration("keep-within-monthly", withinMonthly)
    self.withinYearly = try duration("keep-within-yearly", withinYearly)
    self.keepTags = keepTags.map(TagList.parse)
  }

  /// No rule at all: restic then keeps every snapshot (and the CLI removes nothing).
  /// A count of -1 is a rule (that never matches), as in restic 0.14.
  public var isEmpty: Bool {
    keepTags.isEmpty && [last, hourly, daily, weekly, monthly, yearly].allSatisfy { $0 == 0 }
      && [within, withinHourly, withinDaily, withinWeekly, withinMonthly, withinYearly].allSatisfy(\.isZero)
  }

  /// The largest number of snapshots the counted rules can keep (restic's `Sum`).
  public var sum: Int { last + hourly + daily + weekly + monthly + yearly }

  /// restic's "keep 2 latest, 7 daily snapshots, daily snapshots within 1m and all snapshots with tags [[a]]
  /// and all snapshots within 2d of the newest" (printed after "Applying Policy: ").
  public var description: String {
    var counted: [String] = []
    for (n, what) in [
      (last, "latest"), (hourly, "hourly"), (daily, "daily"), (weekly, "weekly"), (monthly, "monthly"),
      (yearly, "yearly"),
    ] where n > 0 {
      counted.append("\(n) \(what)")
    }
    var timed: [String] = []
    for (d, what) in [
      (withinHourly, "hourly"), (withinDaily, "daily"), (withinWeekly, "weekly"), (withinMonthly, "monthly"),
      (withinYearly, "yearly"),
    ] where !d.isZero {
      timed.append("\(what) snapshots within \(d)")
    }
    var s = counted.isEmpty ? "" : counted.joined(separator: ", ") + " snapshots"
    if !timed.isEmpty {
      if !s.isEmpty { s += ", " }
      s += timed.joined(separator: ", ")
    }
    if !keepTags.isEmpty {
      if !s.isEmpty { s += " and " }
      s += "all snapshots with tags [" + keepTags.map(TagList.describe).joined(separator: " ") + "]"
    }
    if !within.isZero {
      if !s.isEmpty { s += " and " }
      s += "all snapshots within \(within) of the newest"
    }
    return "keep " + s
  }

  /// Why one snapshot is kept: the matching rules in restic's words, and every counter after it.
  public struct KeepReason: Sendable {
    public var snapshot: Snapshot
    /// e.g. "has tags [a, b]", "within 2d", "last snapshot", "daily snapshot", "daily within 1m".
    public var matches: [String]
    public var counters: Counters
  }

  /// The remaining count of each counted rule (restic's JSON omits zeros).
  public struct Counters: Hashable, Sendable {
    public var last = 0
    public var hourly = 0
    public var daily = 0
    public var weekly = 0
    public var monthly = 0
    public var yearly = 0
    public init(last: Int = 0, hourly: Int = 0, daily: Int = 0, weekly: Int = 0, monthly: Int = 0, yearly: Int = 0) {
      (self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly) =
        (last, hourly, daily, weekly, monthly, yearly)
    }
  }

  /// The outcome for one group. `keep`, `remove` and `reasons` are newest first; `reasons[i]` is `keep[i]`'s.
  public struct Result: Sendable {
    public var keep: [Snapshot] = []
    public var remove: [Snapshot] = []
    public var reasons: [KeepReason] = []
  }

  /// Applies the policy to one group of snapshots (restic's `ApplyPolicy`).
  /// - Parameters:
  ///   - now: snapshots after this instant are never `latest` (the base of `--keep-within*`).
  ///   - localOffset: the machine's zone offset at an instant. A snapshot whose stored offset is the local one at
  ///     its time is, for Go, in the local zone, and stepping back whole months or years from it follows the local
  ///     zone's rules (daylight saving time); any other offset stays fixed.
  public func apply(
    to snapshots: [Snapshot], now: Timestamp = .now(),
    localOffset: (Int64) -> Int32 = { Timestamp.local(seconds: $0, nanoseconds: 0).offset }
  ) -> Result {
    let list = snapshots.enumerated().sorted { a, b in
      a.element.time != b.element.time ? a.element.time > b.element.time : a.offset < b.offset
    }
    .map(\.element)
    var result = Result()
    if isEmpty {
      result.keep = list
      result.reasons = list.map { KeepReason(snapshot: $0, matches: ["policy is empty"], counters: Counters()) }
      return result
    }
    guard !list.isEmpty else { return result }

    struct Bucket {
      var count: Int
      var bucket: (Timestamp, Int) -> Int
      var previous: Int? = nil
      let reason: String
    }
    var counted = [
      Bucket(count: last, bucket: { _, nr in nr }, reason: "last snapshot"),
      Bucket(count: hourly, bucket: { t, _ in Self.ymdh(t) }, reason: "hourly snapshot"),
      Bucket(count: daily, bucket: { t, _ in Self.ymd(t) }, reason: "daily snapshot"),
      Bucket(count: weekly, bucket: { t, _ in Self.yearWeek(t) }, reason: "weekly snapshot"),
      Bucket(count: monthly, bucket: { t, _ in Self.ym(t) }, reason: "monthly snapshot"),
      Bucket(count: yearly, bucket: { t, _ in t.civil.year }, reason: "yearly snapshot"),
    ]
    struct TimedBucket {
      let within: RetentionDuration
      let bucket: (Timestamp) -> Int
      var previous: Int? = nil
      let reason: String
    }
    var timed = [
      TimedBucket(within: withinHourly, bucket: Self.ymdh, reason: "hourly within"),
      TimedBucket(within: withinDaily, bucket: Self.ymd, reason: "daily within"),
      TimedBucket(within: withinWeekly, bucket: Self.yearWeek, reason: "weekly within"),
      TimedBucket(within: withinMonthly, bucket: Self.ym, reason: "monthly within"),
      TimedBucket(within: withinYearly, bucket: { $0.civil.year }, reason: "yearly within"),
    ]

    let latest = Self.latest(list, now: now)
    func cutoff(_ d: RetentionDuration) -> Timestamp {
      Self.subtract(d, from: latest, localOffset: localOffset)
    }
    let withinCutoff = within.isZero ? nil : cutoff(within)
    let timedCutoffs = timed.map { $0.within.isZero ? nil : cutoff($0.within) }

    for (nr, snapshot) in list.enumerated() {
      var matches: [String] = []
      for tags in keepTags where snapshot.hasTags(tags) {
        matches.append("has tags \(TagList.describe(tags))")
      }
      if let withinCutoff, snapshot.time > withinCutoff {
        matches.append("within \(within)")
      }
      for i in counted.indices where counted[i].count > 0 {
        let value = counted[i].bucket(snapshot.time, nr)
        if value != counted[i].previous {
          counted[i].previous = value
          counted[i].count -= 1
          matches.append(counted[i].reason)
        }
      }
      for i in timed.indices {
        guard let c = timedCutoffs[i], snapshot.time > c else { continue }
        let value = timed[i].bucket(snapshot.time)
        if value != timed[i].previous {
          timed[i].previous = value
          matches.append("\(timed[i].reason) \(timed[i].within)")
        }
      }
      if matches.isEmpty {
        result.remove.append(snapshot)
      } else {
        result.keep.append(snapshot)
        let counters = Counters(
          last: counted[0].count, hourly: counted[1].count, daily: counted[2].count, weekly: counted[3].count,
          monthly: counted[4].count, yearly: counted[5].count)
        result.reasons.append(KeepReason(snapshot: snapshot, matches: matches, counters: counters))
      }
    }
    return result
  }

  // MARK: Time arithmetic, as Go's time package does it

  /// Go's zero `time.Time` (0001-01-01 00:00:00 UTC): `latest` when every snapshot is in the future.
  static let goZeroTime = Timestamp(seconds: -62_135_596_800, nanoseconds: 0, offset: 0)

  /// The newest snapshot that is strictly before `now` (restic's `findLatestTimestamp`).
  static func latest(_ list: [Snapshot], now: Timestamp) -> Timestamp {
    var latest = goZeroTime
    for s in list where s.time > latest && s.time < now { latest = s.time }
    return latest
  }

  /// `t.AddDate(-years, -months, -days).Add(-hours)`, with Go's normalisation (31 March minus a month is 3 March
  /// in a leap year: "31 February" rolls over).
  static func subtract(_ d: RetentionDuration, from t: Timestamp, localOffset: (Int64) -> Int32) -> Timestamp {
    let c = t.civil
    var month0 = c.month - 1 - d.months
    let year = c.year - d.years + month0.floorDiv(12)
    month0 = month0.floorMod(12)
    let days = daysFromCivil(year: year, month: month0 + 1, day: 1) + Int64(c.day - 1 - d.days)
    let wall = days * 86400 + Int64(c.hour * 3600 + c.minute * 60 + c.second)
    // Go keeps a parsed time in time.Local when its offset is the local one at that instant ("Z" is always UTC).
    let isLocal = t.offset != 0 && localOffset(t.seconds) == t.offset
    var offset = t.offset
    if isLocal {
      // time.Date in a zone with rules: guess the offset at the wall time taken as UTC, then correct it.
      offset = localOffset(wall - Int64(localOffset(wall)))
    }
    return Timestamp(
      seconds: wall - Int64(offset) - Int64(d.hours) * 3600, nanoseconds: t.nanoseconds, offset: offset)
  }

  /// YYYYMMDDHH of the snapshot's civil time in its stored zone.
  static func ymdh(_ t: Timestamp) -> Int {
    let c = t.civil
    return c.year * 1_000_000 + c.month * 10_000 + c.day * 100 + c.hour
  }

  static func ymd(_ t: Timestamp) -> Int {
    let c = t.civil
    return c.year * 10_000 + c.month * 100 + c.day
  }

  static func ym(_ t: Timestamp) -> Int {
    let c = t.civil
    return c.year * 100 + c.month
  }

  /// ISO 8601 year * 100 + week (Go's `ISOWeek`: weeks start on Monday; the week holding the year's first
  /// Thursday is week 1).
  static func yearWeek(_ t: Timestamp) -> Int {
    let days = (t.seconds + Int64(t.offset)).floorDiv(86400)
    let weekday = (days + 4).floorMod(7)  // 0 = Sunday; 1970-01-01 was a Thursday
    let thursday = days + Int64(4 - (weekday == 0 ? 7 : weekday))
    let (year, _, _) = civilFromDays(thursday)
    let dayOfYear = thursday - daysFromCivil(year: year, month: 1, day: 1)
    return year * 100 + Int(dayOfYear / 7) + 1
  }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
func daysFromCivil(year: Int, month: Int, day: Int) -> Int64 {
  let y = Int64(month <= 2 ? year - 1 : year)
  let era = y.floorDiv(400)
  let yoe = y - era * 400
  let mp = Int64((month + 9) % 12)
  let doy = (153 * mp + 2) / 5 + Int64(day) - 1
  let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
  return era * 146_097 + doe - 719_468
}

func civilFromDays(_ days: Int64) -> (year: Int, month: Int, day: Int) {
  let z = days + 719_468
  let era = z.floorDiv(146_097)
  let doe = z - era * 146_097
  let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
  let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
  let mp = (5 * doy + 2) / 153
  let d = doy - (153 * mp + 2) / 5 + 1
  let m = mp < 10 ? mp + 3 : mp - 9
  return (Int(yoe + era * 400 + (m <= 2 ? 1 : 0)), Int(m), Int(d))
}

extension BinaryInteger {
  fileprivate func floorDiv(_ d: Self) -> Self {
    let q = self / d
    return (self % d != 0 && (self < 0) != (d < 0)) ? q - 1 : q
  }
  fileprivate func floorMod(_ d: Self) -> Self { self - floorDiv(d) * d }
}

/// restic's `--group-by`: any of host, paths, tags (also host[s], path[s], tag[s]), comma-separated; `""` is one
/// group for everything.
public struct SnapshotGrouping: Hashable, Sendable {
  public var byHost = false
  public var byPaths = false
  public var byTags = false

  public init(byHost: Bool = false, byPaths: Bool = false, byTags: Bool = false) {
    (self.byHost, self.byPaths, self.byTags) = (byHost, byPaths, byTags)
  }

  /// restic's default, `host,paths`.
  public static let `default` = SnapshotGrouping(byHost: true, byPaths: true)

  public init(parsing text: String) throws {
    for option in text.split(separator: ",", omittingEmptySubsequences: false) {
      switch option {
      case "host", "hosts": byHost = true
      case "path", "paths": byPaths = true
      case "tag", "tags": byTags = true
      case "": break
      default: throw TidemarkError(.usage, "unknown grouping option: '\(option)'", hint: "use host, paths and/or tags")
      }
    }
  }

  /// What a group shares: nil for a criterion not grouped by (restic's JSON `null`).
  public struct Key: Hashable, Sendable {
    public var hostname: String
    public var paths: [String]?
    public var tags: [String]?

    /// restic's description of a group, `host [h], tags [a, b], paths [/x, /y]`; empty when not grouped.
    public var description: String {
      var parts: [String] = []
      if !hostname.isEmpty { parts.append("host [\(hostname)]") }
      if let tags { parts.append("tags [\(tags.joined(separator: ", "))]") }
      if let paths { parts.append("paths [\(paths.joined(separator: ", "))]") }
      return parts.joined(separator: ", ")
    }

    /// restic's group key, `{"hostname":…,"paths":…,"tags":…}` (Go encoding); groups are listed in its order.
    public var json: String {
      var w = JSONWriter()
      w.raw("{\"hostname\":")
      w.string(hostname)
      w.raw(",\"paths\":")
      if let paths { w.stringArray(paths) } else { w.raw("null") }
      w.raw(",\"tags\":")
      if let tags { w.stringArray(tags) } else { w.raw("null") }
      w.raw("}")
      return String(decoding: w.out, as: UTF8.self)
    }
  }

  /// Splits snapshots into groups, keeping their order within each. As restic does (it sorts in place), every
  /// snapshot's paths come back sorted, and its tags too when grouping by tags; missing tags or paths are `nil`.
  public func group(_ snapshots: [Snapshot]) -> [(key: Key, snapshots: [Snapshot])] {
    var groups: [String: (key: Key, snapshots: [Snapshot])] = [:]
    for var s in snapshots {
      s.paths = Self.goSorted(s.paths)
      if byTags { s.tags = Self.goSorted(s.tags) }
      let key = Key(
        hostname: byHost ? s.hostname : "", paths: byPaths && !s.paths.isEmpty ? s.paths : nil,
        tags: byTags && !s.tags.isEmpty ? s.tags : nil)
      groups[key.json, default: (key, [])].snapshots.append(s)
    }
    return groups.sorted { Array($0.key.utf8).lexicographicallyPrecedes(Array($1.key.utf8)) }.map(\.value)
  }

  /// Go's `sort.Strings`: byte order.
  static func goSorted(_ a: [String]) -> [String] {
    a.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
  }
}
