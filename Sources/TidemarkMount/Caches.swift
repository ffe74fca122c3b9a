// The mount's memory: blob plaintext and parsed trees, each bounded in bytes (their shares of `--cache-size`,
// see CacheBudget), plus the loader that fills them a pack window at a time.
//
// Why windows: tools walk snapshots in the order backups wrote them (rsync, cp -r, tar, find), so the
// blobs read next sit right after the one asked for, in the same pack. Reading a few MiB of the pack
// at once and decoding every blob in it turns thousands of small reads (each a trip to a blocking
// thread and back) into a handful, and lets later requests be answered straight from memory on the
// FUSE thread. The window is read at once, but its blobs are decrypted, decompressed and verified by
// the mount's workers (Workers.swift), a job of one large blob or a run of small ones at a time, on
// every core: a request waits for the job that holds its blob, not for the whole window, and a large
// file's read-ahead is decoded in parallel. Requests for other blobs never wait on it.
import Synchronization
import TidemarkCore

/// A CLOCK cache (second-chance FIFO): O(1) hits and amortised O(1) eviction, unlike a scan for the
/// least recently used entry, which does not scale to tens of thousands of small blobs.
struct ClockCache<Key: Hashable, Value> {
  private var entries: [Key: (value: Value, cost: Int, referenced: Bool)] = [:]
  private var queue: [Key] = []
  private var head = 0
  private(set) var cost = 0
  let limit: Int

  init(limit: Int) { self.limit = limit }

  var count: Int { entries.count }

  mutating func get(_ id: Key) -> Value? {
    guard let e = entries[id] else { return nil }
    if !e.referenced { entries[id]!.referenced = true }
    return e.value
  }

  func contains(_ id: Key) -> Bool { entries[id] != nil }

  /// Forgets `id` (its place in the queue is skipped when the hand reaches it).
  mutating func remove(_ id: Key) {
    if let e = entries.removeValue(forKey: id) { cost -= e.cost }
  }

  /// Inserts `value`, then evicts until under the limit (the newest entry always stays). `wanted`: the entry
  /// is about to be used (blobs fetched ahead of a reader), so it starts with its second chance, as if it had
  /// been read: otherwise a sweep evicts blobs nobody has read yet before the ones a reader has finished with.
  mutating func insert(_ id: Key, _ value: Value, cost c: Int, wanted: Bool = false) {
    if let old = entries[id] {
      cost -= old.cost
    } else {
      queue.append(id)
    }
    entries[id] = (value, c, wanted)
    cost += c
    while cost > limit && entries.count > 1 { evictOne(keeping: id) }
  }

  private mutating func evictOne(keeping keep: Key) {
    while head < queue.count {
      let id = queue[head]
      head += 1
      if head >= 4096 && head * 2 >= queue.count {
        queue.removeFirst(head)
        head = 0
      }
      guard let e = entries[id] else { continue }
      if e.referenced || id == keep {
        entries[id]!.referenced = false
        queue.append(id)
        continue
      }
      cost -= e.cost
      entries[id] = nil
      return
    }
  }
}

/// Completion of one decode job (a few neighbouring blobs of a pack) that many requests may wait for. It carries
/// the blobs it decoded, so a waiter gets its blob even when the cache has let it go again in the meantime.
final class Pending: Sendable {
  private let state = Mutex<(done: Bool, blobs: [(BlobID, [UInt8])], waiters: [CheckedContinuation<Void, Never>])>(
    (false, [], []))

  /// Waits until the job is done; then `id`'s plaintext, or nil when it did not load or decode.
  func wait(for id: BlobID) async -> [UInt8]? {
    await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
      let resumeNow = state.withLock { s in
        if s.done { return true }
        s.waiters.append(c)
        return false
      }
      if resumeNow { c.resume() }
    }
    return state.withLock { s in s.blobs.first { $0.0 == id }?.1 }
  }

  func finish(_ blobs: [(BlobID, [UInt8])]) {
    let w = state.withLock { s in
      s.done = true
      s.blobs = blobs
      defer { s.waiters = [] }
      return s.waiters
    }
    for c in w { c.resume() }
  }
}

