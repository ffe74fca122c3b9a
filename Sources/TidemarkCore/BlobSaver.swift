// Writing blobs: deduplicate against the index and against blobs already queued, compress, encrypt,
// and collect them into packs (data and tree blobs never share one). Full packs are stored as they
// fill; `finish` stores the rest and then the index that names them. Packs always land before the
// index that names them, and the index before any snapshot that needs it.
import Synchronization
import TidemarkZstd

public struct BlobSaverStats: Sendable {
  public var blobsAdded = [0, 0]  // by BlobType.rawValue
  public var bytesAdded = 0  // plaintext bytes of new blobs
  public var bytesStored = 0  // stored (compressed + sealed) bytes of new blobs
  public var packsWritten = 0
}

public final class BlobSaver: Sendable {
  public static let targetPackSize = 16 << 20
  /// Write an index file after this many packs so an interrupted run leaves reusable packs.
  static let packsPerIndex = 64

  struct PackBuffer {
    var bytes: [UInt8] = []
    var blobs: [PackedBlob] = []
  }

  /// A pack that filled in `saveNow`, to be stored with `store`. A class that gives its buffer up once:
  /// however many references to it remain, `store` then holds the only reference to the 16 MiB of bytes
  /// and appends the header in place instead of copying them.
  public final class FilledPack: Sendable {
    private let buffer: Mutex<PackBuffer?>
    init(_ p: consuming PackBuffer) { buffer = Mutex(Optional(p)) }
    func take() -> PackBuffer? { buffer.withLock { $0.take() } }
  }

  private struct State {
    var pending = Set<BlobID>()
    var packers: [BlobType: PackBuffer] = [:]
    var unindexed = IndexFile()
    var unindexedBlobs = 0
    var stats = BlobSaverStats()
    /// Emptied pack buffers, kept for reuse: freeing 16 MiB buffers makes glibc raise its mmap
    /// threshold and then fragment its heap, which costs far more memory than keeping a few.
    var spare: [[UInt8]] = []
    var indexFiles = Set<String>()
  }

  public let repository: Repository
  private let state = Mutex(State())
  private let compressors = ZstdCompressorPool()
  /// Sealing buffers, reused so that every blob does not fault in fresh pages.
  private let scratch = BufferPool(keep: 2, largest: 2 << 20)
  /// Finished packs waiting to be stored hold 16 MiB each: store at most two at a time.
  private let packWrites = AsyncSemaphore(2)

  /// With `deduplicateAgainstIndex: false` (prune's repacking), blobs the index already names are stored
  /// again: their old packs are about to go.
  let deduplicateAgainstIndex: Bool

  public init(repository: Repository, deduplicateAgainstIndex: Bool = true) {
    self.repository = repository
    self.deduplicateAgainstIndex = deduplicateAgainstIndex
  }

  public var stats: BlobSaverStats { state.withLock { $0.stats } }
  /// Names of the index files written so far.
  public var indexFilesWritten: Set<String> { state.withLock { $0.indexFiles } }

  /// Stores a blob unless the repository already has it. Returns true when it was new.
  @discardableResult
  public func save(_ type: BlobType, _ plaintext: [UInt8], id knownID: BlobID? = nil) async throws -> Bool {
    let id = knownID ?? BlobID(RawID.hash(plaintext))
    var sealed = scratch.take()
    defer { scratch.give(sealed) }
    let (fresh, full) = try plaintext.withUnsafeBytes { try saveNow(type, $0, id: id, scratch: &sealed) }
    if let full { try await store(full) }
    return fresh
  }

  /// The synchronous half of `save`, for callers that do their CPU work on a thread of their own (the
  /// backup's small-file batches): deduplicates, compresses and seals the blob in `scratch` (reused from
  /// call to call, so a batch allocates once) and appends it to its pack. Returns whether the blob was new,
  /// and a pack that filled, which the caller must hand to `store` before it ends.
  public func saveNow(_ type: BlobType, _ plaintext: UnsafeRawBufferPointer, id: BlobID, scratch: inout [UInt8])
    throws -> (Bool, FilledPack?)
  {
    if deduplicateAgainstIndex && repository.index.has(id) { return (false, nil) }
    let fresh = state.withLock { $0.pending.insert(id).inserted }
    guard fresh else { return (false, nil) }
    let (length, ulen) = try encode(type, plaintext, into: &scratch)
    var full: PackBuffer? = state.withLock { s in
      // Take the buffer out of the dictionary so the append below happens in place (no copy-on-write).
      var p = s.packers.removeValue(forKey: type) ?? PackBuffer()
      if p.bytes.capacity == 0 {
        if let b = s.spare.popLast() {
          p.bytes = b
        } else {
          // Room for the largest blob and the header: never reallocate (untouched pages cost no memory).
          p.bytes.reserveCapacity(BlobSaver.targetPackSize + Chunker.maxSize + (2 << 20))
        }
      }
      p.blobs.append(
        PackedBlob(
          id: id, type: type, offset: UInt32(p.bytes.count), length: UInt32(length), uncompressedLength: ulen))
      p.bytes += scratch[0..<length]
      s.stats.blobsAdded[Int(type.rawValue)] += 1
      s.stats.bytesAdded += plaintext.count
      s.stats.bytesStored += length
      if p.bytes.count >= BlobSaver.targetPackSize { return p }
      s.packers[type] = p
      return nil
    }
    guard full != nil else { return (true, nil) }
    return (true, FilledPack(full.take()!))
  }

