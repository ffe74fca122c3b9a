// Go's strconv quoting of node names: restic stores names this way so that bytes that are not
// valid UTF-8 survive a JSON round trip.

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