final class BlobStore: Sendable {
  private struct State {
    var cache: ClockCache<BlobID, [UInt8]>
    var loading: [BlobID: Pending] = [:]
    var headers = ClockCache<PackID, [PackedBlob]>(limit: 64)
  }
  /// A blob on its way, with the job that decodes it.
  private typealias Claim = (blob: PackedBlob, pending: Pending)
  private let state: Mutex<State>
  let repo: Repository
  /// Bytes of pack read per load (at least the blob asked for).
  let window: Int
  /// Bytes of plaintext the cache holds at most.
  let limit: Int
  /// Where blobs are decoded: on every core at once, off the cooperative pool.
  let workers: Workers
  /// Stored bytes per decode job, about: a job is one large blob or a run of small ones, so that a window's
  /// blobs are decoded in parallel without a hand-off for every small file.
  static let jobBytes = 256 << 10

  init(repository: Repository, limit: Int, window: Int = 4 << 20, workers: Workers = Workers()) {
    repo = repository
    state = Mutex(State(cache: ClockCache(limit: limit)))
    self.window = window
    self.limit = limit
    self.workers = workers
  }

  /// The blob's plaintext if it is in memory (never waits).
  func cached(_ id: BlobID) -> [UInt8]? { state.withLock { $0.cache.get(id) } }

  /// Drops blobs a sequential reader has read to their end: the kernel keeps the pages it was given
  /// (keep_cache), so holding them here too only grows the heap, and fresh heap costs a page fault per
  /// 4 KiB (a tenth of the CPU time of a cold large read). Their memory goes to the blobs read next.
  func release(_ ids: some Sequence<BlobID>) {
    state.withLock { s in
      for id in ids { s.cache.remove(id) }
    }
  }

  func get(_ id: BlobID) async throws -> [UInt8] {
    for _ in 0..<2 {
      enum Step {
        case hit([UInt8])
        case wait(Pending)
        case load(PackID, PackedBlob, Pending)
      }
      let step: Step? = state.withLock { s in
        if let v = s.cache.get(id) { return .hit(v) }
        if let p = s.loading[id] { return .wait(p) }
        guard let e = repo.index.lookup(id) else { return nil }
        let p = Pending()
        s.loading[id] = p
        return .load(e.pack, e.blob, p)
      }
      guard let step else { break }
      switch step {
      case .hit(let v): return v
      case .wait(let p):
        if let v = await p.wait(for: id) { return v }
      case .load(let pack, let b, let p):
        await loadWindow(pack, [(b, p)])
        if let v = await p.wait(for: id) { return v }
      }
    }
    // Not in the index, or its load or decode failed: the direct load reports why.
    return try await repo.loadBlob(id)
  }

  /// Starts loading whichever of `ids` (the blobs a reader will want next, in order) are neither in
  /// memory nor on their way; ids that lie next to each other in one pack share one load. `extend`: each
  /// load also takes the pack's blobs after them, up to a window (see `loadWindow`); off when `ids` are a
  /// file's next blobs and the file goes on after them, since those neighbours may be another file's
  /// (backups write files concurrently into the same packs) and would be decoded for nothing.
  func prefetch(_ ids: some Collection<BlobID>, extend: Bool = true) {
    var starts: [(pack: PackID, claims: [Claim])] = []
    state.withLock { s in
      var group: [Claim] = []
      var jobs = JobCutter()
      var run: (pack: PackID, end: UInt32, start: UInt32)? = nil
      for id in ids where !s.cache.contains(id) && s.loading[id] == nil {
        guard let e = repo.index.lookup(id) else { continue }
        let end = e.blob.offset + e.blob.length
        if let r = run, r.pack == e.pack, r.end == e.blob.offset, Int(end - r.start) <= window {
          run = (e.pack, end, r.start)
        } else {
          if let r = run, !group.isEmpty {
            starts.append((r.pack, group))
            group = []
            jobs = JobCutter()
          }
          run = (e.pack, end, e.blob.offset)
        }
        let p = jobs.pending(for: e.blob)
        group.append((e.blob, p))
        s.loading[id] = p
      }
      if let r = run, !group.isEmpty { starts.append((r.pack, group)) }
    }
    for (pack, claims) in starts { Task { await self.loadWindow(pack, claims, extend: extend) } }
  }

