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

extension Chunker {
  /// The same boundaries as `next`, for callers that keep the current chunk contiguous in memory:
  /// `chunk` holds the chunk's bytes from its first byte on, and the first `scanned` of them were
  /// already examined without finding a cut. Returns the chunk's length if it ends within `chunk`,
  /// or nil (append more bytes and call again). A chunk of `maxSize` bytes ends there.
  ///
  /// Every position that may end a chunk lies at least `minSize - 1` bytes into it, and the digest
  /// there depends only on the 64 bytes ending at it (the window has been refilled since the chunk
  /// began). So positions can be examined in any order: this scans four stretches at once, which
  /// keeps four independent digest chains in flight instead of waiting on one (~2x the throughput
  /// of `next`).
  public static func cut(in chunk: UnsafeRawBufferPointer, scanned: Int, tables: ChunkerTables) -> Int? {
    let n = min(chunk.count, maxSize)
    let from = max(scanned, minSize - 1)
    guard let base = chunk.baseAddress, from < n else { return chunk.count >= maxSize ? maxSize : nil }
    let p = base.assumingMemoryBound(to: UInt8.self)
    let found = tables.out.withUnsafeBufferPointer { outT in
      tables.modTable.withUnsafeBufferPointer { modT in
        firstCandidate(p, from, n, outT.baseAddress!, modT.baseAddress!, tables.shift)
      }
    }
    if let j = found { return j + 1 }
    return chunk.count >= maxSize ? maxSize : nil
  }

  /// The first position `j` in `a..<b` (a >= 64) whose 64-byte window ends a chunk.
  @inline(__always)
  static func firstCandidate(
    _ p: UnsafePointer<UInt8>, _ a: Int, _ b: Int, _ outT: UnsafePointer<UInt64>, _ modT: UnsafePointer<UInt64>,
    _ shift: UInt64
  ) -> Int? {
    @inline(__always) func add(_ d: UInt64, _ byte: UInt8) -> UInt64 {
      ((d &<< 8) | UInt64(byte)) ^ modT[Int(truncatingIfNeeded: d &>> shift) & 0xff]
    }
    @inline(__always) func roll(_ d: UInt64, _ j: Int) -> UInt64 {
      add(d ^ outT[Int(p[j &- 64])], p[j])
    }
    /// The digest of the 64 bytes before `j`, as if a chunk's window had just filled with them.
    @inline(__always) func warm(_ j: Int) -> UInt64 {
      var d: UInt64 = 0
      for k in (j &- 64)..<j { d = add(d, p[k]) }
      return d
    }
    var s = a
    while b - s >= 4 * 1024 {
      let len = min(32 * 1024, (b - s) / 4)
      let (s0, s1, s2, s3) = (s, s &+ len, s &+ 2 &* len, s &+ 3 &* len)
      var (d0, d1, d2, d3) = (warm(s0), warm(s1), warm(s2), warm(s3))
      // The first hit in each stretch (Int.max: none). Stretches are in order, so a hit in the
      // first one ends the search at once and a later stretch's hit only counts if no earlier one has one.
      var (h1, h2, h3) = (Int.max, Int.max, Int.max)
      for t in 0..<len {
        d0 = roll(d0, s0 &+ t)
        d1 = roll(d1, s1 &+ t)
        d2 = roll(d2, s2 &+ t)
        d3 = roll(d3, s3 &+ t)
        if d0 & splitMask == 0 || d1 & splitMask == 0 || d2 & splitMask == 0 || d3 & splitMask == 0 {
          if d0 & splitMask == 0 { return s0 &+ t }
          if d1 & splitMask == 0 { h1 = min(h1, s1 &+ t) }
          if d2 & splitMask == 0 { h2 = min(h2, s2 &+ t) }
          if d3 & splitMask == 0 { h3 = min(h3, s3 &+ t) }
        }
      }
      if h1 != Int.max { return h1 }
      if h2 != Int.max { return h2 }
      if h3 != Int.max { return h3 }
      s = s3 &+ len
    }
    guard s < b else { return nil }
    var d = warm(s)
    for j in s..<b {
      d = roll(d, j)
      if d & splitMask == 0 { return j }
    }
    return nil
  }
}
