// A small JSON reader and a writer that reproduces Go's encoding/json byte for byte
// (restic's tree and snapshot IDs are hashes of that text).
// Strings are kept as bytes: names in trees are not always UTF-8.

public enum JSONValue: Sendable {
  case null
  case bool(Bool)
  /// The number's text, parsed on demand (inode numbers exceed Double's precision).
  case number([UInt8])
  case string([UInt8])
  case array([JSONValue])
  case object([String: JSONValue])

  public subscript(key: String) -> JSONValue? {
    if case .object(let o) = self { return o[key] }
    return nil
  }
  public var bytes: [UInt8]? {
    if case .string(let s) = self { return s }
    return nil
  }
  public var string: String? { bytes.map { String(decoding: $0, as: UTF8.self) } }
  public var array: [JSONValue]? {
    if case .array(let a) = self { return a }
    return nil
  }
  public var isNull: Bool {
    if case .null = self { return true }
    return false
  }
  public var bool: Bool? {
    if case .bool(let b) = self { return b }
    return nil
  }
  public var uint64: UInt64? {
    guard case .number(let n) = self else { return nil }
    var v: UInt64 = 0
    for c in n {
      guard c >= 48 && c <= 57 else {
        // Exponent or fraction: go through Double.
        return Double(String(decoding: n, as: UTF8.self)).flatMap { $0 >= 0 ? UInt64(exactly: $0.rounded()) : nil }
      }
      let (m, o1) = v.multipliedReportingOverflow(by: 10)
      let (a, o2) = m.addingReportingOverflow(UInt64(c - 48))
      if o1 || o2 { return nil }
      v = a
    }
    return n.isEmpty ? nil : v
  }
  public var int64: Int64? {
    guard case .number(let n) = self else { return nil }
    if n.first == UInt8(ascii: "-") {
      guard let v = JSONValue.number(Array(n.dropFirst())).uint64, v <= UInt64(Int64.max) else { return nil }
      return -Int64(v)
    }
    return uint64.flatMap { Int64(exactly: $0) }
  }
  public var int: Int? { int64.map { Int($0) } }
}

public struct JSONParseError: Error, CustomStringConvertible {
  public let offset: Int
  public let reason: String
  public var description: String { "invalid JSON at byte \(offset): \(reason)" }
}

public enum JSON {
  public static func parse(_ bytes: [UInt8]) throws -> JSONValue {
    try bytes.withUnsafeBufferPointer { buf in
      var p = Parser(buf: buf)
      let v = try p.value(depth: 0)
      p.skipWS()
      guard p.i == buf.count else { throw JSONParseError(offset: p.i, reason: "trailing data") }
      return v
    }
  }
}

private struct Parser {
  let buf: UnsafeBufferPointer<UInt8>
  var i = 0

  init(buf: UnsafeBufferPointer<UInt8>) { self.buf = buf }

  func fail(_ r: String) -> JSONParseError { JSONParseError(offset: i, reason: r) }

  mutating func skipWS() {
    while i < buf.count, buf[i] == 0x20 || buf[i] == 0x0a || buf[i] == 0x0d || buf[i] == 0x09 { i += 1 }
  }

