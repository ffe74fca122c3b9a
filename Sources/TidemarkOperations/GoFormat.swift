// restic 0.14's (Go's) ways of printing numbers, file modes and times, and of reading the times its `find`
// accepts. Shared by every command that prints what restic prints.
import Foundation
import TidemarkCore

/// How restic 0.14 (Go) prints numbers, file modes and times, and how it reads times, so tidemark's output
/// matches restic's byte for byte and scripts written against restic keep working.
public enum GoFormat {
  /// restic 0.14's `formatBytes`: binary units above each threshold, three decimals.
  public static func bytes(_ c: UInt64) -> String {
    let b = Double(c)
    if c > 1 << 40 { return String(format: "%.3f TiB", b / Double(1 << 40)) }
    if c > 1 << 30 { return String(format: "%.3f GiB", b / Double(1 << 30)) }
    if c > 1 << 20 { return String(format: "%.3f MiB", b / Double(1 << 20)) }
    if c > 1 << 10 { return String(format: "%.3f KiB", b / Double(1 << 10)) }
    return "\(c) B"
  }

  /// Go's `%-Ns`: left-justified, padded with spaces to `width`.
  public static func padded(_ s: String, _ width: Int) -> String {
    s.count >= width ? s : s + String(repeating: " ", count: width - s.count)
  }

  /// Go's `%Nd`.
  public static func right(_ v: some BinaryInteger, _ width: Int) -> String {
    let s = String(v)
    return s.count >= width ? s : String(repeating: " ", count: width - s.count) + s
  }

  /// A float64 as Go's `encoding/json` writes it (see `JSONWriter.number(_: Double)`).
  public static func jsonNumber(_ f: Double) -> String {
    var w = JSONWriter()
    w.number(f)
    return String(decoding: w.out, as: UTF8.self)
  }

  /// Go's `os.FileMode.String()`: type letters (`dalTLDpSugct?`), or `-`, then `rwxrwxrwx`.
  public static func fileMode(_ m: UInt32) -> String {
    var s = ""
    for (i, c) in "dalTLDpSugct?".enumerated() where m & (1 << UInt32(31 - i)) != 0 { s.append(c) }
    if s.isEmpty { s = "-" }
    for (i, c) in "rwxrwxrwx".enumerated() { s.append(m & (1 << UInt32(8 - i)) != 0 ? c : "-") }
    return s
  }

  /// restic's TimeFormat ("2006-01-02 15:04:05") in the local zone.
  public static func localTime(_ t: Timestamp) -> String {
    Human.time(Timestamp.local(seconds: t.seconds, nanoseconds: t.nanoseconds))
  }

  /// Go's `time.Time.String()` for a time read from JSON: "2006-01-02 15:04:05.999999999 -0700 MST", the zone
  /// named as Go names it (UTC for `Z`, the local abbreviation when the offset is the local one, else the offset).
  public static func timeString(_ t: Timestamp) -> String {
    var s = Human.time(t)
    if t.nanoseconds != 0 {
      var frac = String(format: "%09d", t.nanoseconds)
      while frac.hasSuffix("0") { frac.removeLast() }
      s += "." + frac
    }
    let o = abs(Int(t.offset)) / 60
    let offset = (t.offset < 0 ? "-" : "+") + String(format: "%02d%02d", o / 60, o % 60)
    var name = offset
    if t.offset == 0 {
      name = "UTC"
    } else {
      var secs = time_t(t.seconds)
      var tmv = tm()
      if localtime_r(&secs, &tmv) != nil, tmv.tm_gmtoff == Int(t.offset), let z = tmv.tm_zone {
        name = String(cString: z)
      }
    }
    return "\(s) \(offset) \(name)"
  }