  /// Loads the window of `pack` that starts at the first of `claimed` (blobs next to each other, registered as
  /// loading under their jobs' Pendings), if `extend`, extended by the blobs after them in the pack, up to
  /// `window` bytes; then hands the blobs to the workers, a job at a time in pack order, and returns without
  /// waiting for them. Each job stores the blobs that decode and finishes its Pending.
  private func loadWindow(_ pack: PackID, _ claimed: [Claim], extend: Bool = true) async {
    guard let first = claimed.first?.blob, let last = claimed.last?.blob else { return }
    var chosen = claimed
    // Extend with the pack's following blobs (from its header) that nobody has or loads yet.
    if extend, let header = try? await packHeader(pack) {
      var end = last.offset + last.length
      var i = header.partitioningIndex { $0.offset >= end }
      var jobs = JobCutter()
      state.withLock { s in
        while i < header.count, header[i].offset == end, header[i].type == first.type,
          Int(header[i].offset + header[i].length - first.offset) <= window,
          !s.cache.contains(header[i].id), s.loading[header[i].id] == nil
        {
          let p = jobs.pending(for: header[i])
          s.loading[header[i].id] = p
          chosen.append((header[i], p))
          end += header[i].length
          i += 1
        }
      }
    }
    let start = Int(first.offset)
    let length = Int(chosen.last!.blob.offset + chosen.last!.blob.length) - start
    guard let sealed = try? await repo.backend.loadBytes(Handle(.pack, pack.hex), offset: start, length: length)
    else {
      var k = 0
      while k < chosen.count {
        let j = nextJob(chosen, k)
        done(chosen[k..<j].map(\.blob), [], chosen[k].pending)
        k = j
      }
      return
    }
    var k = 0
    while k < chosen.count {
      let j = nextJob(chosen, k)
      let blobs = chosen[k..<j].map(\.blob)
      let p = chosen[k].pending
      workers.submit { self.decode(blobs, sealed, start, pack, p) }
      k = j
    }
  }

  /// The end of the job that starts at `k` (its blobs share one Pending).
  private func nextJob(_ chosen: [Claim], _ k: Int) -> Int {
    var j = k + 1
    while j < chosen.count && chosen[j].pending === chosen[k].pending { j += 1 }
    return j
  }

  /// Decodes `blobs` out of `sealed` (the pack's bytes from offset `start`), on a worker thread. The sealed
  /// bytes are shared by the window's jobs and only read: each job decrypts into the plaintext it returns.
  private func decode(_ blobs: [PackedBlob], _ sealed: LoadedBytes, _ start: Int, _ pack: PackID, _ p: Pending) {
    var decoded: [(BlobID, [UInt8])] = []
    decoded.reserveCapacity(blobs.count)
    sealed.withUnsafeBytes { raw in
      for b in blobs {
        let from = Int(b.offset) - start
        let to = from + Int(b.length)
        guard from >= 0, to <= raw.count else { continue }
        if let plain = try? repo.decodeBlob(UnsafeRawBufferPointer(rebasing: raw[from..<to]), b, pack: pack) {
          decoded.append((b.id, plain))
        }
      }
    }
    done(blobs, decoded, p)
  }

  /// Stores what a job decoded and lets its waiters go.
  private func done(_ blobs: [PackedBlob], _ decoded: [(BlobID, [UInt8])], _ p: Pending) {
    state.withLock { s in
      for (id, v) in decoded { s.cache.insert(id, v, cost: v.count + 64, wanted: true) }
      for b in blobs where s.loading[b.id] === p { s.loading[b.id] = nil }
    }
    p.finish(decoded)
  }

  /// The pack's blobs sorted by offset (cached for the last packs used).
  private func packHeader(_ pack: PackID) async throws -> [PackedBlob] {
    if let h = state.withLock({ $0.headers.get(pack) }) { return h }
    let h = try await repo.loadPackHeader(pack).sorted { $0.offset < $1.offset }
    state.withLock { $0.headers.insert(pack, h, cost: 1) }
    return h
  }
}

/// Cuts a run of neighbouring blobs into decode jobs of about `BlobStore.jobBytes` stored bytes: a large blob is a
/// job of its own, small ones share one.
private struct JobCutter {
  private var current = Pending()
  private var bytes = 0

