// restic's path filter as `restic find` uses it (`filter.Match`, `filter.ChildMatch`), over a byte-exact
// port of Go's `filepath.Match` (Go 1.19, the version restic 0.14 was built with). Pure functions.

/// A malformed pattern (Go's `filepath.ErrBadPattern`).
public struct BadPatternError: Error, CustomStringConvertible {
  public let pattern: String
  public var description: String { "invalid pattern \(pattern): syntax error in pattern" }
}

/// A `find` pattern with restic's rules. The pattern is cleaned like a path and split at `/`; `**` matches any
/// number of components. A pattern starting with `/` must match the path from its start; any other pattern
/// matches any run of consecutive components, so `sub` matches `/a/sub` and everything below it. A leading `!`
/// is dropped (restic's `Match` ignores negation). The empty pattern matches everything.
public struct FindPattern: Sendable {
  /// One component: its glob, `[]` for `**`; `simple` when it has no glob characters.
  struct Part: Sendable {
    var glob: [UInt8]
    var simple: Bool
    var isDoubleStar: Bool { glob.isEmpty }
  }
  let parts: [Part]
  let matchesEverything: Bool
  public let text: String

  public init(_ text: String) {
    self.text = text
    var b = Array(text.utf8)
    matchesEverything = b.isEmpty
    if b.first == UInt8(ascii: "!") { b.removeFirst() }
    let special = Set("\\[]*?".utf8)
    parts = FindPattern.split(goClean(b)).map { c in
      Part(glob: c == Array("**".utf8) ? [] : c, simple: !c.contains(where: special.contains))
    }
  }

  var isAbsolute: Bool { parts.first?.glob == [47] }

  /// Splits a cleaned path at `/`; an absolute path's first component is `/`.
  static func split(_ p: [UInt8]) -> [[UInt8]] {
    var comps = p.split(separator: 47, omittingEmptySubsequences: false).map(Array.init)
    if comps[0].isEmpty { comps[0] = [47] }
    return comps
  }

  /// Does `path` (as `/a/b/c`) match?
  public func matches(_ path: [UInt8]) throws -> Bool {
    if matchesEverything { return true }
    return try FindPattern.match(parts[...], FindPattern.split(path)[...], text)
  }

  /// Could something below `path` (a directory) match?
  public func childMayMatch(_ path: [UInt8]) throws -> Bool {
    if matchesEverything || !isAbsolute { return true }
    var strs = FindPattern.split(path)[...]
    if let pos = parts.firstIndex(where: \.isDoubleStar), strs.count >= pos { strs = strs.prefix(pos) }
    return try FindPattern.match(parts.prefix(min(strs.count, parts.count)), strs, text)
  }

  static func match(_ pattern: ArraySlice<Part>, _ strs: ArraySlice<[UInt8]>, _ text: String) throws -> Bool {
    if let pos = pattern.firstIndex(where: \.isDoubleStar) {
      // Expand `**` into zero, one, two ... `*` components.
      let head = Array(pattern[..<pos])
      let tail = Array(pattern[(pos + 1)...])
      let most = strs.count - pattern.count + 1
      if most < 0 { return false }
      for i in 0...most {
        let expanded = head + Array(repeating: Part(glob: [42], simple: false), count: i) + tail
        if try match(expanded[...], strs, text) { return true }
      }
      return false
    }
    if pattern.isEmpty { return strs.isEmpty }
    guard pattern.count <= strs.count else { return false }
    var minOffset = 0
    var maxOffset = strs.count - pattern.count
    if pattern.first!.glob == [47] {
      maxOffset = 0
    } else if strs.first! == [47] {
      minOffset = 1
    }
    if maxOffset < minOffset { return false }
    outer: for offset in stride(from: maxOffset, through: minOffset, by: -1) {
      for i in stride(from: pattern.count - 1, through: 0, by: -1) {
        let part = pattern[pattern.startIndex + i]
        let s = strs[strs.startIndex + offset + i]
        let ok: Bool
        if part.simple {
          ok = part.glob == s
        } else {
          guard let m = goMatch(part.glob[...], s[...]) else { throw BadPatternError(pattern: text) }
          ok = m
        }
        if !ok { continue outer }
      }
      return true
    }
    return false
  }
}

