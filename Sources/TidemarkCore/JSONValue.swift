// A parsed JSON document. Strings are kept as bytes (names in trees are not always UTF-8), numbers as
// their text (inode numbers exceed Double's precision).

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
