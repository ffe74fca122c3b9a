// The index: which pack holds which blob. Index files may overlap and hold duplicates; all are merged.
import Synchronization

public struct IndexEntry: Sendable, Hashable {
  public var pack: PackID
  public var blob: PackedBlob
}

/// One index file's worth of packs.
public struct IndexFile: Sendable {
  /// A rewritten index (prune, consolidation) starts a new file once one holds this many blob entries: restic's
  /// own limit (`indexMaxBlobs`), so a file stays a few MiB and loads in one piece.
  public static let maxBlobs = 50_000

  public var supersedes: [IndexID] = []
  public var packs: [(id: PackID, blobs: [PackedBlob])] = []
  public init() {}

  public func encode() -> [UInt8] {
    var w = JSONWriter()
    w.raw("{")
    if !supersedes.isEmpty {
      w.raw("\"supersedes\":")
      w.stringArray(supersedes.map(\.hex))
      w.raw(",")
    }
    w.raw("\"packs\":[")
    for (pi, p) in packs.enumerated() {
      if pi > 0 { w.comma() }
      w.raw("{\"id\":\"")
      w.hex(p.id)
      w.raw("\",\"blobs\":[")
      for (bi, b) in p.blobs.enumerated() {
        if bi > 0 { w.comma() }
        w.raw("{\"id\":\"")
        w.hex(b.id)
        w.raw(b.type == .data ? "\",\"type\":\"data\",\"offset\":" : "\",\"type\":\"tree\",\"offset\":")
        w.number(UInt64(b.offset))
        w.raw(",\"length\":")
        w.number(UInt64(b.length))
        if b.isCompressed {
          w.raw(",\"uncompressed_length\":")
          w.number(UInt64(b.uncompressedLength))
        }
        w.raw("}")
      }
      w.raw("]}")
    }
    w.raw("]}")
    return w.out
  }

  /// Reads an index file straight from its JSON: no intermediate JSONValue tree, which for a file of
  /// 50,000 blobs costs some 40 MiB of small allocations (one dictionary per blob) while it lives.
  public init(json: [UInt8]) throws {
    try json.withUnsafeBufferPointer { buf in
      var r = IndexFileReader(p: Parser(buf: buf))
      try r.read(into: &self)
    }
  }
}

/// The index file reader behind `IndexFile(json:)`: keys in any order, unknown keys skipped.
struct IndexFileReader {
  var p: Parser

  mutating func expect(_ c: UInt8, _ what: String) throws {
    p.skipWS()
    guard p.i < p.buf.count, p.buf[p.i] == c else { throw p.fail("expected \(what)") }
    p.i += 1
  }

  /// Calls `body` with each key of an object (positioned at its value); `body` must consume the value.
  mutating func object(_ body: (inout IndexFileReader, UnsafeBufferPointer<UInt8>) throws -> Void) throws {
    try expect(UInt8(ascii: "{"), "'{'")
    p.skipWS()
    if p.i < p.buf.count && p.buf[p.i] == UInt8(ascii: "}") {
      p.i += 1
      return
    }
    while true {
      p.skipWS()
      let key = try rawString()
      try expect(UInt8(ascii: ":"), "':'")
      p.skipWS()
      try body(&self, key)
      if try !another(before: UInt8(ascii: "}")) { return }
    }
  }

  /// After a member or element: true when a ',' follows (consumed), false at `close` (consumed).
  private mutating func another(before close: UInt8) throws -> Bool {
    p.skipWS()
    guard p.i < p.buf.count else { throw p.fail("unexpected end") }
    let c = p.buf[p.i]
    guard c == UInt8(ascii: ",") || c == close else {
      throw p.fail("expected ',' or '\(Character(UnicodeScalar(close)))'")
    }
    p.i += 1
    return c == UInt8(ascii: ",")
  }