/// Go's `path.Clean`: the shortest equivalent path (`.`, `..`, repeated and trailing slashes resolved).
func goClean(_ path: [UInt8]) -> [UInt8] {
  if path.isEmpty { return [46] }
  let rooted = path[0] == 47
  let n = path.count
  var out: [UInt8] = []
  var r = 0
  var dotdot = 0
  if rooted {
    out.append(47)
    r = 1
    dotdot = 1
  }
  while r < n {
    if path[r] == 47 {
      r += 1
    } else if path[r] == 46 && (r + 1 == n || path[r + 1] == 47) {
      r += 1
    } else if path[r] == 46 && path[r + 1] == 46 && (r + 2 == n || path[r + 2] == 47) {
      r += 2
      if out.count > dotdot {
        // Back to the last separator after dotdot (Go: w--, then while w > dotdot && out[w] != '/').
        var w = out.count - 1
        while w > dotdot && out[w] != 47 { w -= 1 }
        out.removeLast(out.count - w)
      } else if !rooted {
        if !out.isEmpty { out.append(47) }
        out += [46, 46]
        dotdot = out.count
      }
    } else {
      if (rooted && out.count != 1) || (!rooted && !out.isEmpty) { out.append(47) }
      while r < n && path[r] != 47 {
        out.append(path[r])
        r += 1
      }
    }
  }
  return out.isEmpty ? [46] : out
}

/// Go's `filepath.Match` on Unix: nil for a malformed pattern.
func goMatch(_ pattern: ArraySlice<UInt8>, _ name: ArraySlice<UInt8>) -> Bool? {
  var pattern = pattern
  var name = name
  patternLoop: while !pattern.isEmpty {
    let (star, chunk, rest) = scanChunk(pattern)
    pattern = rest
    if star && chunk.isEmpty {
      // A trailing `*` matches the rest unless it holds a `/`.
      return !name.contains(47)
    }
    let (t, ok, bad) = matchChunk(chunk, name)
    if ok && (t.isEmpty || !pattern.isEmpty) {
      name = t
      continue
    }
    if bad { return nil }
    if star {
      var i = name.startIndex
      while i < name.endIndex && name[i] != 47 {
        let (t, ok, bad) = matchChunk(chunk, name[(i + 1)...])
        if ok {
          if pattern.isEmpty && !t.isEmpty {
            i += 1
            continue
          }
          name = t
          continue patternLoop
        }
        if bad { return nil }
        i += 1
      }
    }
    // No match; still report a malformed rest of the pattern.
    while !pattern.isEmpty {
      let (_, chunk, rest) = scanChunk(pattern)
      pattern = rest
      if matchChunk(chunk, []).bad { return nil }
    }
    return false
  }
  return name.isEmpty
}

private func scanChunk(_ p: ArraySlice<UInt8>) -> (star: Bool, chunk: ArraySlice<UInt8>, rest: ArraySlice<UInt8>) {
  var p = p
  var star = false
  while p.first == 42 {
    p = p.dropFirst()
    star = true
  }
  var inRange = false
  var i = p.startIndex
  scan: while i < p.endIndex {
    switch p[i] {
    case 92:
      if i + 1 < p.endIndex { i += 1 }
    case 91: inRange = true
    case 93: inRange = false
    case 42: if !inRange { break scan }
    default: break
    }
    i += 1
  }
  return (star, p[..<i], p[i...])
}