  mutating func value(depth: Int) throws -> JSONValue {
    guard depth < 512 else { throw fail("nested too deeply") }
    skipWS()
    guard i < buf.count else { throw fail("unexpected end") }
    switch buf[i] {
    case UInt8(ascii: "{"):
      i += 1
      var obj: [String: JSONValue] = [:]
      skipWS()
      if i < buf.count && buf[i] == UInt8(ascii: "}") {
        i += 1
        return .object(obj)
      }
      while true {
        skipWS()
        guard i < buf.count, buf[i] == UInt8(ascii: "\"") else { throw fail("expected a key") }
        let k = try string()
        skipWS()
        guard i < buf.count, buf[i] == UInt8(ascii: ":") else { throw fail("expected ':'") }
        i += 1
        obj[String(decoding: k, as: UTF8.self)] = try value(depth: depth + 1)
        skipWS()
        guard i < buf.count else { throw fail("unexpected end") }
        if buf[i] == UInt8(ascii: ",") {
          i += 1
          continue
        }
        if buf[i] == UInt8(ascii: "}") {
          i += 1
          return .object(obj)
        }
        throw fail("expected ',' or '}'")
      }
    case UInt8(ascii: "["):
      i += 1
      var arr: [JSONValue] = []
      skipWS()
      if i < buf.count && buf[i] == UInt8(ascii: "]") {
        i += 1
        return .array(arr)
      }
      while true {
        arr.append(try value(depth: depth + 1))
        skipWS()
        guard i < buf.count else { throw fail("unexpected end") }
        if buf[i] == UInt8(ascii: ",") {
          i += 1
          continue
        }
        if buf[i] == UInt8(ascii: "]") {
          i += 1
          return .array(arr)
        }
        throw fail("expected ',' or ']'")
      }
    case UInt8(ascii: "\""):
      return .string(try string())
    case UInt8(ascii: "t"):
      try literal("true")
      return .bool(true)
    case UInt8(ascii: "f"):
      try literal("false")
      return .bool(false)
    case UInt8(ascii: "n"):
      try literal("null")
      return .null
    default:
      let start = i
      while i < buf.count {
        let c = buf[i]
        if (c >= 48 && c <= 57) || c == UInt8(ascii: "-") || c == UInt8(ascii: "+") || c == UInt8(ascii: ".")
          || c == UInt8(ascii: "e") || c == UInt8(ascii: "E")
        {
          i += 1
        } else {
          break
        }
      }
      guard i > start else { throw fail("unexpected character") }
      return .number(Array(buf[start..<i]))
    }
  }

  mutating func literal(_ s: StaticString) throws {
    let n = s.utf8CodeUnitCount
    guard i + n <= buf.count else { throw fail("unexpected end") }
    for k in 0..<n where buf[i + k] != s.utf8Start[k] { throw fail("bad literal") }
    i += n
  }

  mutating func hex4() throws -> UInt32 {
    guard i + 4 <= buf.count else { throw fail("short \\u escape") }
    var v: UInt32 = 0
    for _ in 0..<4 {
      guard let h = hexValue(buf[i]) else { throw fail("bad \\u escape") }
      v = v << 4 | UInt32(h)
      i += 1
    }
    return v
  }

  mutating func string() throws -> [UInt8] {
    i += 1  // opening quote
    let start = i
    // Fast path: no escapes.
    while i < buf.count {
      let c = buf[i]
      if c == UInt8(ascii: "\"") {
        let out = Array(buf[start..<i])
        i += 1
        return out
      }
      if c == UInt8(ascii: "\\") { break }
      i += 1
    }
    var out = Array(buf[start..<i])
    while i < buf.count {
      let c = buf[i]
      if c == UInt8(ascii: "\"") {
        i += 1
        return out
      }
      if c != UInt8(ascii: "\\") {
        out.append(c)
        i += 1
        continue
      }
      i += 1
      guard i < buf.count else { break }
      let e = buf[i]
      i += 1
      switch e {
      case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
      case UInt8(ascii: "b"): out.append(8)
      case UInt8(ascii: "f"): out.append(12)
      case UInt8(ascii: "n"): out.append(10)
      case UInt8(ascii: "r"): out.append(13)
      case UInt8(ascii: "t"): out.append(9)
      case UInt8(ascii: "u"):
        var cp = try hex4()
        if cp >= 0xD800 && cp < 0xDC00, i + 6 <= buf.count, buf[i] == UInt8(ascii: "\\"),
          buf[i + 1] == UInt8(ascii: "u")
        {
          let save = i
          i += 2
          let lo = try hex4()
          if lo >= 0xDC00 && lo < 0xE000 {
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
          } else {
            i = save
            cp = 0xFFFD
          }
        } else if cp >= 0xD800 && cp < 0xE000 {
          cp = 0xFFFD
        }
        appendUTF8(&out, cp)
      default: throw fail("bad escape")
      }
    }
    throw fail("unterminated string")
  }
}

func appendUTF8(_ out: inout [UInt8], _ cp: UInt32) {
  switch cp {
  case 0..<0x80: out.append(UInt8(cp))
  case 0x80..<0x800:
    out.append(UInt8(0xC0 | (cp >> 6)))
    out.append(UInt8(0x80 | (cp & 0x3F)))
  case 0x800..<0x10000:
    out.append(UInt8(0xE0 | (cp >> 12)))
    out.append(UInt8(0x80 | ((cp >> 6) & 0x3F)))
    out.append(UInt8(0x80 | (cp & 0x3F)))
  default:
    out.append(UInt8(0xF0 | (cp >> 18)))
    out.append(UInt8(0x80 | ((cp >> 12) & 0x3F)))
    out.append(UInt8(0x80 | ((cp >> 6) & 0x3F)))
    out.append(UInt8(0x80 | (cp & 0x3F)))
  }
}