  /// Calls `body` for each element of an array (positioned at it); `body` must consume it. `null` is empty.
  mutating func array(_ body: (inout IndexFileReader) throws -> Void) throws {
    p.skipWS()
    if p.i < p.buf.count && p.buf[p.i] == UInt8(ascii: "n") {
      try p.literal("null")
      return
    }
    try expect(UInt8(ascii: "["), "'['")
    p.skipWS()
    if p.i < p.buf.count && p.buf[p.i] == UInt8(ascii: "]") {
      p.i += 1
      return
    }
    while true {
      p.skipWS()
      try body(&self)
      if try !another(before: UInt8(ascii: "]")) { return }
    }
  }

  /// A string without escapes, as a view into the buffer (keys, IDs and type names never need escapes;
  /// anything else falls back to the general parser's decoding).
  mutating func rawString() throws -> UnsafeBufferPointer<UInt8> {
    guard p.i < p.buf.count, p.buf[p.i] == UInt8(ascii: "\"") else { throw p.fail("expected a string") }
    let start = p.i + 1
    var j = start
    while j < p.buf.count && p.buf[j] != UInt8(ascii: "\"") && p.buf[j] != UInt8(ascii: "\\") { j += 1 }
    guard j < p.buf.count else { throw p.fail("unterminated string") }
    if p.buf[j] == UInt8(ascii: "\"") {
      p.i = j + 1
      return UnsafeBufferPointer(rebasing: p.buf[start..<j])
    }
    throw p.fail("unexpected escape")
  }

  /// A 64-digit hex ID; nil (and nothing consumed) when the value is anything else.
  mutating func id() -> RawID? {
    let save = p.i
    guard let s = try? rawString(), s.count == 64 else {
      p.i = save
      return nil
    }
    var w: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
    for k in 0..<4 {
      var v: UInt64 = 0
      for j in 0..<16 {
        guard let h = hexValue(s[k * 16 + j]) else {
          p.i = save
          return nil
        }
        v = v << 4 | UInt64(h)
      }
      switch k {
      case 0: w.0 = v
      case 1: w.1 = v
      case 2: w.2 = v
      default: w.3 = v
      }
    }
    return RawID(words: w)
  }

  mutating func number() -> UInt64? {
    var v: UInt64 = 0
    let start = p.i
    while p.i < p.buf.count, p.buf[p.i] >= 48, p.buf[p.i] <= 57 {
      let (m, o1) = v.multipliedReportingOverflow(by: 10)
      let (a, o2) = m.addingReportingOverflow(UInt64(p.buf[p.i] - 48))
      if o1 || o2 { return nil }
      v = a
      p.i += 1
    }
    return p.i > start ? v : nil
  }

  static func eq(_ a: UnsafeBufferPointer<UInt8>, _ b: StaticString) -> Bool {
    a.count == b.utf8CodeUnitCount && (0..<a.count).allSatisfy { a[$0] == b.utf8Start[$0] }
  }

  mutating func skip() throws { _ = try p.value(depth: 1) }

  mutating func read(into f: inout IndexFile) throws {
    var sawPacks = false
    try object { r, key in
      if Self.eq(key, "supersedes") {
        try r.array { r in
          if let id = r.id() { f.supersedes.append(IndexID(id)) } else { try r.skip() }
        }
      } else if Self.eq(key, "packs") {
        sawPacks = true
        try r.array { r in try r.pack(into: &f) }
      } else {
        try r.skip()
      }
    }
    p.skipWS()
    guard p.i == p.buf.count else { throw p.fail("trailing data") }
    guard sawPacks else { throw TidemarkError.corrupt("index file has no packs list") }
  }

  mutating func pack(into f: inout IndexFile) throws {
    var pid: PackID? = nil
    var blobs: [PackedBlob] = []
    var bad = false
    try object { r, key in
      if Self.eq(key, "id") {
        if let id = r.id() { pid = PackID(id) } else { try r.skip() }
      } else if Self.eq(key, "blobs") {
        try r.array { r in
          if let b = try r.blob() { blobs.append(b) } else { bad = true }
        }
      } else {
        try r.skip()
      }
    }
    guard let pid else { throw TidemarkError.corrupt("index file has a pack without a valid id") }
    if bad { throw TidemarkError.corrupt("index file has an invalid blob entry in pack \(pid.short)") }
    f.packs.append((pid, blobs))
  }