  /// Stores a pack that `saveNow` filled.
  public func store(_ pack: FilledPack) async throws {
    guard var p = pack.take() else { return }
    try await writePack(&p)
  }

  /// Compresses (when worth it) and seals a blob into the first bytes of `out`: zstd writes at offset
  /// 16, the cipher runs in place, the MAC goes behind. A blob that does not compress is copied into
  /// the same array (no second allocation). Returns the sealed length and the uncompressed length
  /// (0: stored uncompressed).
  private func encode(_ type: BlobType, _ plaintext: UnsafeRawBufferPointer, into out: inout [UInt8]) throws -> (
    Int, UInt32
  ) {
    let comp = repository.compression
    let n = plaintext.count
    if comp != .off && n > 0 {
      let zlen = try compressors.compress(plaintext, level: comp.level(forSize: n), into: &out, at: 16, tailroom: 16)
      if zlen < n || type == .tree {
        try out.withUnsafeMutableBytes {
          try repository.key.sealInPlace(region: UnsafeMutableRawBufferPointer(rebasing: $0[0..<(zlen + 32)]))
        }
        return (zlen + 32, UInt32(n))
      }
    }
    out.growCount(to: n + 32)
    try out.withUnsafeMutableBytes { o in
      UnsafeMutableRawBufferPointer(rebasing: o[16..<(16 + n)]).copyMemory(from: plaintext)
      try repository.key.sealInPlace(region: UnsafeMutableRawBufferPointer(rebasing: o[0..<(n + 32)]))
    }
    return (n + 32, 0)
  }

  /// Takes the buffer out of `p` (leaving it empty) so that this is the only reference to its bytes: appending
  /// the header to a shared pack would copy all 16 MiB of it.
  private func writePack(_ p: inout PackBuffer) async throws {
    let blobs = p.blobs
    var bytes: [UInt8] = []
    swap(&bytes, &p.bytes)
    p.blobs = []
    let header = try repository.key.seal(PackHeader.encode(blobs))
    bytes += header
    let n = UInt32(header.count)
    for s in [0, 8, 16, 24] as [UInt32] { bytes.append(UInt8(truncatingIfNeeded: n >> s)) }
    let packID = PackID(RawID.hash(bytes))
    await packWrites.acquire()
    do {
      try await repository.writeGate.pass()
      try await repository.backend.save(Handle(.pack, packID.hex), data: bytes)
      packWrites.release()
    } catch {
      packWrites.release()
      throw error
    }
    bytes.removeAll(keepingCapacity: true)
    let indexNow: IndexFile? = state.withLock { s in
      if s.spare.count < 3 && bytes.capacity >= BlobSaver.targetPackSize { s.spare.append(bytes) }
      s.unindexed.packs.append((packID, blobs))
      s.unindexedBlobs += blobs.count
      s.stats.packsWritten += 1
      // Packs of small blobs also end an index file at restic's blob limit: a smaller file is cheaper to
      // load, and the blobs pending for it are not held as long.
      if s.unindexed.packs.count >= BlobSaver.packsPerIndex || s.unindexedBlobs >= IndexFile.maxBlobs {
        let f = s.unindexed
        s.unindexed = IndexFile()
        s.unindexedBlobs = 0
        return f
      }
      return nil
    }
    if let indexNow { try await writeIndex(indexNow) }
  }

  private func writeIndex(_ f: IndexFile) async throws {
    let name = try await repository.saveUnpacked(.index, json: f.encode()).hex
    state.withLock { _ = $0.indexFiles.insert(name) }
    for p in f.packs { repository.index.add(pack: p.id, blobs: p.blobs) }
    state.withLock { s in for p in f.packs { for b in p.blobs { s.pending.remove(b.id) } } }
  }

  /// Stores partly filled packs, then the index for everything stored. Call once, after the last `save`.
  public func finish() async throws {
    var rest = state.withLock { s in
      let r = Array(s.packers.values)
      s.packers = [:]
      return r
    }
    for i in rest.indices where !rest[i].blobs.isEmpty { try await writePack(&rest[i]) }
    let f = state.withLock { s in
      let f = s.unindexed
      s.unindexed = IndexFile()
      s.unindexedBlobs = 0
      return f
    }
    if !f.packs.isEmpty { try await writeIndex(f) }
  }
}
