// Typed 32-byte IDs: a SnapshotID can never be used where a PackID is expected.
import TidemarkCrypto

/// 32 bytes, stored as four words so hashing and comparing are cheap.
public struct RawID: Hashable, Comparable, Sendable {
  public var w0: UInt64, w1: UInt64, w2: UInt64, w3: UInt64

  public init(bytes: some Collection<UInt8>) {
    precondition(bytes.count == 32, "an ID has 32 bytes")
    var w: [UInt64] = [0, 0, 0, 0]
    for (i, b) in bytes.enumerated() { w[i / 8] = (w[i / 8] << 8) | UInt64(b) }
    (w0, w1, w2, w3) = (w[0], w[1], w[2], w[3])
  }

  /// The four big-endian words of the 32 bytes.
  @inline(__always) public init(words: (UInt64, UInt64, UInt64, UInt64)) { (w0, w1, w2, w3) = words }

  public init?(hex: some StringProtocol) {
    let u = Array(hex.utf8)
    guard u.count == 64 else { return nil }
    var bytes = [UInt8](repeating: 0, count: 32)
    for i in 0..<32 {
      guard let hi = hexValue(u[2 * i]), let lo = hexValue(u[2 * i + 1]) else { return nil }
      bytes[i] = hi << 4 | lo
    }
    self.init(bytes: bytes)
  }

  public var bytes: [UInt8] {
    var out = [UInt8]()
    out.reserveCapacity(32)
    for w in [w0, w1, w2, w3] {
      for s in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: w >> UInt64(s))) }
    }
    return out
  }

  public var hex: String {
    let digits = Array("0123456789abcdef".utf8)
    var out = [UInt8]()
    out.reserveCapacity(64)
    for b in bytes {
      out.append(digits[Int(b >> 4)])
      out.append(digits[Int(b & 15)])
    }
    return String(decoding: out, as: UTF8.self)
  }

  public static func < (a: RawID, b: RawID) -> Bool {
    (a.w0, a.w1, a.w2, a.w3) < (b.w0, b.w1, b.w2, b.w3)
  }

  /// SHA-256 of `data`.
  public static func hash(_ data: UnsafeRawBufferPointer) -> RawID { RawID(bytes: SHA256.hash(data)) }
  public static func hash(_ data: [UInt8]) -> RawID { data.withUnsafeBytes { hash($0) } }
}

@inline(__always) func hexValue(_ c: UInt8) -> UInt8? {
  switch c {
  case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
  case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
  case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
  default: return nil
  }
}

public enum BlobKind {}
public enum PackKind {}
public enum SnapshotKind {}
public enum IndexKind {}
public enum KeyKind {}
public enum LockKind {}

/// An ID of one kind of object. The phantom `Kind` keeps kinds apart at compile time.
public struct ID<Kind>: Hashable, Comparable, Sendable, CustomStringConvertible {
  public var raw: RawID
  public init(_ raw: RawID) { self.raw = raw }
  public init?(hex: some StringProtocol) {
    guard let r = RawID(hex: hex) else { return nil }
    raw = r
  }
  public var hex: String { raw.hex }
  /// The 8-hex-digit short form restic prints.
  public var short: String { String(hex.prefix(8)) }
  public var description: String { hex }
  public static func < (a: ID, b: ID) -> Bool { a.raw < b.raw }
}

/// Data and tree blobs; a tree's ID is the SHA-256 of its JSON.
public typealias BlobID = ID<BlobKind>
public typealias PackID = ID<PackKind>
public typealias SnapshotID = ID<SnapshotKind>
public typealias IndexID = ID<IndexKind>
public typealias KeyID = ID<KeyKind>
public typealias LockID = ID<LockKind>
