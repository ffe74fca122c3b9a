// The JSON reader: one pass over the bytes into a JSONValue. `Parser` is shared with the tree
// decoder (TreeJSON.swift), which reads nodes straight from the same bytes.

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

struct Parser {
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