  /// The job (its Pending) that `b`, the next blob of the run, belongs to.
  mutating func pending(for b: PackedBlob) -> Pending {
    if bytes >= BlobStore.jobBytes {
      current = Pending()
      bytes = 0
    }
    bytes += Int(b.length)
    return current
  }
}

/// Parsed trees, bounded by their estimated size in memory (`cost`); raw tree blobs come through the BlobStore
/// (so a directory walk loads the tree pack a window at a time) and leave it once parsed.
final class TreeCache: Sendable {
  private let cache: Mutex<ClockCache<BlobID, Tree>>
  let blobs: BlobStore
  /// Trees being loaded ahead of a directory walk (each once).
  private let ahead = Mutex<Set<BlobID>>([])
  /// Subdirectories of one listing loaded ahead, at most.
  static let aheadLimit = 64

  init(blobs: BlobStore, byteLimit: Int) {
    self.blobs = blobs
    cache = Mutex(ClockCache(limit: byteLimit))
  }

  /// Trees parsed so far (each parse follows a load of the tree's blob).
  private let parses = Atomic<Int>(0)

  /// Bytes the cache holds (as estimated by `cost`) and trees, and the trees parsed so far.
  var usage: (bytes: Int, trees: Int, parsed: Int) {
    let (b, t) = cache.withLock { ($0.cost, $0.count) }
    return (b, t, parses.load(ordering: .relaxed))
  }

  /// What a parsed tree occupies, estimated: its nodes and the heap storage each one points to (name,
  /// content list, owner names past Swift's 15-byte inline strings, link target, extended attributes), with
  /// 32 bytes of allocation overhead for each of those.
  static func cost(_ t: Tree) -> Int {
    var c = 64 + t.nodes.count * MemoryLayout<Node>.stride
    for n in t.nodes {
      c += 32 + n.name.count
      if let content = n.content { c += 32 + content.count * MemoryLayout<BlobID>.stride }
      if n.user.utf8.count > 15 { c += 32 + n.user.utf8.count }
      if n.group.utf8.count > 15 { c += 32 + n.group.utf8.count }
      if !n.linkTarget.isEmpty { c += 32 + n.linkTarget.count }
      if !n.xattrs.isEmpty {
        c += 32 + n.xattrs.count * MemoryLayout<ExtendedAttribute>.stride
        for x in n.xattrs { c += 64 + x.name.count + x.value.count }
      }
    }
    return c
  }

  /// The tree if it is parsed or its blob is in memory (parses it then; never waits).
  func cached(_ id: BlobID) throws -> Tree? {
    if let t = cache.withLock({ $0.get(id) }) { return t }
    guard let raw = blobs.cached(id) else { return nil }
    return try parse(id, raw)
  }

  /// Loads and parses the trees of `dirs` (the subdirectories of a directory just listed) on the
  /// cooperative pool while the walker (find, rsync, ls -R) takes in the listing: when it opens them,
  /// they are answered at once on the FUSE thread instead of from a Task. Load errors are left for the
  /// walker's own request to report.
  func prefetch(_ dirs: some Sequence<BlobID>) {
    var todo: [BlobID] = []
    for id in dirs {
      if todo.count >= Self.aheadLimit { break }
      if cache.withLock({ $0.contains(id) }) { continue }
      todo.append(id)
    }
    todo = ahead.withLock { a in todo.filter { a.insert($0).inserted } }
    guard !todo.isEmpty else { return }
    Task {
      for id in todo {
        _ = try? await self.get(id)
        _ = ahead.withLock { $0.remove(id) }
      }
    }
  }

  func get(_ id: BlobID) async throws -> Tree {
    if let t = try cached(id) { return t }
    return try parse(id, try await blobs.get(id))
  }

  private func parse(_ id: BlobID, _ raw: [UInt8]) throws -> Tree {
    let t: Tree
    do {
      t = try Tree(json: raw)
    } catch {
      throw TidemarkError.corrupt("tree \(id.short) is not valid: \(error)")
    }
    parses.add(1, ordering: .relaxed)
    cache.withLock { $0.insert(id, t, cost: TreeCache.cost(t)) }
    // The parsed tree is what is used from now on: the blob store's room goes to blobs not parsed yet.
    blobs.release(CollectionOfOne(id))
    return t
  }
}
