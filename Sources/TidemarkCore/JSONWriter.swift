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
