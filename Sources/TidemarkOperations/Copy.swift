// Copying snapshots between repositories with different keys, with restic 0.14's `copy` semantics: a snapshot
// the destination already holds a copy of (same `original`, similar fields) is skipped; otherwise every tree
// and data blob the destination lacks is read from the source (decrypted and verified), stored through a
// `BlobSaver` (compressed and encrypted for the destination), and only after its packs and index are written
// is the snapshot saved, with `original` naming the source snapshot. Publish order packs -> index -> snapshot
// keeps the destination consistent if the copy is interrupted at any point.
// Concurrency: trees load 8 at a time, source packs 4 at a time; events are delivered one at a time.
// Never prints and never writes to the source; `run` takes no locks (the caller holds them, e.g. by `withLocks`).
import Synchronization
import TidemarkCore

public enum Copy {
  public enum Event: Sendable {
    /// A source snapshot is being considered.
    case snapshot(Snapshot)
    /// It is already in the destination, as `copy`.
    case skipped(Snapshot, copy: Snapshot)
    /// Its blobs are being copied.
    case copying(Snapshot)
    /// Its copy was saved.
    case saved(Snapshot, as: SnapshotID)
  }

  public struct Stats: Sendable {
    public var copied: [(source: SnapshotID, copy: SnapshotID)] = []
    public var skipped: [(source: SnapshotID, copy: SnapshotID)] = []
    public var treeBlobs = 0
    public var dataBlobs = 0
    /// Plaintext bytes of the blobs added to the destination.
    public var bytesAdded = 0
    /// Stored (compressed, encrypted) bytes of the blobs added.
    public var bytesStored = 0
    public var packsWritten = 0
    public init() {}
  }

  /// restic's `similarSnapshots`: everything except `parent` and `original` matches (paths and tags as sets,
  /// excludes in order).
  public static func similar(_ a: Snapshot, _ b: Snapshot) -> Bool {
    a.time == b.time && a.tree == b.tree && a.hostname == b.hostname && a.username == b.username
      && a.uid == b.uid && a.gid == b.gid && a.paths.count == b.paths.count && a.tags.count == b.tags.count
      && a.excludes == b.excludes && a.hasPaths(b.paths) && a.hasTags(b.tags)
  }

  /// The ID that stays with a snapshot across copies: its `original`, or its own ID.
  public static func persistentID(_ s: Snapshot) -> SnapshotID? { s.original ?? s.id }

  /// Destination snapshots by the persistent IDs they answer to: their `original`, and their own ID (a
  /// snapshot copied verbatim keeps its ID).
  static func byOriginal(_ snapshots: [Snapshot]) -> [SnapshotID: [Snapshot]] {
    var out: [SnapshotID: [Snapshot]] = [:]
    for s in snapshots {
      if let o = s.original { out[o, default: []].append(s) }
      if let id = s.id, id != s.original { out[id, default: []].append(s) }
    }
    return out
  }

  /// The destination snapshot that is already a copy of `s`, if any.
  public static func existingCopy(of s: Snapshot, in destination: [Snapshot]) -> Snapshot? {
    guard let key = persistentID(s) else { return nil }
    return byOriginal(destination)[key]?.first { similar($0, s) }
  }

  /// Copies `snapshots` (of `source`) into `destination`, in the order given, skipping those that
  /// `destinationSnapshots` already holds a copy of. Both repositories' indexes must be loaded.
  public static func run(
    from source: Repository, to destination: Repository, snapshots: [Snapshot], destinationSnapshots: [Snapshot],
    event: (Event) -> Void = { _ in }
  ) async throws -> Stats {
    var stats = Stats()
    var copies = byOriginal(destinationSnapshots)
    // Trees walked for an earlier snapshot of this run: their blobs are in the destination by now.
    var visited = Set<BlobID>()
    for s in snapshots {
      guard let sid = s.id else { continue }
      event(.snapshot(s))
      let key = persistentID(s) ?? sid
      if let copy = copies[key]?.first(where: { similar($0, s) }), let cid = copy.id {
        event(.skipped(s, copy: copy))
        stats.skipped.append((sid, cid))
        continue
      }
      event(.copying(s))
      let saver = BlobSaver(repository: destination)
      do {
        visited = try await copyBlobs(from: source, to: saver, root: s.tree, visited: visited)
      } catch {
        // Index what was stored, so the next run does not send it again; the snapshot is not saved.
        try? await saver.finish()
        throw error
      }
      try await saver.finish()
      let added = saver.stats
      stats.treeBlobs += added.blobsAdded[Int(BlobType.tree.rawValue)]
      stats.dataBlobs += added.blobsAdded[Int(BlobType.data.rawValue)]
      stats.bytesAdded += added.bytesAdded
      stats.bytesStored += added.bytesStored
      stats.packsWritten += added.packsWritten

      var copy = s
      copy.id = nil
      copy.parent = nil  // names a snapshot of the source repository
      copy.original = key
      let newID = try await destination.saveSnapshot(copy)
      copy.id = newID
      // A second source snapshot with the same persistent ID and fields (a copy of a copy) is not copied twice.
      copies[key, default: []].append(copy)
      stats.copied.append((sid, newID))
      event(.saved(s, as: newID))
    }
    return stats
  }

