// Content-defined chunking with restic's Rabin fingerprint (github.com/restic/chunker):
// 64-byte window, chunks of 512 KiB to 8 MiB, cut where the low 20 bits of the digest are zero.
// Identical polynomial and parameters give identical boundaries, hence cross-tool deduplication.
import TidemarkCrypto

/// A polynomial over GF(2) of degree < 64.
public struct Polynomial: Hashable, Sendable, CustomStringConvertible {
  public var value: UInt64
  public init(_ v: UInt64) { value = v }

  public var degree: Int { value == 0 ? -1 : 63 - value.leadingZeroBitCount }
  public var description: String { String(value, radix: 16) }

  /// Remainder of `x` divided by `self`.
  public func mod(_ x: UInt64) -> UInt64 {
    var x = x
    let d = degree
    while x != 0 && (63 - x.leadingZeroBitCount) >= d {
      x ^= value << UInt64((63 - x.leadingZeroBitCount) - d)
    }
    return x
  }

  /// (a * b) mod self, for a, b already reduced.
  func mulMod(_ a: UInt64, _ b: UInt64) -> UInt64 {
    var result: UInt64 = 0
    var a = a
    var b = b
    let d = degree
    while b != 0 {
      if b & 1 == 1 { result ^= a }
      b >>= 1
      a <<= 1
      if a >> UInt64(d) & 1 == 1 { a ^= value }
    }
    return result
  }

  static func gcd(_ a: UInt64, _ b: UInt64) -> UInt64 {
    var (a, b) = (a, b)
    while b != 0 {
      (a, b) = (b, Polynomial(b).mod(a))
    }
    return a
  }

  /// Ben-Or's test: irreducible iff gcd(f, x^(2^i) − x mod f) = 1 for i = 1 … deg/2.
  public var isIrreducible: Bool {
    let d = degree
    guard d > 0 else { return false }
    var xp: UInt64 = 2  // x
    for _ in 1...(d / 2) {
      xp = mulMod(xp, xp)  // x^(2^i) mod f
      if Polynomial.gcd(value, xp ^ 2) != 1 { return false }
    }
    return true
  }

  /// A random irreducible polynomial of degree 53, as restic's `init` picks.
  public static func randomIrreducible() -> Polynomial {
    while true {
      let b = SecureRandom.bytes(8)
      var v: UInt64 = 0
      for x in b { v = v << 8 | UInt64(x) }
      v &= (1 << 54) - 1
      v |= (1 << 53) | 1
      let p = Polynomial(v)
      if p.degree == 53 && p.isIrreducible { return p }
    }
  }
}

/// Precomputed tables for one polynomial; share them between chunkers.
public final class ChunkerTables: Sendable {
  let out: [UInt64]
  let modTable: [UInt64]
  let shift: UInt64
  public let polynomial: Polynomial

  public init(polynomial p: Polynomial) {
    polynomial = p
    func appendByte(_ h: UInt64, _ b: UInt8) -> UInt64 { p.mod((h << 8) | UInt64(b)) }
    var out = [UInt64](repeating: 0, count: 256)
    for b in 0..<256 {
      var h = appendByte(0, UInt8(b))
      for _ in 0..<(Chunker.windowSize - 1) { h = appendByte(h, 0) }
      out[b] = h
    }
    let k = UInt64(p.degree)
    var mod = [UInt64](repeating: 0, count: 256)
    for b in 0..<256 { mod[b] = p.mod(UInt64(b) << k) | (UInt64(b) << k) }
    self.out = out
    self.modTable = mod
    self.shift = k - 8
  }
}

/// Finds chunk boundaries in a stream fed piece by piece. Not thread-safe: one per file.
public struct Chunker {
  public static let windowSize = 64
  public static let minSize = 512 * 1024
  public static let maxSize = 8 * 1024 * 1024
  static let splitMask: UInt64 = (1 << 20) - 1

  let tables: ChunkerTables
  var window = [UInt8](repeating: 0, count: 64)
  var wpos = 0
  var digest: UInt64 = 0
  /// Bytes of the current chunk seen so far.
  public private(set) var count = 0

  public init(tables: ChunkerTables) {
    self.tables = tables
    reset()
  }

  mutating func reset() {
    for i in 0..<64 { window[i] = 0 }
    wpos = 0
    count = 0
    digest = 0
    slide(1)
  }

