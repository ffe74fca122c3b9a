// Paths as raw bytes: Linux paths need not be UTF-8, so they are never forced through String;
// `description` escapes them for messages.
import Foundation

#if canImport(Glibc)
  import Glibc
#endif

/// A filesystem path as raw bytes (Linux paths need not be UTF-8).
public struct BytePath: Hashable, Sendable, CustomStringConvertible {
  public var bytes: [UInt8]
  public init(bytes: [UInt8]) { self.bytes = bytes }
  public init(_ s: String) { bytes = Array(s.utf8) }

  public func appending(_ name: [UInt8]) -> BytePath {
    var b = bytes
    if b.last != UInt8(ascii: "/") { b.append(UInt8(ascii: "/")) }
    b += name
    return BytePath(bytes: b)
  }
  public func appending(_ name: String) -> BytePath { appending(Array(name.utf8)) }

  public var components: [[UInt8]] { bytes.split(separator: UInt8(ascii: "/")).map(Array.init) }
  public var lastComponent: [UInt8] { components.last ?? [] }
  public var isAbsolute: Bool { bytes.first == UInt8(ascii: "/") }

  /// For messages: UTF-8 as is, other bytes as \xNN.
  public var description: String { BytePath.display(bytes) }

  public static func display(_ b: [UInt8]) -> String {
    if let s = String(validating: b, as: UTF8.self) { return s }
    var out = ""
    var i = 0
    while i < b.count {
      var j = i
      while j < b.count && b[j] < 0x80 { j += 1 }
      out += String(decoding: b[i..<j], as: UTF8.self)
      if j < b.count {
        // Take the longest valid UTF-8 sequence, else escape one byte.
        var taken = false
        for len in [4, 3, 2] where j + len <= b.count {
          if let s = String(validating: b[j..<(j + len)], as: UTF8.self), s.count == 1 {
            out += s
            j += len
            taken = true
            break
          }
        }
        if !taken {
          out += "\\x" + String(b[j], radix: 16, uppercase: false).leftPad(2)
          j += 1
        }
      }
      i = j
    }
    return out
  }

  public func withCString<T>(_ body: (UnsafePointer<CChar>) throws -> T) rethrows -> T {
    try (bytes + [0]).withUnsafeBufferPointer { b in
      try b.withMemoryRebound(to: CChar.self) { try body($0.baseAddress!) }
    }
  }

  /// Makes a relative path absolute against the working directory and removes `.`/`..`/`//` lexically.
  public func absolute() -> BytePath {
    var comps: [[UInt8]] = []
    var base = bytes
    if !isAbsolute {
      var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
      if getcwd(&buf, buf.count) != nil {
        base = Array(buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }) + [UInt8(ascii: "/")] + bytes
      }
    }
    for c in base.split(separator: UInt8(ascii: "/")) {
      if c.elementsEqual([UInt8(ascii: ".")]) { continue }
      if c.elementsEqual([UInt8(ascii: "."), UInt8(ascii: ".")]) {
        if !comps.isEmpty { comps.removeLast() }
        continue
      }
      comps.append(Array(c))
    }
    return BytePath(bytes: [UInt8(ascii: "/")] + Array(comps.joined(separator: [UInt8(ascii: "/")])))
  }
}

extension String {
  fileprivate func leftPad(_ n: Int) -> String { count >= n ? self : String(repeating: "0", count: n - count) + self }
}
