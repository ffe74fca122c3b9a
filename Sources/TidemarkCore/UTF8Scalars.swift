// UTF-8 encoding and decoding of single scalars, as the reader, the writer and Go quoting need them
// (invalid input is reported, not replaced, so Go's byte-wise fallbacks can be reproduced).

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