/// Decodes one UTF-8 scalar at `i`; nil for an invalid sequence (Go then takes one byte).
@inline(__always) func decodeUTF8(_ s: UnsafeBufferPointer<UInt8>, _ i: Int) -> (UInt32, Int)? {
  let c = s[i]
  if c < 0x80 { return (UInt32(c), 1) }
  func cont(_ k: Int) -> UInt32? {
    guard i + k < s.count, s[i + k] & 0xC0 == 0x80 else { return nil }
    return UInt32(s[i + k] & 0x3F)
  }
  if c >= 0xC2 && c <= 0xDF, let a = cont(1) { return ((UInt32(c & 0x1F) << 6) | a, 2) }
  if c >= 0xE0 && c <= 0xEF, let a = cont(1), let b = cont(2) {
    let cp = (UInt32(c & 0x0F) << 12) | (a << 6) | b
    if cp < 0x800 || (cp >= 0xD800 && cp < 0xE000) { return nil }
    return (cp, 3)
  }
  if c >= 0xF0 && c <= 0xF4, let a = cont(1), let b = cont(2), let d = cont(3) {
    let cp = (UInt32(c & 0x07) << 18) | (a << 12) | (b << 6) | d
    if cp < 0x10000 || cp > 0x10FFFF { return nil }
    return (cp, 4)
  }
  return nil
}

/// Writes JSON text the way Go's encoding/json (Go 1.19, as in restic 0.14) does.
public struct JSONWriter {
  public var out: [UInt8] = []
  public init() {}

  public mutating func raw(_ s: StaticString) {
    out.append(contentsOf: UnsafeBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount))
  }
  public mutating func raw(_ s: String) { out.append(contentsOf: s.utf8) }

  /// `"key":`
  public mutating func key(_ k: StaticString) {
    out.append(UInt8(ascii: "\""))
    raw(k)
    out.append(UInt8(ascii: "\""))
    out.append(UInt8(ascii: ":"))
  }

  public mutating func string(_ s: String) {
    var s = s
    s.withUTF8 { string(bytes: $0) }
  }
  public mutating func string(_ b: [UInt8]) { b.withUnsafeBufferPointer { string(bytes: $0) } }

  /// A Go string value: HTML-escaped, U+2028/9 escaped, invalid UTF-8 replaced by U+FFFD.
  public mutating func string(bytes s: UnsafeBufferPointer<UInt8>) {
    let hex = Array("0123456789abcdef".utf8)
    out.append(UInt8(ascii: "\""))
    var i = 0
    while i < s.count {
      let c = s[i]
      if c < 0x80 {
        switch c {
        case UInt8(ascii: "\""), UInt8(ascii: "\\"):
          out.append(UInt8(ascii: "\\"))
          out.append(c)
        case 10: raw("\\n")
        case 13: raw("\\r")
        case 9: raw("\\t")
        case 0..<0x20, UInt8(ascii: "<"), UInt8(ascii: ">"), UInt8(ascii: "&"):
          raw("\\u00")
          out.append(hex[Int(c >> 4)])
          out.append(hex[Int(c & 15)])
        default: out.append(c)
        }
        i += 1
        continue
      }
      if let (cp, n) = decodeUTF8(s, i) {
        if cp == 0x2028 || cp == 0x2029 {
          raw(cp == 0x2028 ? "\\u2028" : "\\u2029")
        } else {
          out.append(contentsOf: s[i..<(i + n)])
        }
        i += n
      } else {
        raw("\\ufffd")
        i += 1
      }
    }
    out.append(UInt8(ascii: "\""))
  }

  public mutating func number(_ v: UInt64) { raw(String(v)) }
  public mutating func number(_ v: Int64) { raw(String(v)) }
  public mutating func number(_ v: Int) { raw(String(v)) }
  public mutating func bool(_ v: Bool) { v ? raw("true") : raw("false") }

  public mutating func stringArray(_ a: [String]) {
    out.append(UInt8(ascii: "["))
    for (i, s) in a.enumerated() {
      if i > 0 { out.append(UInt8(ascii: ",")) }
      string(s)
    }
    out.append(UInt8(ascii: "]"))
  }
  public mutating func comma() { out.append(UInt8(ascii: ",")) }
}

