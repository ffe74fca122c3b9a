// Typed 32-byte IDs: a SnapshotID can never be used where a PackID is expected.
import TidemarkCrypto

/// 32 bytes, stored as four words so hashing and comparing are cheap.
public struct RawID: Hashable, Comparable, Sendable {
  public var w0: UInt64, w1: UInt64, w2: UInt64, w3: UInt64

  public init(bytes: some Collection<UInt8>) {
    precondition(bytes.count == 32, "an ID has 32 bytes")
    (w0, w1, w2, w3) = (0, 0, 0, 0)
    var i = 0
    for b in bytes {
      switch i >> 3 {
      case 0: w0 = w0 << 8 | UInt64(b)
      case 1: w1 = w1 << 8 | UInt64(b)
      case 2: w2 = w2 << 8 | UInt64(b)
      default: w3 = w3 << 8 | UInt64(b)
      }
      i += 1
    }
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
    String(unsafeUninitializedCapacity: 64) { b in
      writeHex(into: UnsafeMutableRawBufferPointer(b))
      return 64
    }
  }

  /// Writes the 64 lowercase hex digits into the first 64 bytes of `b`, without allocating.
  @inline(__always) func writeHex(into b: UnsafeMutableRawBufferPointer) {
    let digits: StaticString = "0123456789abcdef"
    let d = digits.utf8Start
    @inline(__always) func word(_ w: UInt64, at start: Int) {
      for k in 0..<16 { b[start + k] = d[Int(truncatingIfNeeded: (w >> UInt64(60 - 4 * k)) & 15)] }
    }
    word(w0, at: 0)
    word(w1, at: 16)
    word(w2, at: 32)
    word(w3, at: 48)
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
