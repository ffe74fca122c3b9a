// restic's calendar durations (`1y5m7d2h`): forget's `--keep-within*` and the S3 object-lock retention period;
// ISO 8601 UTC times as S3 writes retention dates.
import Foundation

/// restic's calendar duration for `--keep-within*`: `1y5m7d2h` (years, months, days, hours).
public struct RetentionDuration: Hashable, Sendable, CustomStringConvertible {
  public var years = 0
  public var months = 0
  public var days = 0
  public var hours = 0

  public init(years: Int = 0, months: Int = 0, days: Int = 0, hours: Int = 0) {
    (self.years, self.months, self.days, self.hours) = (years, months, days, hours)
  }

  /// Parses restic's syntax: numbers (optionally negative) each followed by one unit of `y`, `m`, `d`, `h`;
  /// a unit given twice takes the last value; surrounding white space and the empty string (zero) are accepted.
  /// The error messages are restic's.
  public init(parsing text: String) throws {
    var rest = Substring(text.trimmingCharacters(in: .whitespacesAndNewlines))
    while !rest.isEmpty {
      var negative = false
      if rest.first == "-" {
        negative = true
        rest = rest.dropFirst()
      }
      let digits = rest.prefix { $0.isASCII && $0.isNumber }
      guard !digits.isEmpty else { throw TidemarkError(.usage, "no number found") }
      // Larger values would overflow Go's time arithmetic in restic; here they would trap.
      guard let magnitude = Int(digits), magnitude <= 1_000_000_000 else {
        throw TidemarkError(.usage, "number \(digits) is too large")
      }
      let number = negative ? -magnitude : magnitude
      rest = rest.dropFirst(digits.count)
      guard let unit = rest.first else { throw TidemarkError(.usage, "no unit found after number \(number)") }
      switch unit {
      case "y": years = number
      case "m": months = number
      case "d": days = number
      case "h": hours = number
      default: throw TidemarkError(.usage, "invalid unit '\(unit)' found after number \(number)")
      }
      rest = rest.dropFirst()
    }
  }

  public var isZero: Bool { years == 0 && months == 0 && days == 0 && hours == 0 }

  /// restic's spelling: the non-zero parts in the order y, m, d, h (`1y2m3d3h`).
  public var description: String {
    var s = ""
    if years != 0 { s += "\(years)y" }
    if months != 0 { s += "\(months)m" }
    if days != 0 { s += "\(days)d" }
    if hours != 0 { s += "\(hours)h" }
    return s
  }
}

extension RetentionDuration {
  /// `date` plus this duration in UTC calendar terms (years, months and days on the calendar, then hours).
  public func added(to date: Date) -> Date {
    var calendar = Calendar(identifier: .gregorian)
    calendar.timeZone = TimeZone(identifier: "UTC")!
    let components = DateComponents(year: years, month: months, day: days, hour: hours)
    return calendar.date(byAdding: components, to: date) ?? date
  }
}

/// ISO 8601 times in UTC as S3 Object Lock writes them: `2027-01-05T10:00:00Z` (a fraction of a second is read
/// as the next whole second).
public enum UTCDate {
  public static func format(_ d: Date) -> String {
    var t = time_t(d.timeIntervalSince1970.rounded(.down))
    var u = tm()
    gmtime_r(&t, &u)
    func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
    return
      "\(u.tm_year + 1900)-\(two(u.tm_mon + 1))-\(two(u.tm_mday))T\(two(u.tm_hour)):\(two(u.tm_min)):\(two(u.tm_sec))Z"
  }

  /// `YYYY-MM-DDTHH:MM:SS[.fraction]Z`; nil for anything else.
  public static func parse(_ s: String) -> Date? {
    let b = Array(s.utf8)
    guard b.count >= 20, b.last == UInt8(ascii: "Z"), b[4] == UInt8(ascii: "-"), b[7] == UInt8(ascii: "-"),
      b[10] == UInt8(ascii: "T"), b[13] == UInt8(ascii: ":"), b[16] == UInt8(ascii: ":")
    else { return nil }
    func number(_ r: Range<Int>) -> Int32? {
      var n: Int32 = 0
      for i in r {
        guard b[i] >= UInt8(ascii: "0") && b[i] <= UInt8(ascii: "9") else { return nil }
        n = n * 10 + Int32(b[i] - UInt8(ascii: "0"))
      }
      return n
    }
    // A fraction rounds up: a retention is never taken to end before it does.
    var roundUp: TimeInterval = 0
    if b.count > 20 {
      guard b[19] == UInt8(ascii: "."), b.count > 21, let f = number(20..<(b.count - 1)) else { return nil }
      if f > 0 { roundUp = 1 }
    }
    guard let year = number(0..<4), let month = number(5..<7), let day = number(8..<10), let hour = number(11..<13),
      let minute = number(14..<16), let second = number(17..<19), (1...12).contains(month), (1...31).contains(day),
      hour < 24, minute < 60, second < 61
    else { return nil }
    var u = tm()
    (u.tm_year, u.tm_mon, u.tm_mday, u.tm_hour, u.tm_min, u.tm_sec) = (
      year - 1900, month - 1, day, hour, minute, second
    )
    return Date(timeIntervalSince1970: TimeInterval(timegm(&u)) + roundUp)
  }
}