  /// Stores in `saver` every tree and data blob reachable from `root` that the destination lacks, walking only
  /// trees not in `visited`; returns `visited` with the trees walked added.
  static func copyBlobs(from source: Repository, to saver: BlobSaver, root: BlobID, visited: Set<BlobID>)
    async throws -> Set<BlobID>
  {
    let destination = saver.repository
    let wanted = Mutex(Set<BlobID>())
    let seen = try await walkTreeBlobs(source, roots: [root], seen: visited) { id, tree, raw in
      // The stored bytes, not a re-encoding: the tree keeps its ID whatever the encoder does.
      if !destination.index.has(id) { try await saver.save(.tree, raw, id: id) }
      var missing: [BlobID] = []
      for n in tree.nodes {
        for b in n.content ?? [] where !destination.index.has(b) { missing.append(b) }
      }
      if !missing.isEmpty { wanted.withLock { $0.formUnion(missing) } }
    }
    // Group by source pack so each pack is read in a few ranged reads.
    var byPack: [PackID: [PackedBlob]] = [:]
    for id in wanted.withLock({ $0 }) {
      guard let e = source.index.lookup(id) else {
        throw TidemarkError.corrupt(
          "data blob \(id.short) is not in the source repository's index; nothing of this snapshot was saved",
          hint: "run `tidemark check` on the source repository")
      }
      byPack[e.pack, default: []].append(e.blob)
    }
    let packs = byPack.map { (pack: $0.key, blobs: $0.value) }.sorted { $0.pack.hex < $1.pack.hex }
    try await forEachConcurrently(packs, limit: 4) { pack, blobs in
      for span in spans(blobs) {
        try Task.checkCancellation()
        var data = try await source.backend.load(Handle(.pack, pack.hex), offset: span.offset, length: span.length)
        guard data.count == span.length else {
          throw TidemarkError.corrupt("pack \(pack.short) is shorter than the source index says")
        }
        for b in span.blobs {
          let start = Int(b.offset) - span.offset
          let plain = try data.withUnsafeMutableBytes { buf in
            try source.decodeBlob(
              inPlace: UnsafeMutableRawBufferPointer(rebasing: buf[start..<start + Int(b.length)]), b, pack: pack)
          }
          try await saver.save(.data, plain, id: b.id)
        }
      }
    }
    return seen
  }

  struct Span {
    var offset: Int
    var length: Int
    var blobs: [PackedBlob]
  }

  /// The blobs of one pack as ranged reads: neighbours closer than 256 KiB share a read of at most 8 MiB, so
  /// a pack needed whole is read in one or two calls and a pack needed for one blob costs one small read.
  static func spans(_ blobs: [PackedBlob]) -> [Span] {
    let maxGap = 256 << 10
    let maxRead = 8 << 20
    var out: [Span] = []
    for b in blobs.sorted(by: { $0.offset < $1.offset }) {
      let start = Int(b.offset)
      let end = start + Int(b.length)
      if var last = out.last, start - (last.offset + last.length) <= maxGap, end - last.offset <= maxRead,
        start >= last.offset + last.length
      {
        last.length = end - last.offset
        last.blobs.append(b)
        out[out.count - 1] = last
      } else {
        out.append(Span(offset: start, length: end - start, blobs: [b]))
      }
    }
    return out
  }
}

extension Copy {
  /// Runs `body` holding shared locks on `destination` (always: it is written) and, when `lockSource`, on
  /// `source`, taken at once so their pauses before the second look overlap; each index loads during that pause
  /// and writes to the destination wait for its lock's confirmation (see `RepositoryLock.acquire(overlap:)`).
  /// `body`'s result stands only once both locks are confirmed; the locks are released either way.
  public static func withLocks<T>(
    source: Repository, destination: Repository, lockSource: Bool, retry: Duration,
    _ body: () async throws -> T
  ) async throws -> T {
    var requests: [(repository: Repository, meanwhile: @Sendable () async throws -> Void)] = [
      (destination, { try await destination.loadIndex() })
    ]
    if lockSource {
      requests.append((source, { try await source.loadIndex() }))
    } else {
      try await source.loadIndex()
    }
    let locks = try await RepositoryLock.acquireAll(requests, retry: retry, overlap: true)
    do {
      let result = try await body()
      for l in locks { try await l.confirmed() }
      for l in locks { await l.release() }
      return result
    } catch {
      for l in locks { await l.release() }
      throw error
    }
  }
}

extension Copy.Stats {
  /// The JSON summary `copy --json` prints: counts, each copied and skipped snapshot (source and copy IDs),
  /// blobs and bytes added, packs written.
  public func json() -> [UInt8] {
    var w = JSONWriter()
    w.raw("{\"message_type\":\"summary\",\"snapshots_copied\":\(copied.count)")
    w.raw(",\"snapshots_skipped\":\(skipped.count),\"copied\":[")
    for (i, c) in copied.enumerated() {
      if i > 0 { w.comma() }
      w.raw("{\"source\":\"\(c.source.hex)\",\"snapshot_id\":\"\(c.copy.hex)\"}")
    }
    w.raw("],\"skipped\":[")
    for (i, c) in skipped.enumerated() {
      if i > 0 { w.comma() }
      w.raw("{\"source\":\"\(c.source.hex)\",\"snapshot_id\":\"\(c.copy.hex)\"}")
    }
    w.raw("],\"tree_blobs\":\(treeBlobs),\"data_blobs\":\(dataBlobs)")
    w.raw(",\"data_added\":\(bytesAdded),\"data_added_packed\":\(bytesStored)")
    w.raw(",\"packs_written\":\(packsWritten)}\n")
    return w.out
  }
}
