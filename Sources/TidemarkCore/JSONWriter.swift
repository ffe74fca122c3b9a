// A JSON writer that reproduces Go's encoding/json byte for byte: restic's tree and snapshot IDs
// are hashes of that text, so any difference would change them.

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
    @inline(__always) func hex(_ v: UInt8) -> UInt8 { v < 10 ? 48 + v : 87 + v }
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
          out.append(hex(c >> 4))
          out.append(hex(c & 15))
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

  public mutating func number(_ v: UInt64) { out.appendDecimal(v) }
  /// An ID's hex digits, unquoted (callers write the quotes around them with the text before and after).
  public mutating func hex(_ id: RawID) { out.appendHex(id) }
  public mutating func hex<Kind>(_ id: ID<Kind>) { out.appendHex(id.raw) }
  public mutating func number(_ v: Int64) {
    if v < 0 { out.append(UInt8(ascii: "-")) }
    out.appendDecimal(v.magnitude)
  }
  public mutating func number(_ v: Int) { number(Int64(v)) }
  public mutating func bool(_ v: Bool) { v ? raw("true") : raw("false") }

  /// A float64 as Go's `encoding/json` writes it: the shortest decimal that reads back the same, without an
  /// exponent between 1e-6 and 1e21 (restic's JSON documents carry ratios and percentages this way).
  public mutating func number(_ f: Double) {
    if f == f.rounded(), abs(f) < 1e18 { return raw(String(Int64(f))) }
    let a = abs(f)
    var s = "\(f)"
    if a < 1e-6 || a >= 1e21 {
      // Go: 1e-07, trimmed to 1e-7.
      if let e = s.firstIndex(of: "e") {
        var exp = String(s[s.index(after: e)...])
        let sign = exp.hasPrefix("-") ? "-" : "+"
        exp = String(exp.drop { $0 == "-" || $0 == "+" || $0 == "0" })
        s = String(s[..<e]) + "e" + sign + (exp.isEmpty ? "0" : exp)
      }
      return raw(s)
    }
    // Swift's description is the shortest round-trip form too; spell out any exponent it uses.
    guard let e = s.firstIndex(of: "e"), let exp = Int(s[s.index(after: e)...]) else { return raw(s) }
    let mantissa = s[..<e]
    let negative = mantissa.hasPrefix("-")
    let digits = mantissa.filter(\.isNumber)
    let point =
      (mantissa.firstIndex(of: ".").map { mantissa.distance(from: mantissa.startIndex, to: $0) }
        ?? mantissa.count) - (negative ? 1 : 0) + exp
    if point <= 0 {
      s = "0." + String(repeating: "0", count: -point) + digits
    } else if point >= digits.count {
      s = digits + String(repeating: "0", count: point - digits.count)
    } else {
      s = String(digits.prefix(point)) + "." + String(digits.dropFirst(point))
    }
    raw((negative ? "-" : "") + s)
  }

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

extension [UInt8] {
  /// Appends the ID's 64 lowercase hex digits, without building a String.
  public mutating func appendHex(_ id: RawID) {
    let start = count
    append(contentsOf: repeatElement(48, count: 64))
    withUnsafeMutableBytes { id.writeHex(into: UnsafeMutableRawBufferPointer(rebasing: $0[start..<(start + 64)])) }
  }

  /// Appends `v` in decimal, without building a String.
  public mutating func appendDecimal(_ v: UInt64) {
    var n = 1
    var x = v
    while x >= 10 {
      x /= 10
      n += 1
    }
    let start = count
    append(contentsOf: repeatElement(48, count: n))
    x = v
    withUnsafeMutableBufferPointer { b in
      var i = start + n - 1
      repeat {
        b[i] = 48 + UInt8(x % 10)
        x /= 10
        i -= 1
      } while x > 0
    }
  }

  /// Appends `v` in decimal with at least `width` digits (zeros after the sign, as Go pads a year).
  mutating func appendDecimal(_ v: Int, width: Int) {
    if v < 0 { append(UInt8(ascii: "-")) }
    let v = v.magnitude
    var w = 1
    var x = v
    while x >= 10 {
      x /= 10
      w += 1
    }
    for _ in w..<Swift.max(w, width) { append(48) }
    appendDecimal(UInt64(v))
  }
}