  /// restic's `find --oldest/--newest` layouts, read in the local zone.
  public static func parseTime(_ text: String) -> Timestamp? {
    let layouts = [
      "2006-01-02", "2006-01-02 15:04", "2006-01-02 15:04:05", "2006-01-02 15:04:05 -0700",
      "2006-01-02 15:04:05 MST", "02.01.2006", "02.01.2006 15:04", "02.01.2006 15:04:05",
      "02.01.2006 15:04:05 -0700", "02.01.2006 15:04:05 MST", "Mon Jan 2 15:04:05 -0700 MST 2006",
    ]
    for l in layouts {
      if let t = parse(text, layout: l) { return t }
    }
    return nil
  }

  private static let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
  private static let weekdays = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]

  /// A small subset of Go's time.Parse: the elements the layouts above use.
  private static func parse(_ text: String, layout: String) -> Timestamp? {
    var s = Substring(text)
    var l = Substring(layout)
    var (year, month, day, hour, minute, second) = (0, 1, 1, 0, 0, 0)
    var offset: Int? = nil
    func number(_ minDigits: Int, _ maxDigits: Int) -> Int? {
      let d = s.prefix(maxDigits).prefix { $0.isASCII && $0.isNumber }
      guard d.count >= minDigits, let v = Int(d) else { return nil }
      s = s.dropFirst(d.count)
      return v
    }
    let elements = ["2006", "-0700", "MST", "Mon", "Jan", "01", "02", "15", "04", "05", "2"]
    while !l.isEmpty {
      guard let element = elements.first(where: { l.hasPrefix($0) }) else {
        guard s.first == l.first else { return nil }
        s = s.dropFirst()
        l = l.dropFirst()
        continue
      }
      l = l.dropFirst(element.count)
      switch element {
      case "2006":
        guard let v = number(4, 4) else { return nil }
        year = v
      case "-0700":
        guard let sign = s.first, sign == "+" || sign == "-" else { return nil }
        s = s.dropFirst()
        guard let v = number(4, 4) else { return nil }
        offset = (v / 100 * 3600 + v % 100 * 60) * (sign == "-" ? -1 : 1)
      case "MST":
        let name = s.prefix { $0.isLetter && $0.isUppercase }
        guard name.count >= 3 else { return nil }
        s = s.dropFirst(name.count)
        // Go knows the local zone's names; any other reads as UTC.
        if offset == nil && !localZoneNames.contains(String(name)) { offset = 0 }
      case "Mon":
        guard weekdays.contains(String(s.prefix(3))) else { return nil }
        s = s.dropFirst(3)
      case "Jan":
        guard let m = months.firstIndex(of: String(s.prefix(3))) else { return nil }
        month = m + 1
        s = s.dropFirst(3)
      default:
        // 01 month, 02 day, 15 hour, 04 minute, 05 second: two digits; 2 day, 15 hour: one or two.
        guard let v = number(element == "2" || element == "15" ? 1 : 2, 2) else { return nil }
        switch element {
        case "01": month = v
        case "02", "2": day = v
        case "15": hour = v
        case "04": minute = v
        default: second = v
        }
      }
    }
    guard s.isEmpty, (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second < 60 else {
      return nil
    }
    var tmv = tm()
    tmv.tm_year = Int32(year - 1900)
    tmv.tm_mon = Int32(month - 1)
    tmv.tm_mday = Int32(day)
    tmv.tm_hour = Int32(hour)
    tmv.tm_min = Int32(minute)
    tmv.tm_sec = Int32(second)
    tmv.tm_isdst = -1
    let secs: Int64
    if let offset {
      secs = Int64(timegm(&tmv)) - Int64(offset)
    } else {
      secs = Int64(mktime(&tmv))
    }
    return Timestamp.local(seconds: secs, nanoseconds: 0)
  }

  /// The local zone's abbreviations (standard and daylight time), as seen now and half a year on.
  private static var localZoneNames: Set<String> {
    var names = Set<String>()
    for delta in [0, 182 * 86400] {
      var t = time(nil) + delta
      var tmv = tm()
      localtime_r(&t, &tmv)
      if let z = tmv.tm_zone { names.insert(String(cString: z)) }
    }
    return names
  }
}