/// Go's strconv.Quote without the surrounding quotes: restic stores node names this way, so
/// names that are not valid UTF-8 survive (`\xff`).
public func goQuote(_ name: [UInt8]) -> [UInt8] {
  var out: [UInt8] = []
  out.reserveCapacity(name.count + 8)
  let hex = Array("0123456789abcdef".utf8)
  name.withUnsafeBufferPointer { s in
    var i = 0
    while i < s.count {
      let c = s[i]
      if c < 0x80 {
        switch c {
        case 7: out += [92, UInt8(ascii: "a")]
        case 8: out += [92, UInt8(ascii: "b")]
        case 12: out += [92, UInt8(ascii: "f")]
        case 10: out += [92, UInt8(ascii: "n")]
        case 13: out += [92, UInt8(ascii: "r")]
        case 9: out += [92, UInt8(ascii: "t")]
        case 11: out += [92, UInt8(ascii: "v")]
        case UInt8(ascii: "\\"), UInt8(ascii: "\""): out += [92, c]
        case 0..<0x20, 0x7f: out += [92, UInt8(ascii: "x"), hex[Int(c >> 4)], hex[Int(c & 15)]]
        default: out.append(c)
        }
        i += 1
        continue
      }
      guard let (cp, n) = decodeUTF8(s, i) else {
        out += [92, UInt8(ascii: "x"), hex[Int(c >> 4)], hex[Int(c & 15)]]
        i += 1
        continue
      }
      if goIsPrint(cp) {
        out.append(contentsOf: s[i..<(i + n)])
      } else if cp < 0x10000 {
        out += [92, UInt8(ascii: "u")]
        for sh in stride(from: 12, through: 0, by: -4) { out.append(hex[Int((cp >> UInt32(sh)) & 15)]) }
      } else {
        out += [92, UInt8(ascii: "U")]
        for sh in stride(from: 28, through: 0, by: -4) { out.append(hex[Int((cp >> UInt32(sh)) & 15)]) }
      }
      i += n
    }
  }
  return out
}

/// An approximation of Go's unicode.IsPrint for non-ASCII scalars: controls, spaces other than
/// ASCII space, format characters, surrogates, private use and noncharacters are not printable.
func goIsPrint(_ cp: UInt32) -> Bool {
  switch cp {
  case 0x80...0xA0, 0xAD, 0x34F, 0x61C, 0x115F, 0x1160, 0x1680, 0x180E, 0x2000...0x200F, 0x2028...0x202F,
    0x205F...0x206F, 0x3000, 0x3164, 0xD800...0xF8FF, 0xFDD0...0xFDEF, 0xFEFF, 0xFFA0, 0xFFF0...0xFFFB,
    0xFFFE, 0xFFFF, 0xE0000...0xE0FFF, 0xF0000...0x10FFFF:
    return false
  default:
    return (cp & 0xFFFE) != 0xFFFE
  }
}

/// Go's strconv.Unquote of a quoted name body (inverse of `goQuote`); unknown escapes are kept as is.
public func goUnquote(_ q: [UInt8]) -> [UInt8] {
  guard q.contains(92) else { return q }
  var out: [UInt8] = []
  out.reserveCapacity(q.count)
  var i = 0
  func hexAt(_ a: Int, _ n: Int) -> UInt32? {
    guard a + n <= q.count else { return nil }
    var v: UInt32 = 0
    for k in a..<(a + n) {
      guard let h = hexValue(q[k]) else { return nil }
      v = v << 4 | UInt32(h)
    }
    return v
  }
  while i < q.count {
    let c = q[i]
    guard c == 92, i + 1 < q.count else {
      out.append(c)
      i += 1
      continue
    }
    let e = q[i + 1]
    switch e {
    case UInt8(ascii: "a"): out.append(7); i += 2
    case UInt8(ascii: "b"): out.append(8); i += 2
    case UInt8(ascii: "f"): out.append(12); i += 2
    case UInt8(ascii: "n"): out.append(10); i += 2
    case UInt8(ascii: "r"): out.append(13); i += 2
    case UInt8(ascii: "t"): out.append(9); i += 2
    case UInt8(ascii: "v"): out.append(11); i += 2
    case 92, UInt8(ascii: "\""), UInt8(ascii: "'"): out.append(e); i += 2
    case UInt8(ascii: "x"):
      if let v = hexAt(i + 2, 2) {
        out.append(UInt8(v))
        i += 4
      } else {
        out.append(c)
        i += 1
      }
    case UInt8(ascii: "u"), UInt8(ascii: "U"):
      let n = e == UInt8(ascii: "u") ? 4 : 8
      if let v = hexAt(i + 2, n) {
        appendUTF8(&out, v)
        i += 2 + n
      } else {
        out.append(c)
        i += 1
      }
    case UInt8(ascii: "0")...UInt8(ascii: "7"):
      if i + 3 < q.count + 0, i + 4 <= q.count,
        q[(i + 1)...(i + 3)].allSatisfy({ $0 >= 48 && $0 <= 55 })
      {
        let v = (UInt32(q[i + 1] - 48) << 6) | (UInt32(q[i + 2] - 48) << 3) | UInt32(q[i + 3] - 48)
        out.append(UInt8(truncatingIfNeeded: v))
        i += 4
      } else {
        out.append(c)
        i += 1
      }
    default:
      out.append(c)
      i += 1
    }
  }
  return out
}