  /// One blob entry; nil when a field is missing or invalid.
  mutating func blob() throws -> PackedBlob? {
    var id: RawID? = nil
    var type: BlobType? = nil
    var offset: UInt64? = nil
    var length: UInt64? = nil
    var ulen: UInt64 = 0
    var bad = false
    try object { r, key in
      if Self.eq(key, "id") {
        id = r.id()
        if id == nil {
          bad = true
          try r.skip()
        }
      } else if Self.eq(key, "type") {
        let save = r.p.i
        if let s = try? r.rawString() {
          type = Self.eq(s, "data") ? .data : Self.eq(s, "tree") ? .tree : nil
        } else {
          r.p.i = save
          try r.skip()
        }
      } else if Self.eq(key, "offset") {
        offset = r.number()
        if offset == nil { try r.skip() }
      } else if Self.eq(key, "length") {
        length = r.number()
        if length == nil { try r.skip() }
      } else if Self.eq(key, "uncompressed_length") {
        if let n = r.number() { ulen = n } else { try r.skip() }
      } else {
        try r.skip()
      }
    }
    guard !bad, let id, let type, let offset, let length else { return nil }
    return PackedBlob(
      id: BlobID(id), type: type, offset: UInt32(truncatingIfNeeded: offset),
      length: UInt32(truncatingIfNeeded: length), uncompressedLength: UInt32(truncatingIfNeeded: ulen))
  }
}

/// All index files merged, plus entries added during this run. Thread-safe.
public final class MasterIndex: Sendable {
  private struct State {
    var blobs = CompactBlobTable()
    var packs: [PackID] = []
    var packNumber: [PackID: UInt32] = [:]
    var packBlobs: [Int] = []  // by pack number: blob entries naming the pack, duplicates included

    mutating func number(of pack: PackID, adding count: Int) -> UInt32 {
      if let n = packNumber[pack] {
        packBlobs[Int(n)] += count
        return n
      }
      let n = UInt32(packs.count)
      precondition(n < CompactBlobTable.maxPacks, "too many packs for the in-memory index")
      packs.append(pack)
      packBlobs.append(count)
      packNumber[pack] = n
      return n
    }

    mutating func add(pack: PackID, blobs: [PackedBlob]) {
      let n = number(of: pack, adding: blobs.count)
      for b in blobs { self.blobs.insertIfAbsent(b, pack: n) }
    }

    func entry(_ e: CompactBlobTable.Entry) -> IndexEntry {
      IndexEntry(pack: packs[Int(e.pack)], blob: e.blob)
    }
  }
  private let state = Mutex(State())

  public init() {}

  /// Adds a pack's blobs; a blob already known keeps its first location.
  public func add(pack: PackID, blobs: [PackedBlob]) {
    state.withLock { s in
      s.blobs.reserve(s.blobs.count + blobs.count)
      s.add(pack: pack, blobs: blobs)
    }
  }

  public func add(_ file: IndexFile) {
    state.withLock { s in
      s.blobs.reserve(s.blobs.count + file.packs.reduce(0) { $0 + $1.blobs.count })
      for p in file.packs { s.add(pack: p.id, blobs: p.blobs) }
    }
  }

  /// Takes `other`'s entries in place of its own, leaving `other` empty: the daemon keeps the index between
  /// cycles instead of reading every index file again.
  public func adopt(_ other: MasterIndex) {
    let taken = other.state.withLock { s in
      defer { s = State() }
      return s
    }
    state.withLock { $0 = taken }
  }

  public func lookup(_ id: BlobID) -> IndexEntry? {
    state.withLock { s in s.blobs.find(id.raw).map { s.entry($0) } }
  }
  public func has(_ id: BlobID) -> Bool { state.withLock { $0.blobs.find(id.raw) != nil } }
  public var blobCount: Int { state.withLock { $0.blobs.count } }
  public var packIDs: [PackID] { state.withLock { $0.packs } }
  public var allEntries: [IndexEntry] {
    state.withLock { s in
      var out: [IndexEntry] = []
      out.reserveCapacity(s.blobs.count)
      s.blobs.forEach { out.append(s.entry($0)) }
      return out
    }
  }
}

