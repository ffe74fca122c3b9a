// Path patterns for --exclude / --include.
import Synchronization

/// Path patterns with restic's rules: a pattern starting with `/` is anchored at the root, any other
/// pattern matches at any depth; `*`, `?` and `[…]` match within one component, `**` any components.
public struct PathPattern: Sendable {
  let components: [[UInt8]]
  let anchored: Bool
  public let text: String

  public init(_ p: String) {
    text = p
    var b = Array(p.utf8)
    while b.count > 1 && b.last == UInt8(ascii: "/") { b.removeLast() }
    anchored = b.first == UInt8(ascii: "/")
    components = b.split(separator: UInt8(ascii: "/")).map(Array.init)
  }

  /// Does the pattern match `path` (components) or one of its ancestors? (Excluding a dir excludes its contents.)
  public func matches(_ path: [[UInt8]]) -> Bool {
    if components.isEmpty { return false }
    if anchored {
      return (1...max(1, path.count)).contains { PathPattern.match(components[...], path[0..<min($0, path.count)]) }
    }
    for start in 0..<path.count {
      for end in (start + 1)...path.count where PathPattern.match(components[...], path[start..<end]) { return true }
    }
    return false
  }

  /// Could something below `path` (a directory) still match? Used by include filters.
  public func couldMatchBelow(_ path: [[UInt8]]) -> Bool {
    if !anchored { return true }
    for (i, c) in path.enumerated() {
      if i >= components.count { return true }
      if components[i] == Array("**".utf8) { return true }
      if !PathPattern.fnmatch(components[i], c) { return false }
    }
    return true
  }

  static func match(_ pat: ArraySlice<[UInt8]>, _ path: ArraySlice<[UInt8]>) -> Bool {
    guard let first = pat.first else { return path.isEmpty }
    if first == Array("**".utf8) {
      for k in path.startIndex...path.endIndex where match(pat.dropFirst(), path[k...]) { return true }
      return false
    }
    guard let p0 = path.first, fnmatch(first, p0) else { return false }
    return match(pat.dropFirst(), path.dropFirst())
  }

  /// Shell-style match of one component: `*`, `?`, `[...]`, `\` escapes.
  static func fnmatch(_ p: [UInt8], _ s: [UInt8]) -> Bool {
    func go(_ pi: Int, _ si: Int) -> Bool {
      var pi = pi
      var si = si
      while pi < p.count {
        let c = p[pi]
        switch c {
        case UInt8(ascii: "*"):
          for k in si...s.count where go(pi + 1, k) { return true }
          return false
        case UInt8(ascii: "?"):
          guard si < s.count else { return false }
          pi += 1
          si += 1
        case UInt8(ascii: "["):
          guard si < s.count, let close = p[(pi + 1)...].firstIndex(of: UInt8(ascii: "]")) else { return false }
          var set = Array(p[(pi + 1)..<close])
          let negate = set.first == UInt8(ascii: "^") || set.first == UInt8(ascii: "!")
          if negate { set.removeFirst() }
          var hit = false
          var k = 0
          while k < set.count {
            if k + 2 < set.count && set[k + 1] == UInt8(ascii: "-") {
              if s[si] >= set[k] && s[si] <= set[k + 2] { hit = true }
              k += 3
            } else {
              if s[si] == set[k] { hit = true }
              k += 1
            }
          }
          guard hit != negate else { return false }
          pi = close + 1
          si += 1
        case UInt8(ascii: "\\") where pi + 1 < p.count:
          guard si < s.count, s[si] == p[pi + 1] else { return false }
          pi += 2
          si += 1
        default:
          guard si < s.count, s[si] == c else { return false }
          pi += 1
          si += 1
        }
      }
      return si == s.count
    }
    return go(0, 0)
  }
}
