// Writing blobs: deduplicate against the index and against blobs already queued, compress, encrypt,
// and collect them into packs (data and tree blobs never share one). Full packs are stored as they
// fill; `finish` stores the rest and then the index that names them. Packs always land before the
// index that names them, and the index before any snapshot that needs it.
//
// Where the backend takes packs piece by piece (`Backend.makePackUpload`: the local backend), a pack is
// handed over in pieces of about 2 MiB as it fills, hashed and written on one serial queue in the order
// the pieces were cut, so a backup holds a few MiB of pack bytes rather than several whole packs. Other
// backends get each pack whole, from memory.
import Dispatch
import Synchronization
import TidemarkCrypto
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

  /// A streamed pack is handed over whenever this many of its bytes are waiting.
  static let pieceSize = 2 << 20
  /// Pieces handed over but not yet written before savers wait for them (`throttle`).
  static let piecesAhead = 2

  struct PackBuffer {
    /// The pack's bytes; when streamed, only those not yet handed to `stream`.
    var bytes: [UInt8] = []
    var blobs: [PackedBlob] = []
    /// The pack's length so far (all of `bytes`, and what `stream` was handed before).
    var length = 0
    var stream: PackStream?
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
    /// Emptied piece buffers of streamed packs, kept for reuse likewise.
    var spareHandovers: [[UInt8]] = []
    var indexFiles = Set<String>()
  }

  public let repository: Repository
  /// Taken once or twice per blob by every batch and chunk thread (see `SleepingMutex`).
  private let state = SleepingMutex(State())
  private let compressors = ZstdCompressorPool()
  /// Sealing buffers, reused so that every blob does not fault in fresh pages.
  /// Up to the largest chunk: a larger chunk's buffer, freed, would be faulted in afresh for the next one.
  private let scratch = BufferPool(keep: 2, largest: 9 << 20)
  /// Finished packs waiting to be stored hold 16 MiB each (streamed ones: their durable commit): two at a time.
  private let packWrites = AsyncSemaphore(2)
  /// Hashes and writes the pieces of streamed packs, in the order they were handed over.
  private let pieceWriter = DispatchQueue(label: "tidemark.pack-pieces")
  /// Pieces handed over and not yet written.
  private let piecesPending = Backlog()
  /// Streamed packs being finished beside their savers (`store`), at most a few at a time.
  private let commits = Mutex<[Task<Void, Error>]>([])
  private let commitSlots = AsyncSemaphore(4)
  private let commitFailure = Mutex<Error?>(nil)

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
    let saved = Result { try plaintext.withUnsafeBytes { try saveNow(type, $0, id: id, scratch: &sealed) } }
    scratch.give(consume sealed)  // moved: see `BufferPool.give`
    let (fresh, full) = try saved.get()
    if let full { try await store(full) }
    await throttle()
    return fresh
  }

  /// Waits while more than a few pieces of streamed packs are waiting to be written, so that a saver faster than
  /// the disk does not pile them up in memory. `save` does this itself; callers of `saveNow` call it after theirs.
  public func throttle() async { await piecesPending.wait(below: BlobSaver.piecesAhead + 1) }

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
      if p.blobs.isEmpty && p.stream == nil, let upload = repository.backend.makePackUpload() {
        p.stream = PackStream(upload, queue: pieceWriter)
      }
      if p.bytes.capacity == 0 {
        if p.stream != nil {
          p.bytes = s.spareHandovers.popLast() ?? BlobSaver.handoverBuffer()
        } else if let b = s.spare.popLast() {
          p.bytes = b
        } else {
          // Room for the largest blob and the header: never reallocate (untouched pages cost no memory).
          p.bytes.reserveCapacity(BlobSaver.targetPackSize + Chunker.maxSize + (2 << 20))
        }
      }
      if p.stream != nil && p.bytes.count + length > BlobSaver.pieceSize {
        // Handed over under the lock: pieces reach the writer in the order of the pack's bytes. A piece is at most
        // `pieceSize`, or one larger blob.
        handOver(&p, &s)
      }
      p.blobs.append(
        PackedBlob(id: id, type: type, offset: UInt32(p.length), length: UInt32(length), uncompressedLength: ulen))
      p.bytes += scratch[0..<length]
      p.length += length
      s.stats.blobsAdded[Int(type.rawValue)] += 1
      s.stats.bytesAdded += plaintext.count
      s.stats.bytesStored += length
      if p.stream != nil && (p.bytes.count >= BlobSaver.pieceSize || p.length >= BlobSaver.targetPackSize) {
        handOver(&p, &s)
      }
      if p.length >= BlobSaver.targetPackSize { return p }
      s.packers[type] = p
      return nil
    }
    guard full != nil else { return (true, nil) }
    return (true, FilledPack(full.take()!))
  }

  private static func handoverBuffer() -> [UInt8] {
    var b: [UInt8] = []
    // Room for a piece and the largest sealed blob after it.
    b.reserveCapacity(BlobSaver.pieceSize + Chunker.maxSize + 4096)
    return b
  }

  /// Hands `p`'s waiting bytes to its stream, and gives `p` an empty buffer for the next ones. The piece's buffer
  /// comes back to `spareHandovers` once written.
  private func handOver(_ p: inout PackBuffer, _ s: inout State) {
    guard let stream = p.stream, !p.bytes.isEmpty else { return }
    var piece = s.spareHandovers.popLast() ?? BlobSaver.handoverBuffer()
    swap(&piece, &p.bytes)
    piecesPending.add()
    stream.append(consume piece) { (written: consuming [UInt8]) in
      var empty = consume written
      empty.removeAll(keepingCapacity: true)
      // Moved into the spares under the lock: a reference left in this closure would make the saver that takes
      // it next copy it, onto fresh pages (see `BufferPool.give`).
      var moving: [UInt8]? = consume empty
      self.state.withLock { s in
        if s.spareHandovers.count < BlobSaver.piecesAhead + 1 { s.spareHandovers.append(moving.take()!) }
      }
      self.piecesPending.remove()
    }
  }

  /// Stores a pack that `saveNow` filled. A streamed pack's bytes are written already: what is left (its header, the
  /// fsync and its name) goes on beside the caller, which need not wait for the disk; `finish` waits for it.
  public func store(_ pack: FilledPack) async throws {
    guard var p = pack.take() else { return }
    guard p.stream != nil else {
      try await writePack(&p)
      return
    }
    if let failed = commitFailure.withLock({ $0 }) { throw failed }
    await commitSlots.acquire()
    let t = Task {
      defer { self.commitSlots.release() }
      do {
        try await self.writeStreamedPack(&p)
      } catch {
        self.commitFailure.withLock { if $0 == nil { $0 = error } }
        throw error
      }
    }
    commits.withLock { $0.append(t) }
  }

  /// Waits for the streamed packs `store` left to finish; throws the first failure.
  private func commitsFinished() async throws {
    while let t = commits.withLock({ $0.popLast() }) { try await t.value }
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
    if p.stream != nil {
      try await writeStreamedPack(&p)
      return
    }
    let blobs = p.blobs
    var bytes: [UInt8] = []
    swap(&bytes, &p.bytes)
    p.blobs = []
    bytes += try trailer(blobs)
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
    if bytes.capacity >= BlobSaver.targetPackSize {
      // Moved, not copied, into the spares (see `BufferPool.give`).
      var moving: [UInt8]? = []
      swap(&moving!, &bytes)
      state.withLock { s in if s.spare.count < 3 { s.spare.append(moving.take()!) } }
    }
    try await stored(packID, blobs)
  }

  /// Hands over what is left of a streamed pack, then its header, and publishes it under its hash.
  private func writeStreamedPack(_ p: inout PackBuffer) async throws {
    guard let stream = p.stream else { return }
    let blobs = p.blobs
    if !p.bytes.isEmpty {
      // `p` is out of `packers`: nothing else hands over pieces of this pack, so the order holds.
      state.withLock { s in handOver(&p, &s) }
    }
    p.blobs = []
    p.stream = nil
    p.length = 0
    if p.bytes.capacity > 0 {
      var rest: [UInt8] = []
      swap(&rest, &p.bytes)
      rest.removeAll(keepingCapacity: true)
      var moving: [UInt8]? = consume rest
      state.withLock { s in
        if s.spareHandovers.count < BlobSaver.piecesAhead + 1 { s.spareHandovers.append(moving.take()!) }
      }
    }
    let packID: PackID
    do {
      packID = try await stream.close(trailer: try trailer(blobs))
      await packWrites.acquire()
      do {
        try await repository.writeGate.pass()
        try await stream.upload.commit(as: Handle(.pack, packID.hex))
        packWrites.release()
      } catch {
        packWrites.release()
        throw error
      }
    } catch {
      await stream.upload.discard()
      throw error
    }
    try await stored(packID, blobs)
  }

  /// What ends a pack: its sealed header and the header's length (4 bytes, little-endian).
  private func trailer(_ blobs: [PackedBlob]) throws -> [UInt8] {
    var t = try repository.key.seal(PackHeader.encode(blobs))
    let n = UInt32(t.count)
    for s in [0, 8, 16, 24] as [UInt32] { t.append(UInt8(truncatingIfNeeded: n >> s)) }
    return t
  }

  /// Records a pack that is stored, and writes an index file when enough packs wait for one.
  private func stored(_ packID: PackID, _ blobs: [PackedBlob]) async throws {
    let indexNow: IndexFile? = state.withLock { s in
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
    try await commitsFinished()
    let f = state.withLock { s in
      let f = s.unindexed
      s.unindexed = IndexFile()
      s.unindexedBlobs = 0
      return f
    }
    if !f.packs.isEmpty { try await writeIndex(f) }
  }
}