public enum Base64 {
  static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

  public static func encode(_ data: [UInt8]) -> String {
    var out: [UInt8] = []
    out.reserveCapacity((data.count + 2) / 3 * 4)
    var i = 0
    while i + 3 <= data.count {
      let v = UInt32(data[i]) << 16 | UInt32(data[i + 1]) << 8 | UInt32(data[i + 2])
      out += [
        alphabet[Int(v >> 18)], alphabet[Int((v >> 12) & 63)], alphabet[Int((v >> 6) & 63)], alphabet[Int(v & 63)],
      ]
      i += 3
    }
    let rest = data.count - i
    if rest == 1 {
      let v = UInt32(data[i]) << 16
      out += [alphabet[Int(v >> 18)], alphabet[Int((v >> 12) & 63)], 61, 61]
    } else if rest == 2 {
      let v = UInt32(data[i]) << 16 | UInt32(data[i + 1]) << 8
      out += [alphabet[Int(v >> 18)], alphabet[Int((v >> 12) & 63)], alphabet[Int((v >> 6) & 63)], 61]
    }
    return String(decoding: out, as: UTF8.self)
  }

  /// Standard or URL alphabet, padded or not.
  public static func decode(_ text: some Sequence<UInt8>) -> [UInt8]? {
    var out: [UInt8] = []
    var acc: UInt32 = 0
    var bits = 0
    for c in text {
      let v: UInt32
      switch c {
      case UInt8(ascii: "A")...UInt8(ascii: "Z"): v = UInt32(c - 65)
      case UInt8(ascii: "a")...UInt8(ascii: "z"): v = UInt32(c - 97 + 26)
      case UInt8(ascii: "0")...UInt8(ascii: "9"): v = UInt32(c - 48 + 52)
      case UInt8(ascii: "+"), UInt8(ascii: "-"): v = 62
      case UInt8(ascii: "/"), UInt8(ascii: "_"): v = 63
      case UInt8(ascii: "="), 10, 13: continue
      default: return nil
      }
      acc = acc << 6 | v
      bits += 6
      if bits >= 8 {
        bits -= 8
        out.append(UInt8(truncatingIfNeeded: acc >> UInt32(bits)))
      }
    }
    return out
  }
}

// MARK: Trees, decoded straight from the bytes

extension RawID {
  init(words w0: UInt64, _ w1: UInt64, _ w2: UInt64, _ w3: UInt64) {
    self.w0 = w0
    self.w1 = w1
    self.w2 = w2
    self.w3 = w3
  }
}

/// Decodes `{"nodes":[…]}` without building a JSONValue for every node: trees are read far more often
/// than anything else (every directory a mount shows, every parent a backup compares against). It
/// accepts exactly what `JSON.parse` + `Node(json:)` accept and gives the same nodes (a test pins that).
enum TreeJSON {
  static func nodes(_ bytes: [UInt8]) throws -> [Node] {
    try bytes.withUnsafeBufferPointer { buf in
      var p = Parser(buf: buf)
      var nodes: [Node] = []
      var sawNodes = false
      try p.object { p, key in
        guard key.is("nodes") else { return try p.skip() }
        sawNodes = true
        p.skipWS()
        guard p.peek(UInt8(ascii: "[")) else { return try p.skip() }  // null or odd: no nodes
        try p.array { p in nodes.append(try p.node()) }
      }
      p.skipWS()
      guard p.i == buf.count else { throw JSONParseError(offset: p.i, reason: "trailing data") }
      guard sawNodes else { throw TidemarkError.corrupt("tree blob has no nodes list") }
      return nodes
    }
  }
}

