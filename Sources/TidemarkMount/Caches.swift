// The mount's memory: blob plaintext and parsed trees, each bounded in bytes (their shares of `--cache-size`,
// see CacheBudget), plus the loader that fills them a pack window at a time.
//
// Why windows: tools walk snapshots in the order backups wrote them (rsync, cp -r, tar, find), so the
// blobs read next sit right after the one asked for, in the same pack. Reading a few MiB of the pack
// at once and decoding every blob in it turns thousands of small reads (each a trip to a blocking
// thread and back) into a handful, and lets later requests be answered straight from memory on the
// FUSE thread. Concurrent requests for blobs of one window wait for that one load; requests for
// other blobs never wait on it.
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

/// Completion of one window load that many requests may wait for.
final class Pending: Sendable {
  private let state = Mutex<(done: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

  func wait() async {
    await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
      let resumeNow = state.withLock { s in
        if s.done { return true }
        s.waiters.append(c)
        return false
      }
      if resumeNow { c.resume() }
    }
  }

  func finish() {
    let w = state.withLock { s in
      s.done = true
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
  private let state: Mutex<State>
  let repo: Repository
  /// Bytes of pack read per load (at least the blob asked for).
  let window: Int

  init(repository: Repository, limit: Int, window: Int = 4 << 20) {
    repo = repository
    state = Mutex(State(cache: ClockCache(limit: limit)))
    self.window = window
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
    for _ in 0..<3 {
      enum Step {
        case hit([UInt8])
        case wait(Pending)
        case load(Pending)
      }
      let step: Step = state.withLock { s in
        if let v = s.cache.get(id) { return .hit(v) }
        if let p = s.loading[id] { return .wait(p) }
        let p = Pending()
        s.loading[id] = p
        return .load(p)
      }
      switch step {
      case .hit(let v): return v
      case .wait(let p): await p.wait()
      case .load(let p): await loadWindow(id, [id], p)
      }
    }
    // Not in memory after its window was loaded: damaged (the direct load reports why) or evicted at once.
    return try await repo.loadBlob(id)
  }

  /// Starts loading whichever of `ids` (the blobs a reader will want next, in order) are neither in
  /// memory nor on their way; ids that lie next to each other in one pack share one load.
  func prefetch(_ ids: some Collection<BlobID>) {
    var starts: [(ids: [BlobID], pending: Pending)] = []
    state.withLock { s in
      var group: [BlobID] = []
      var pending = Pending()
      var run: (pack: PackID, end: UInt32, start: UInt32)? = nil
      for id in ids where !s.cache.contains(id) && s.loading[id] == nil {
        guard let e = repo.index.lookup(id) else { continue }
        let end = e.blob.offset + e.blob.length
        if let r = run, r.pack == e.pack, r.end == e.blob.offset, Int(end - r.start) <= window {
          run = (e.pack, end, r.start)
        } else {
          if !group.isEmpty {
            starts.append((group, pending))
            pending = Pending()
            group = []
          }
          run = (e.pack, end, e.blob.offset)
        }
        group.append(id)
        s.loading[id] = pending
      }
      if !group.isEmpty { starts.append((group, pending)) }
    }
    for (ids, p) in starts { Task { await self.loadWindow(ids[0], ids, p) } }
  }

  /// Loads the window that starts at `first`: `claimed` (registered as loading under `pending`) and
  /// the blobs after it in the same pack, up to `window` bytes; stores every blob that decodes.
  private func loadWindow(_ first: BlobID, _ claimed: [BlobID], _ pending: Pending) async {
    var chosen: [PackedBlob] = []
    var pack: PackID? = nil
    defer {
      state.withLock { s in
        for id in claimed where s.loading[id] === pending { s.loading[id] = nil }
        for b in chosen where s.loading[b.id] === pending { s.loading[b.id] = nil }
      }
      pending.finish()
    }
    guard let e = repo.index.lookup(first) else { return }
    pack = e.pack
    chosen = claimed.compactMap { repo.index.lookup($0)?.blob }
    // Extend with the pack's following blobs (from its header) that nobody has or loads yet.
    if let header = try? await packHeader(e.pack), var end = chosen.last.map({ $0.offset + $0.length }) {
      var i = header.partitioningIndex { $0.offset >= end }
      state.withLock { s in
        while i < header.count, header[i].offset == end, header[i].type == e.blob.type,
          Int(header[i].offset + header[i].length - e.blob.offset) <= window,
          !s.cache.contains(header[i].id), s.loading[header[i].id] == nil
        {
          s.loading[header[i].id] = pending
          chosen.append(header[i])
          end += header[i].length
          i += 1
        }
      }
    }
    guard let pack, let last = chosen.last else { return }
    let start = Int(e.blob.offset)
    guard
      var sealed = try? await repo.backend.load(
        Handle(.pack, pack.hex), offset: start, length: Int(last.offset + last.length) - start)
    else { return }
    var decoded: [(BlobID, [UInt8])] = []
    decoded.reserveCapacity(chosen.count)
    sealed.withUnsafeMutableBytes { raw in
      for b in chosen {
        let from = Int(b.offset) - start
        let to = from + Int(b.length)
        guard from >= 0, to <= raw.count else { continue }
        if let plain = try? repo.decodeBlob(
          inPlace: UnsafeMutableRawBufferPointer(rebasing: raw[from..<to]), b, pack: pack)
        {
          decoded.append((b.id, plain))
        }
      }
    }
    state.withLock { s in
      // The blob asked for goes in last, so that a small cache keeps it rather than its neighbours.
      for (id, v) in decoded.reversed() { s.cache.insert(id, v, cost: v.count + 64, wanted: true) }
    }
  }

  /// The pack's blobs sorted by offset (cached for the last packs used).
  private func packHeader(_ pack: PackID) async throws -> [PackedBlob] {
    if let h = state.withLock({ $0.headers.get(pack) }) { return h }
    let h = try await repo.loadPackHeader(pack).sorted { $0.offset < $1.offset }
    state.withLock { $0.headers.insert(pack, h, cost: 1) }
    return h
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