/// A pack being handed to a `PackUpload` in pieces: each piece is hashed and appended on `queue` (serial, off the
/// cooperative pool) in the order `append` was called, which `BlobSaver` keeps by calling it under its lock. The
/// first failure sticks: later pieces are dropped and `close` reports it.
final class PackStream: @unchecked Sendable {
  let upload: any PackUpload
  private let queue: DispatchQueue
  // Touched only on `queue`.
  private let hasher = SHA256.Hasher()
  private var failure: Error?

  init(_ upload: any PackUpload, queue: DispatchQueue) {
    self.upload = upload
    self.queue = queue
  }

  /// Hashes and appends `piece` after the pieces handed over before; then gives it back to `done` (on `queue`),
  /// as the only reference to its storage, so that emptying it for reuse keeps that storage (a second
  /// reference would make `removeAll(keepingCapacity:)` allocate, and fault in, a fresh buffer for every piece).
  func append(_ piece: consuming [UInt8], done: @escaping @Sendable (consuming [UInt8]) -> Void) {
    let box = Mutex<[UInt8]?>(piece)
    queue.async {
      var bytes = box.withLock { $0.take() } ?? []
      self.write(bytes)
      done(consume bytes)
      bytes = []
    }
  }

  /// After every piece handed over: appends `trailer` (the pack's header and its length) and returns the pack's
  /// ID, the SHA-256 of all its bytes.
  func close(trailer: [UInt8]) async throws -> PackID {
    try await withCheckedThrowingContinuation { (c: CheckedContinuation<PackID, Error>) in
      queue.async {
        self.write(trailer)
        if let f = self.failure {
          c.resume(throwing: f)
        } else {
          c.resume(returning: PackID(RawID(bytes: self.hasher.finalize())))
        }
      }
    }
  }

  private func write(_ bytes: [UInt8]) {
    guard failure == nil else { return }
    bytes.withUnsafeBytes { b in
      hasher.update(b)
      do { try upload.append(b) } catch { failure = error }
    }
  }
}

/// A count of work handed over and not yet done, and tasks waiting for it to fall.
final class Backlog: Sendable {
  private struct State {
    var count = 0
    var waiters: [(limit: Int, c: CheckedContinuation<Void, Never>)] = []
  }
  private let state = Mutex(State())

  func add() { state.withLock { $0.count += 1 } }

  func remove() {
    let ready = state.withLock { s -> [CheckedContinuation<Void, Never>] in
      s.count -= 1
      let n = s.count
      let ready = s.waiters.filter { n < $0.limit }.map(\.c)
      s.waiters.removeAll { n < $0.limit }
      return ready
    }
    for c in ready { c.resume() }
  }

  /// Returns once fewer than `limit` are pending.
  func wait(below limit: Int) async {
    if state.withLock({ $0.count < limit }) { return }
    await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
      let now = state.withLock { s -> Bool in
        if s.count < limit { return true }
        s.waiters.append((limit, c))
        return false
      }
      if now { c.resume() }
    }
  }
}