/// Matches `chunk` (no `*`) at the start of `s`: the rest of `s`, whether it matched, whether the chunk is malformed.
private func matchChunk(_ chunk: ArraySlice<UInt8>, _ s: ArraySlice<UInt8>) -> (
  rest: ArraySlice<UInt8>, ok: Bool, bad: Bool
) {
  var chunk = chunk
  var s = s
  var failed = false
  while !chunk.isEmpty {
    if !failed && s.isEmpty { failed = true }
    switch chunk.first! {
    case 91:  // [
      var r: UInt32 = 0
      if !failed {
        let (rr, n) = decodeRune(s)
        r = rr
        s = s.dropFirst(n)
      }
      chunk = chunk.dropFirst()
      var negated = false
      if chunk.first == 94 {
        negated = true
        chunk = chunk.dropFirst()
      }
      var match = false
      var nrange = 0
      while true {
        if chunk.first == 93 && nrange > 0 {
          chunk = chunk.dropFirst()
          break
        }
        guard let (lo, c1) = getEsc(chunk) else { return ([], false, true) }
        chunk = c1
        var hi = lo
        if chunk.first == 45 {
          guard let (h, c2) = getEsc(chunk.dropFirst()) else { return ([], false, true) }
          hi = h
          chunk = c2
        }
        if lo <= r && r <= hi { match = true }
        nrange += 1
      }
      if match == negated { failed = true }
    case 63:  // ?
      if !failed {
        if s.first == 47 { failed = true }
        s = s.dropFirst(decodeRune(s).1)
      }
      chunk = chunk.dropFirst()
    default:
      if chunk.first == 92 {
        chunk = chunk.dropFirst()
        if chunk.isEmpty { return ([], false, true) }
      }
      if !failed {
        if chunk.first != s.first { failed = true }
        s = s.dropFirst()
      }
      chunk = chunk.dropFirst()
    }
  }
  return failed ? ([], false, false) : (s, true, false)
}

private func getEsc(_ chunk: ArraySlice<UInt8>) -> (UInt32, ArraySlice<UInt8>)? {
  var chunk = chunk
  guard let f = chunk.first, f != 45, f != 93 else { return nil }
  if f == 92 {
    chunk = chunk.dropFirst()
    if chunk.isEmpty { return nil }
  }
  let (r, n) = decodeRune(chunk)
  if r == 0xFFFD && n == 1 { return nil }
  let rest = chunk.dropFirst(n)
  if rest.isEmpty { return nil }
  return (r, rest)
}

/// Go's `utf8.DecodeRune`: invalid or truncated input decodes as U+FFFD of length 1; empty input as (U+FFFD, 0).
func decodeRune(_ s: ArraySlice<UInt8>) -> (UInt32, Int) {
  guard let b0 = s.first else { return (0xFFFD, 0) }
  if b0 < 0x80 { return (UInt32(b0), 1) }
  let i = s.startIndex
  func cont(_ k: Int, _ lo: UInt8 = 0x80, _ hi: UInt8 = 0xBF) -> UInt32? {
    guard i + k < s.endIndex, s[i + k] >= lo, s[i + k] <= hi else { return nil }
    return UInt32(s[i + k] & 0x3F)
  }
  switch b0 {
  case 0xC2...0xDF:
    if let c1 = cont(1) { return (UInt32(b0 & 0x1F) << 6 | c1, 2) }
  case 0xE0...0xEF:
    let lo: UInt8 = b0 == 0xE0 ? 0xA0 : 0x80
    let hi: UInt8 = b0 == 0xED ? 0x9F : 0xBF
    if let c1 = cont(1, lo, hi), let c2 = cont(2) { return (UInt32(b0 & 0x0F) << 12 | c1 << 6 | c2, 3) }
  case 0xF0...0xF4:
    let lo: UInt8 = b0 == 0xF0 ? 0x90 : 0x80
    let hi: UInt8 = b0 == 0xF4 ? 0x8F : 0xBF
    if let c1 = cont(1, lo, hi), let c2 = cont(2), let c3 = cont(3) {
      return (UInt32(b0 & 0x07) << 18 | c1 << 12 | c2 << 6 | c3, 4)
    }
  default: break
  }
  return (0xFFFD, 1)
}

/// Go's `strings.ToLower` for our purposes: Unicode lowercase of valid UTF-8; other bytes unchanged but ASCII.
public func goLowercased(_ b: [UInt8]) -> [UInt8] {
  if !b.contains(where: { $0 >= 0x80 }) { return b.map { $0 >= 65 && $0 <= 90 ? $0 + 32 : $0 } }
  if let s = String(validating: b, as: UTF8.self) { return Array(s.lowercased().utf8) }
  return b.map { $0 >= 65 && $0 <= 90 ? $0 + 32 : $0 }
}