  @inline(__always) mutating func slide(_ b: UInt8) {
    let out = window[wpos]
    window[wpos] = b
    digest ^= tables.out[Int(out)]
    wpos = (wpos + 1) & 63
    let idx = Int(truncatingIfNeeded: (digest >> tables.shift) & 0xff)
    digest = ((digest << 8) | UInt64(b)) ^ tables.modTable[idx]
  }

  /// Scans `buf` and returns the number of bytes that complete the current chunk, or nil when the
  /// whole buffer belongs to it (feed more). After a boundary the chunker starts a new chunk.
  public mutating func next(_ buf: UnsafeRawBufferPointer) -> Int? {
    var i = 0
    let n = buf.count
    // The first minSize - 64 bytes of a chunk cannot end it and need not be hashed.
    let skip = Chunker.minSize - Chunker.windowSize
    if count < skip {
      let k = min(skip - count, n)
      count += k
      i = k
      if i == n { return nil }
    }
    var st = RollState(digest: digest, wpos: wpos, count: count)
    let result: Int? = window.withUnsafeMutableBufferPointer { win in
      tables.out.withUnsafeBufferPointer { outT in
        tables.modTable.withUnsafeBufferPointer { modT in
          Chunker.roll(
            buf.baseAddress!.assumingMemoryBound(to: UInt8.self) + i, n - i, win.baseAddress!, outT.baseAddress!,
            modT.baseAddress!, tables.shift, &st)
        }
      }
    }
    if let r = result {
      reset()
      return i + r
    }
    digest = st.digest
    wpos = st.wpos
    count = st.count
    return nil
  }

  struct RollState {
    var digest: UInt64
    var wpos: Int
    var count: Int
  }

  /// The hot loop, over raw pointers with all state in locals. Returns the bytes consumed up to and
  /// including a cut, or nil when `n` bytes produced no cut (state is then saved in `st`).
  @inline(__always)
  static func roll(
    _ p: UnsafePointer<UInt8>, _ n: Int, _ win: UnsafeMutablePointer<UInt8>, _ outT: UnsafePointer<UInt64>,
    _ modT: UnsafePointer<UInt64>, _ shift: UInt64, _ st: inout RollState
  ) -> Int? {
    var digest = st.digest
    var wpos = st.wpos
    var count = st.count
    var i = 0
    // The byte leaving the 64-byte window: from the saved window for the first 64 bytes of this
    // buffer, then straight from the buffer (no window upkeep in the hot loop). On return without a
    // cut the window is rebuilt from the buffer's last 64 bytes.
    @inline(__always) func outgoing(_ i: Int) -> UInt8 {
      if i >= 64 { return p[i &- 64] }
      let b = win[wpos]
      win[wpos] = p[i]
      wpos = (wpos &+ 1) & 63
      return b
    }
    // Bytes that leave the chunk below the minimum size cannot end it: hash them without testing.
    let untilMin = min(n, max(0, minSize - 1 - count))
    while i < untilMin {
      let b = p[i]
      digest ^= outT[Int(outgoing(i))]
      digest = ((digest &<< 8) | UInt64(b)) ^ modT[Int(truncatingIfNeeded: digest &>> shift) & 0xff]
      i &+= 1
    }
    count &+= untilMin
    // Cut where the mask matches or at the maximum size.
    let limit = min(n, i + (maxSize - count))
    while i < min(limit, 64) {
      let b = p[i]
      digest ^= outT[Int(outgoing(i))]
      digest = ((digest &<< 8) | UInt64(b)) ^ modT[Int(truncatingIfNeeded: digest &>> shift) & 0xff]
      i &+= 1
      if digest & splitMask == 0 { return i }
    }
    while i < limit {
      let b = p[i]
      digest ^= outT[Int(p[i &- 64])]
      digest = ((digest &<< 8) | UInt64(b)) ^ modT[Int(truncatingIfNeeded: digest &>> shift) & 0xff]
      i &+= 1
      if digest & splitMask == 0 { return i }
    }
    count &+= limit - untilMin
    if count >= maxSize { return i }
    if i >= 64 {
      for k in 0..<64 { win[k] = p[i - 64 + k] }
      wpos = 0
    }
    st = RollState(digest: digest, wpos: wpos, count: count)
    return nil
  }
}
