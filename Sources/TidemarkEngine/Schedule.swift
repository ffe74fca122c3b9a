// When the daemon runs a DR drill: `hourly`, `daily`, `weekly` or a duration (that long after the last drill),
// or a five-field cron expression in local time (`30 3 * * 0`: Sundays at 03:30).
import Foundation

public enum DrillSchedule: Sendable, Equatable {
  case every(seconds: Double)
  case cron(Cron)

  public init?(_ text: String) {
    let s = text.trimmingCharacters(in: .whitespaces)
    switch s {
    case "hourly": self = .every(seconds: 3600)
    case "daily": self = .every(seconds: 86400)
    case "weekly": self = .every(seconds: 7 * 86400)
    default:
      if s.split(separator: " ", omittingEmptySubsequences: true).count == 5 {
        guard let c = Cron(s) else { return nil }
        self = .cron(c)
      } else {
        guard let d = EngineConfig.parseDuration(s), d >= .seconds(1) else { return nil }
        self = .every(seconds: d.inSeconds)
      }
    }
  }

  /// Whether a drill is due at `now` (Unix seconds) when the last one started at `last` (nil: never, so now).
  public func isDue(last: Double?, now: Double) -> Bool {
    guard let last else { return true }
    switch self {
    case .every(let seconds): return now - last >= seconds
    case .cron(let c):
      // A matching minute after the last drill's minute, up to now (at most 8 days back).
      var t = (max(last, now - 8 * 86400) / 60).rounded(.down) * 60 + 60
      while t <= now {
        if c.matches(t) { return true }
        t += 60
      }
      return false
    }
  }
}

/// A cron expression: minute hour day-of-month month day-of-week, each `*`, a number, a range `a-b`, a step
/// `*/n` or `a-b/n`, or a comma list of those. Day of week 0–7 (0 and 7 are Sunday). As in cron, when both day
/// fields are restricted a day matching either one matches.
public struct Cron: Sendable, Equatable {
  let minutes: Set<Int>, hours: Set<Int>, days: Set<Int>, months: Set<Int>, weekdays: Set<Int>
  let dayRestricted: Bool, weekdayRestricted: Bool

  public init?(_ text: String) {
    let f = text.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
    guard f.count == 5, let mi = Cron.field(f[0], 0, 59), let h = Cron.field(f[1], 0, 23),
      let d = Cron.field(f[2], 1, 31), let mo = Cron.field(f[3], 1, 12), var w = Cron.field(f[4], 0, 7)
    else { return nil }
    if w.remove(7) != nil { w.insert(0) }
    (minutes, hours, days, months, weekdays) = (mi, h, d, mo, w)
    dayRestricted = f[2] != "*"
    weekdayRestricted = f[4] != "*"
  }

  static func field(_ s: String, _ lo: Int, _ hi: Int) -> Set<Int>? {
    var out = Set<Int>()
    for part in s.split(separator: ",", omittingEmptySubsequences: false) {
      let pieces = part.split(separator: "/", omittingEmptySubsequences: false)
      guard pieces.count <= 2 else { return nil }
      var step = 1
      if pieces.count == 2 {
        guard let n = Int(pieces[1]), n >= 1 else { return nil }
        step = n
      }
      var a = lo
      var b = hi
      if pieces[0] != "*" {
        let r = pieces[0].split(separator: "-", omittingEmptySubsequences: false)
        guard r.count <= 2, let x = Int(r[0]) else { return nil }
        a = x
        b = x
        if r.count == 2 {
          guard let y = Int(r[1]) else { return nil }
          b = y
        } else if pieces.count == 2 {
          b = hi
        }
      }
      guard a >= lo, b <= hi, a <= b else { return nil }
      out.formUnion(stride(from: a, through: b, by: step))
    }
    return out.isEmpty ? nil : out
  }

  /// Whether the minute that contains Unix time `t` matches, in local time.
  public func matches(_ t: Double) -> Bool {
    var secs = time_t(t)
    var tmv = tm()
    localtime_r(&secs, &tmv)
    guard minutes.contains(Int(tmv.tm_min)), hours.contains(Int(tmv.tm_hour)), months.contains(Int(tmv.tm_mon) + 1)
    else { return false }
    let d = days.contains(Int(tmv.tm_mday))
    let w = weekdays.contains(Int(tmv.tm_wday))
    if dayRestricted && weekdayRestricted { return d || w }
    return d && w
  }
}