extension UnsafeBufferPointer<UInt8> {
  /// Bytewise equality with an ASCII literal, without building anything.
  @inline(__always) func `is`(_ s: StaticString) -> Bool {
    guard count == s.utf8CodeUnitCount else { return false }
    for k in 0..<count where self[k] != s.utf8Start[k] { return false }
    return true
  }
}

extension Parser {
  func peek(_ c: UInt8) -> Bool { i < buf.count && buf[i] == c }

  mutating func skip() throws { _ = try value(depth: 1) }

  /// Calls `member` for each key of an object; `member` must consume the value.
  mutating func object(_ member: (inout Parser, UnsafeBufferPointer<UInt8>) throws -> Void) throws {
    skipWS()
    guard peek(UInt8(ascii: "{")) else { throw fail("expected an object") }
    i += 1
    skipWS()
    if peek(UInt8(ascii: "}")) {
      i += 1
      return
    }
    while true {
      skipWS()
      guard peek(UInt8(ascii: "\"")) else { throw fail("expected a key") }
      // Keys are plain ASCII in practice: look at them in place; decode only when escaped.
      var j = i + 1
      while j < buf.count, buf[j] != UInt8(ascii: "\""), buf[j] != UInt8(ascii: "\\") { j += 1 }
      if j < buf.count, buf[j] == UInt8(ascii: "\"") {
        let key = UnsafeBufferPointer(rebasing: buf[(i + 1)..<j])
        i = j + 1
        try colon()
        try member(&self, key)
      } else {
        let key = try string()
        try colon()
        try key.withUnsafeBufferPointer { try member(&self, $0) }
      }
      skipWS()
      guard i < buf.count else { throw fail("unexpected end") }
      if buf[i] == UInt8(ascii: ",") {
        i += 1
        continue
      }
      if buf[i] == UInt8(ascii: "}") {
        i += 1
        return
      }
      throw fail("expected ',' or '}'")
    }
  }

  private mutating func colon() throws {
    skipWS()
    guard peek(UInt8(ascii: ":")) else { throw fail("expected ':'") }
    i += 1
  }

  /// Calls `element` for each element of an array; `element` must consume it.
  mutating func array(_ element: (inout Parser) throws -> Void) throws {
    skipWS()
    guard peek(UInt8(ascii: "[")) else { throw fail("expected an array") }
    i += 1
    skipWS()
    if peek(UInt8(ascii: "]")) {
      i += 1
      return
    }
    while true {
      skipWS()
      try element(&self)
      skipWS()
      guard i < buf.count else { throw fail("unexpected end") }
      if buf[i] == UInt8(ascii: ",") {
        i += 1
        continue
      }
      if buf[i] == UInt8(ascii: "]") {
        i += 1
        return
      }
      throw fail("expected ',' or ']'")
    }
  }

  /// A value as JSONValue (for the rare fields and odd shapes).
  mutating func generic() throws -> JSONValue { try value(depth: 1) }

  /// A non-negative integer the way `JSONValue.uint64` reads it (nil for anything else).
  mutating func uint64() throws -> UInt64? {
    skipWS()
    guard i < buf.count, buf[i] >= 48 && buf[i] <= 57 else { return try generic().uint64 }
    let start = i
    var v: UInt64 = 0
    var overflow = false
    while i < buf.count, buf[i] >= 48 && buf[i] <= 57 {
      let (m, o1) = v.multipliedReportingOverflow(by: 10)
      let (a, o2) = m.addingReportingOverflow(UInt64(buf[i] - 48))
      overflow = overflow || o1 || o2
      v = a
      i += 1
    }
    if i < buf.count, [UInt8(ascii: "."), UInt8(ascii: "e"), UInt8(ascii: "E")].contains(buf[i]) || overflow {
      i = start
      return try generic().uint64
    }
    return v
  }

  /// A string's bytes, or nil for any other value (consumed either way).
  mutating func stringOrNil() throws -> [UInt8]? {
    skipWS()
    if peek(UInt8(ascii: "\"")) { return try string() }
    return try generic().bytes
  }