/// The merged index's blobs in about 52 bytes each (a Swift dictionary of `IndexEntry` took ~190 with its
/// load factor, and twice that while it grew): fixed 48-byte entries in segments that are never moved
/// (growing copies nothing), found through an open-addressing table of 32-bit entry numbers. IDs are
/// SHA-256 digests, so their first word is a well-spread hash as is. Not thread-safe; `MasterIndex` locks.
struct CompactBlobTable {
  struct Entry {
    var id: RawID
    /// Pack number, with the blob type in the top bit.
    var packAndType: UInt32
    var offset: UInt32
    var length: UInt32
    var uncompressedLength: UInt32

    var pack: UInt32 { packAndType & ~CompactBlobTable.treeBit }
    var blob: PackedBlob {
      PackedBlob(
        id: BlobID(id), type: packAndType & CompactBlobTable.treeBit != 0 ? .tree : .data, offset: offset,
        length: length, uncompressedLength: uncompressedLength)
    }
  }

  static let treeBit: UInt32 = 1 << 31
  static let maxPacks: UInt32 = treeBit
  /// Entries per segment: 3 MiB segments, below the allocator's mmap threshold.
  static let segmentShift = 16
  static let segmentSize = 1 << segmentShift

  private var segments: [[Entry]] = []
  /// 0: empty; otherwise entry number + 1. The size is a power of two, at most 3/4 full.
  private var slots: [UInt32] = []
  private(set) var count = 0

  init() {}

  private func entry(_ n: Int) -> Entry { segments[n >> Self.segmentShift][n & (Self.segmentSize - 1)] }

  /// Makes room for `n` entries without growing the slot table again.
  mutating func reserve(_ n: Int) {
    guard n * 4 > slots.count * 3 else { return }
    var size = max(1024, slots.count)
    while n * 4 > size * 3 { size *= 2 }
    var fresh = [UInt32](repeating: 0, count: size)
    let mask = size - 1
    for k in 0..<count {
      var i = Int(truncatingIfNeeded: entry(k).id.w0) & mask
      while fresh[i] != 0 { i = (i + 1) & mask }
      fresh[i] = UInt32(k + 1)
    }
    slots = fresh
  }

  /// The slot holding `id`, or the empty slot where it would go.
  private func slot(for id: RawID) -> Int {
    let mask = slots.count - 1
    var i = Int(truncatingIfNeeded: id.w0) & mask
    while true {
      let s = slots[i]
      if s == 0 { return i }
      let e = entry(Int(s) - 1)
      if e.id == id { return i }
      i = (i + 1) & mask
    }
  }

  func find(_ id: RawID) -> Entry? {
    guard !slots.isEmpty else { return nil }
    let s = slots[slot(for: id)]
    return s == 0 ? nil : entry(Int(s) - 1)
  }

  /// Adds `b` in pack number `pack` unless its ID is present already; returns whether it was added.
  @discardableResult
  mutating func insertIfAbsent(_ b: PackedBlob, pack: UInt32) -> Bool {
    reserve(count + 1)
    let i = slot(for: b.id.raw)
    guard slots[i] == 0 else { return false }
    let e = Entry(
      id: b.id.raw, packAndType: pack | (b.type == .tree ? Self.treeBit : 0), offset: b.offset, length: b.length,
      uncompressedLength: b.uncompressedLength)
    if count & (Self.segmentSize - 1) == 0 {
      var seg: [Entry] = []
      seg.reserveCapacity(Self.segmentSize)
      segments.append(seg)
    }
    segments[segments.count - 1].append(e)
    count += 1
    slots[i] = UInt32(count)
    return true
  }

  func forEach(_ body: (Entry) -> Void) {
    for seg in segments { for e in seg { body(e) } }
  }
}
