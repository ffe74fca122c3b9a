// Numbers for people: sizes in IEC units as restic prints them, durations as m:ss or h:mm:ss, snapshot times.
import Foundation
import TidemarkCore

public enum Human {
  /// `512 B`, `1.500 KiB`, `3.000 GiB`.
  public static func bytes(_ n: Int64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var v = Double(n)
    var u = 0
    while v >= 1024 && u < units.count - 1 {
      v /= 1024
      u += 1
    }
    return u == 0 ? "\(n) B" : String(format: "%.3f %@", v, units[u])
  }

  /// `4:05`, `1:02:03`.
  public static func duration(_ secs: Double) -> String {
    let s = Int(secs)
    return s >= 3600
      ? String(format: "%d:%02d:%02d", s / 3600, (s / 60) % 60, s % 60) : String(format: "%d:%02d", s / 60, s % 60)
  }

  /// "2006-01-02 15:04:05" in the snapshot's zone.
  public static func time(_ t: Timestamp) -> String {
    let c = t.civil
    return String(format: "%04d-%02d-%02d %02d:%02d:%02d", c.year, c.month, c.day, c.hour, c.minute, c.second)
  }
}