  /// A 64-digit hex ID string, or nil for null or anything invalid (consumed either way).
  mutating func hexID() throws -> RawID? {
    skipWS()
    if i + 66 <= buf.count, buf[i] == UInt8(ascii: "\""), buf[i + 65] == UInt8(ascii: "\"") {
      func word(_ at: Int) -> UInt64? {
        var v: UInt64 = 0
        for k in at..<(at + 16) {
          guard let h = hexValue(buf[k]) else { return nil }
          v = v << 4 | UInt64(h)
        }
        return v
      }
      if let a = word(i + 1), let b = word(i + 17), let c = word(i + 33), let d = word(i + 49) {
        i += 66
        return RawID(words: a, b, c, d)
      }
    }
    return try stringOrNil().flatMap { RawID(hex: String(decoding: $0, as: UTF8.self)) }
  }

  mutating func time() throws -> Timestamp {
    let zero = Timestamp(seconds: 0, nanoseconds: 0, offset: 0)
    return try stringOrNil().flatMap { Timestamp(rfc3339: String(decoding: $0, as: UTF8.self)) } ?? zero
  }

  mutating func node() throws -> Node {
    var name: [UInt8]? = nil
    var type: String? = nil
    var n = Node(name: [], type: .irregular)
    var linkTarget: [UInt8]? = nil
    var linkTargetRaw: [UInt8]? = nil
    var contentError = false
    try object { p, key in
      switch key.count {
      case 4 where key.is("name"): name = try p.stringOrNil()
      case 4 where key.is("type"): type = try p.stringOrNil().map { String(decoding: $0, as: UTF8.self) }
      case 4 where key.is("mode"): n.mode = UInt32(truncatingIfNeeded: try p.uint64() ?? 0)
      case 5 where key.is("mtime"): n.mtime = try p.time()
      case 5 where key.is("atime"): n.atime = try p.time()
      case 5 where key.is("ctime"): n.ctime = try p.time()
      case 3 where key.is("uid"): n.uid = UInt32(truncatingIfNeeded: try p.uint64() ?? 0)
      case 3 where key.is("gid"): n.gid = UInt32(truncatingIfNeeded: try p.uint64() ?? 0)
      case 4 where key.is("user"):
        n.user = try p.stringOrNil().map { String(decoding: $0, as: UTF8.self) } ?? ""
      case 5 where key.is("group"):
        n.group = try p.stringOrNil().map { String(decoding: $0, as: UTF8.self) } ?? ""
      case 5 where key.is("inode"): n.inode = try p.uint64() ?? 0
      case 9 where key.is("device_id"): n.deviceID = try p.uint64() ?? 0
      case 4 where key.is("size"): n.size = try p.uint64() ?? 0
      case 5 where key.is("links"): n.links = try p.uint64() ?? 0
      case 6 where key.is("device"): n.device = try p.uint64() ?? 0
      case 10 where key.is("linktarget"): linkTarget = try p.stringOrNil()
      case 14 where key.is("linktarget_raw"): linkTargetRaw = try p.stringOrNil()
      case 7 where key.is("subtree"): n.subtree = try p.hexID().map { BlobID($0) }
      case 7 where key.is("content"):
        p.skipWS()
        guard p.peek(UInt8(ascii: "[")) else {
          // null: no content; any other non-array: empty content (as Node(json:) reads it).
          if !(try p.generic()).isNull { n.content = [] }
          return
        }
        var ids: [BlobID] = []
        try p.array { p in
          guard let id = try p.hexID() else {
            contentError = true
            return
          }
          ids.append(BlobID(id))
        }
        n.content = ids
      case 19 where key.is("extended_attributes"):
        for x in try p.generic().array ?? [] {
          if let xn = x["name"]?.bytes {
            n.xattrs.append(ExtendedAttribute(name: xn, value: x["value"]?.bytes.flatMap(Base64.decode) ?? []))
          }
        }
      default: try p.skip()
      }
    }
    guard let name, let type else { throw TidemarkError.corrupt("tree node without name or type") }
    if contentError {
      throw TidemarkError.corrupt("tree node \(String(decoding: name, as: UTF8.self)) has an invalid content ID")
    }
    n.name = goUnquote(name)
    n.type = NodeType(rawValue: type) ?? .irregular
    n.linkTarget = linkTargetRaw.flatMap(Base64.decode) ?? linkTarget ?? []
    return n
  }
}
