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
      w.raw(p.id.hex)
      w.raw("\",\"blobs\":[")
      for (bi, b) in p.blobs.enumerated() {
        if bi > 0 { w.comma() }
        w.raw("{\"id\":\"")
        w.raw(b.id.hex)
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

  public init(json: [UInt8]) throws {
    let v = try JSON.parse(json)
    for s in v["supersedes"]?.array ?? [] {
      if let id = s.string.flatMap({ IndexID(hex: $0) }) { supersedes.append(id) }
    }
    guard let packs = v["packs"]?.array else { throw TidemarkError.corrupt("index file has no packs list") }
    for p in packs {
      guard let pid = p["id"]?.string.flatMap({ PackID(hex: $0) }) else {
        throw TidemarkError.corrupt("index file has a pack without a valid id")
      }
      var blobs: [PackedBlob] = []
      for b in p["blobs"]?.array ?? [] {
        guard let id = b["id"]?.string.flatMap({ BlobID(hex: $0) }),
          let t = b["type"]?.string.flatMap(BlobType.init(name:)),
          let off = b["offset"]?.uint64, let len = b["length"]?.uint64
        else { throw TidemarkError.corrupt("index file has an invalid blob entry in pack \(pid.short)") }
        blobs.append(
          PackedBlob(
            id: id, type: t, offset: UInt32(off), length: UInt32(len),
            uncompressedLength: UInt32(b["uncompressed_length"]?.uint64 ?? 0)))
      }
      self.packs.append((pid, blobs))
    }
  }
}

/// All index files merged, plus entries added during this run. Thread-safe.
public final class MasterIndex: Sendable {
  private struct State {
    var blobs: [BlobID: IndexEntry] = [:]
    var packs: [PackID: Int] = [:]  // pack -> blob count
  }
  private let state = Mutex(State())

  public init() {}

  public func add(pack: PackID, blobs: [PackedBlob]) {
    state.withLock { s in
      for b in blobs where s.blobs[b.id] == nil {
        s.blobs[b.id] = IndexEntry(pack: pack, blob: b)
      }
      s.packs[pack, default: 0] += blobs.count
    }
  }

  public func add(_ file: IndexFile) {
    state.withLock { s in
      s.blobs.reserveCapacity(s.blobs.count + file.packs.reduce(0) { $0 + $1.blobs.count })
      for p in file.packs {
        for b in p.blobs where s.blobs[b.id] == nil { s.blobs[b.id] = IndexEntry(pack: p.id, blob: b) }
        s.packs[p.id, default: 0] += p.blobs.count
      }
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

  public func lookup(_ id: BlobID) -> IndexEntry? { state.withLock { $0.blobs[id] } }
  public func has(_ id: BlobID) -> Bool { state.withLock { $0.blobs[id] != nil } }
  public var blobCount: Int { state.withLock { $0.blobs.count } }
  public var packIDs: [PackID] { state.withLock { Array($0.packs.keys) } }
  public var allEntries: [IndexEntry] { state.withLock { Array($0.blobs.values) } }
}
