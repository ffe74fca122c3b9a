// Timestamps as restic writes them: Go's RFC3339Nano with the local zone offset at that instant.
import Foundation

public struct Timestamp: Hashable, Comparable, Sendable, CustomStringConvertible {
  public var seconds: Int64
  public var nanoseconds: Int32
  /// Zone offset east of UTC, in seconds, used when formatting.
  public var offset: Int32

  public init(seconds: Int64, nanoseconds: Int32, offset: Int32) {
    self.seconds = seconds
    self.nanoseconds = nanoseconds
    self.offset = offset
  }

  /// The instant in the machine's local zone (as Go's time.Local does).
  public static func local(seconds: Int64, nanoseconds: Int32) -> Timestamp {
    var t = time_t(seconds)
    var tmv = tm()
    localtime_r(&t, &tmv)
    return Timestamp(seconds: seconds, nanoseconds: nanoseconds, offset: Int32(tmv.tm_gmtoff))
  }

  public static func now() -> Timestamp {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return .local(seconds: Int64(ts.tv_sec), nanoseconds: Int32(ts.tv_nsec))
  }

  public static func < (a: Timestamp, b: Timestamp) -> Bool {
    (a.seconds, a.nanoseconds) < (b.seconds, b.nanoseconds)
  }

  public static func == (a: Timestamp, b: Timestamp) -> Bool {
    a.seconds == b.seconds && a.nanoseconds == b.nanoseconds
  }
  public func hash(into h: inout Hasher) {
    h.combine(seconds)
    h.combine(nanoseconds)
  }

  /// Civil date/time fields at the stored offset.
  public var civil: (year: Int, month: Int, day: Int, hour: Int, minute: Int, second: Int) {
    let local = seconds + Int64(offset)
    var days = local >= 0 ? local / 86400 : (local - 86399) / 86400
    let secs = Int(local - days * 86400)
    // Days since 1970-01-01 to civil date (Howard Hinnant's algorithm).
    days += 719468
    let era = (days >= 0 ? days : days - 146096) / 146097
    let doe = days - era * 146097
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
    let mp = (5 * doy + 2) / 153
    let d = doy - (153 * mp + 2) / 5 + 1
    let m = mp < 10 ? mp + 3 : mp - 9
    let y = yoe + era * 400 + (m <= 2 ? 1 : 0)
    return (Int(y), Int(m), Int(d), secs / 3600, (secs % 3600) / 60, secs % 60)
  }

  /// Go's RFC3339Nano: fraction with trailing zeros trimmed, `Z` for a zero offset.
  public var rfc3339Nano: String { format(fraction: true) }
  /// Go's RFC3339 (whole seconds).
  public var rfc3339: String { format(fraction: false) }

  private func format(fraction: Bool) -> String {
    var out: [UInt8] = []
    out.reserveCapacity(35)
    append(to: &out, fraction: fraction)
    return String(decoding: out, as: UTF8.self)
  }

  /// Appends Go's RFC3339 text (RFC3339Nano with `fraction`) to `out`: trees hold three timestamps per node,
  /// so this writes bytes and builds no String.
  public func append(to out: inout [UInt8], fraction: Bool = true) {
    let c = civil
    out.appendDecimal(c.year, width: 4)
    out.append(UInt8(ascii: "-"))
    out.appendDecimal(c.month, width: 2)
    out.append(UInt8(ascii: "-"))
    out.appendDecimal(c.day, width: 2)
    out.append(UInt8(ascii: "T"))
    out.appendDecimal(c.hour, width: 2)
    out.append(UInt8(ascii: ":"))
    out.appendDecimal(c.minute, width: 2)
    out.append(UInt8(ascii: ":"))
    out.appendDecimal(c.second, width: 2)
    if fraction && nanoseconds != 0 {
      var f = Int(nanoseconds)
      var digits = 9
      while f % 10 == 0 {
        f /= 10
        digits -= 1
      }
      out.append(UInt8(ascii: "."))
      out.appendDecimal(f, width: digits)
    }
    if offset == 0 {
      out.append(UInt8(ascii: "Z"))
    } else {
      let o = abs(Int(offset)) / 60
      out.append(offset < 0 ? UInt8(ascii: "-") : UInt8(ascii: "+"))
      out.appendDecimal(o / 60, width: 2)
      out.append(UInt8(ascii: ":"))
      out.appendDecimal(o % 60, width: 2)
    }
  }

  /// Parses RFC3339 with optional fraction, `Z` or ±hh:mm.
  public init?(rfc3339 text: String) {
    let u = Array(text.utf8)
    func num(_ a: Int, _ n: Int) -> Int? {
      guard a + n <= u.count else { return nil }
      var v = 0
      for i in a..<(a + n) {
        guard u[i] >= 48 && u[i] <= 57 else { return nil }
        v = v * 10 + Int(u[i] - 48)
      }
      return v
    }
    guard u.count >= 20, let y = num(0, 4), u[4] == 45, let mo = num(5, 2), u[7] == 45, let d = num(8, 2),
      u[10] == 84 || u[10] == 116 || u[10] == 32, let h = num(11, 2), u[13] == 58, let mi = num(14, 2),
      u[16] == 58, let s = num(17, 2)
    else { return nil }
    var i = 19
    var nanos = 0
    if i < u.count && u[i] == 46 {
      i += 1
      var digits = 0
      while i < u.count && u[i] >= 48 && u[i] <= 57 {
        if digits < 9 {
          nanos = nanos * 10 + Int(u[i] - 48)
          digits += 1
        }
        i += 1
      }
      while digits < 9 {
        nanos *= 10
        digits += 1
      }
    }
    var off = 0
    guard i < u.count else { return nil }
    if u[i] == 90 || u[i] == 122 {
      i += 1
    } else if u[i] == 43 || u[i] == 45, let oh = num(i + 1, 2), u.count > i + 3, u[i + 3] == 58,
      let om = num(i + 4, 2)
    {
      off = (oh * 60 + om) * 60 * (u[i] == 45 ? -1 : 1)
      i += 6
    } else {
      return nil
    }
    guard i == u.count else { return nil }
    // Civil to days since epoch.
    let yy = mo <= 2 ? y - 1 : y
    let era = (yy >= 0 ? yy : yy - 399) / 400
    let yoe = yy - era * 400
    let mp = (mo + 9) % 12
    let doy = (153 * mp + 2) / 5 + d - 1
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
    let days = era * 146097 + doe - 719468
    let secs = Int64(days) * 86400 + Int64(h * 3600 + mi * 60 + s) - Int64(off)
    self.init(seconds: secs, nanoseconds: Int32(nanos), offset: Int32(off))
  }

  public var description: String { rfc3339Nano }
}

extension Duration {
  /// The duration in seconds, as a Double.
  public var inSeconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
