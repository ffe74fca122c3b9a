// Prune: remove what no snapshot needs, with restic's decisions and restic's crash-safe order.
//
// Plan (restic 0.14's rules): every blob a snapshot needs is "used"; of duplicate copies one counts as used.
// A pack with no used blob is deleted; a pack whose blobs are all used is kept (unless it holds uncompressed
// trees in a v2 repository, or --repack-uncompressed asks for it); partly used packs are repacked, those with
// the most unused space first (tree and small packs before all), until the unused space left is within
// --max-unused (default 5% of the used size) or --max-repack-size is reached. Packs no index names are deleted.
//
// Order, so that a crash at any point leaves a repository `restic check` accepts:
//   1. delete packs no index names (nothing refers to them);
//   2. repack: the used blobs of the packs to repack go into new packs, and an index for those is written;
//   3. write new index files for everything kept (the first lists the old ones in `supersedes`);
//   4. delete the old index files;
//   5. delete the packs that were repacked or are unused (now named by no index).
// A crash before 4 leaves old and new index files side by side, which only duplicates entries; after 4,
// packs no index names, which check reports as harmless and the next prune deletes.
//
// Files the storage keeps until a date (S3 Object Lock, `Backend.retainedUntil`) are learnt before deciding and
// never relied on being deleted: retained packs are kept as they are, and so are the packs of a retained index
// file, which stays beside the new ones. A file found retained only while deleting (clocks that disagree) stays
// too, and step 5 spares the packs of an index file that stayed. Where the storage was asked to, a last step
// renews the retention of the packs still in use.
import Foundation
import Synchronization
import TidemarkCore

public struct PruneOptions: Sendable {
  /// How much unused space may remain: `unused(used)` gives the byte limit.
  public var maxUnused: @Sendable (Int) -> Int = { used in Int(5.0 / 95.0 * Double(used)) }
  public var maxRepackBytes: Int = .max
  public var repackUncompressed = false
  public var dryRun = false
  public init() {}

  /// restic's `--max-unused` values: `unlimited`, a percentage `N%` (of the repository size after prune),
  /// or a size (`500M`, `2G`, bytes without a unit).
  public static func parseMaxUnused(_ s: String) throws -> @Sendable (Int) -> Int {
    let t = s.trimmingCharacters(in: .whitespaces)
    if t == "unlimited" { return { _ in .max } }
    if t.hasSuffix("%") {
      guard let p = Double(t.dropLast()), p >= 0 else {
        throw TidemarkError(.usage, "invalid percentage \(s) for --max-unused", hint: "e.g. 5%, 10%, unlimited, 1G")
      }
      guard p < 100 else { throw TidemarkError(.usage, "percentage for --max-unused must be below 100%") }
      return { used in Int(p / (100 - p) * Double(used)) }
    }
    let n = try parseSize(t, what: "--max-unused")
    return { _ in n }
  }

  /// restic's sizes: a number with an optional k/K, m/M, g/G, t/T suffix (powers of 1024).
  public static func parseSize(_ s: String, what: String) throws -> Int {
    var digits = s
    var mult = 1
    if let last = s.last, !last.isNumber {
      switch last.lowercased() {
      case "k": mult = 1 << 10
      case "m": mult = 1 << 20
      case "g": mult = 1 << 30
      case "t": mult = 1 << 40
      default: throw TidemarkError(.usage, "invalid size \(s) for \(what)", hint: "use a number with k, M, G or T")
      }
      digits = String(s.dropLast())
    }
    guard let n = Int(digits), n >= 0 else {
      throw TidemarkError(.usage, "invalid size \(s) for \(what)", hint: "use a number with k, M, G or T")
    }
    return n * mult
  }
}

/// What prune found and decided; restic's statistics.
public struct PruneStats: Sendable {
  public var usedBlobs = 0, usedBytes = 0
  public var duplicateBlobs = 0, duplicateBytes = 0
  public var unusedBlobs = 0, unusedBytes = 0
  public var unreferencedBytes = 0
  public var repackBlobs = 0, repackBytes = 0
  public var repackRemovedBlobs = 0, repackRemovedBytes = 0
  public var removeBlobs = 0, removeBytes = 0
  public var packsUsed = 0, packsPartlyUsed = 0, packsUnused = 0
  public var packsKeep = 0, packsRepack = 0, packsRemove = 0, packsUnreferenced = 0
  /// After the run: bytes of new packs written by repacking.
  public var repackWrittenBytes = 0
  public var indexFilesWritten = 0, indexFilesRemoved = 0
  /// Files left in place because the storage keeps them until a date (S3 Object Lock): planned around, or (when
  /// the storage's clock disagreed with ours) found while deleting.
  public var retained = RetainedFiles()
  /// Packs whose retention was renewed (S3: `-o s3.object-lock-extend=true`), and the latest new date.
  public var retentionExtended = 0
  public var retentionExtendedUntil: Date? = nil

  public var totalBlobs: Int { usedBlobs + unusedBlobs + duplicateBlobs }
  public var totalBytes: Int { usedBytes + duplicateBytes + unusedBytes + unreferencedBytes }
  /// Bytes freed: deleted packs' blobs, blobs dropped by repacking, unreferenced packs.
  public var prunedBytes: Int { removeBytes + repackRemovedBytes + unreferencedBytes }
  public var unusedAfterBytes: Int { duplicateBytes + unusedBytes - removeBytes - repackRemovedBytes }
}

public struct PrunePlan: Sendable {
  public var removeFirst: Set<PackID> = []  // in the backend, named by no index
  public var remove: Set<PackID> = []  // no used blob
  public var repack: Set<PackID> = []
  public var ignore: Set<PackID> = []  // named by the index, missing, not needed
  /// Packs that stay and hold blobs the snapshots use.
  public var inUse: Set<PackID> = []
  /// Used blobs that live only in packs being repacked: these must be copied.
  public var keepBlobs: Set<BlobHandleKey> = []
  public var stats = PruneStats()
}

/// A blob's identity for prune: the same ID as data and as tree are two blobs.
public struct BlobHandleKey: Hashable, Sendable {
  public var id: BlobID
  public var type: BlobType
  public init(_ id: BlobID, _ type: BlobType) { (self.id, self.type) = (id, type) }
}

public enum Prune {
  /// Reports progress: a phase name.
  public typealias Progress = @Sendable (String) -> Void

  /// Works out what to delete and repack. The caller holds an exclusive lock.
  public static func plan(
    _ repo: Repository, index: StoredIndex, options: PruneOptions, ignoring: Set<SnapshotID> = [],
    progress: Progress = { _ in }
  ) async throws -> PrunePlan {
    progress("loading all snapshots")
    let snapshots = try await repo.listSnapshots().filter { !ignoring.contains($0.id!) }
    progress("finding data that is still in use for \(snapshots.count) snapshots")
    let used = try await usedBlobs(repo, snapshots: snapshots)
    progress("searching used packs")
    var st = PruneStats()

    // Pass 1: used, duplicate and unused blobs (restic's packInfoFromIndex).
    var remaining = Set(used)
    var keep = Set<BlobHandleKey>()
    var duplicates: [BlobHandleKey: Int] = [:]
    index.forEachEntry { _, b in
      let k = BlobHandleKey(b.id, b.type)
      let size = Int(b.length)
      if remaining.contains(b.id) && !keep.contains(k) {
        remaining.remove(b.id)
        keep.insert(k)
        st.usedBytes += size
        st.usedBlobs += 1
      } else if keep.contains(k) {
        duplicates[k] = min((duplicates[k] ?? 1) + 1, 255)
        st.duplicateBytes += size
        st.duplicateBlobs += 1
      } else {
        st.unusedBytes += size
        st.unusedBlobs += 1
      }
    }
    // A blob used as data and as tree (same ID) must be found in both roles; `used` has IDs only, so a blob
    // still in `remaining` is missing from the index altogether.
    if !remaining.isEmpty {
      let list = remaining.prefix(5).map(\.short).joined(separator: ", ")
      throw TidemarkError(
        .general,
        "\(remaining.count) blob\(remaining.count == 1 ? "" : "s") needed by snapshots \(remaining.count == 1 ? "is" : "are") not in the index (\(list)…): data is missing; prune will not run",
        hint: "run `tidemark check` to find what is damaged")
    }

    struct PackInfo {
      var usedSize = 0, unusedSize = 0, usedBlobs = 0, unusedBlobs = 0
      var type: BlobType? = nil
      var mixed = false
      var uncompressed = false
      var mustCompress = false
    }
    var info: [PackID: PackInfo] = [:]
    for f in index.files {
      for p in f.file.packs where info[p.id] == nil {
        // The header's share of the pack counts as used, as in restic.
        info[p.id] = PackInfo(usedSize: expectedPackSize(p.blobs) - p.blobs.reduce(0) { $0 + Int($1.length) })
      }
    }
    index.forEachEntry { pack, b in
      var ip = info[pack]!
      if ip.type == nil { ip.type = b.type } else if ip.type != b.type { ip.mixed = true }
      let k = BlobHandleKey(b.id, b.type)
      if duplicates[k] != nil {
        // decided below
      } else if keep.contains(k) {
        ip.usedSize += Int(b.length)
        ip.usedBlobs += 1
      } else {
        ip.unusedSize += Int(b.length)
        ip.unusedBlobs += 1
      }
      if !b.isCompressed { ip.uncompressed = true }
      info[pack] = ip
    }
    if !duplicates.isEmpty {
      // One copy of each duplicate counts as used: preferably in a pack that has used blobs already.
      index.forEachEntry { pack, b in
        let k = BlobHandleKey(b.id, b.type)
        guard let count = duplicates[k] else { return }
        var ip = info[pack]!
        if count == 0 {
          ip.unusedSize += Int(b.length)
          ip.unusedBlobs += 1
        } else if ip.usedBlobs > 0 || count == 1 {
          ip.usedSize += Int(b.length)
          ip.usedBlobs += 1
          duplicates[k] = 0
        } else {
          ip.unusedSize += Int(b.length)
          ip.unusedBlobs += 1
          duplicates[k] = count - 1
        }
        info[pack] = ip
      }
    }

    // Pass 2: decide per pack (restic's decidePackAction).
    progress("collecting packs for deletion and repacking")
    var listed: [(id: PackID, size: Int, info: PackInfo)] = []
    var unreferenced: [(id: PackID, size: Int)] = []
    for f in try await repo.backend.list(.pack) {
      guard let id = PackID(hex: f.name) else { continue }
      guard let p = info.removeValue(forKey: id) else {
        unreferenced.append((id, f.size))
        continue
      }
      if p.usedSize + p.unusedSize != f.size && p.usedBlobs != 0 {
        throw TidemarkError(
          .general,
          "pack \(id.short): the index says \(p.usedSize + p.unusedSize) bytes, the file has \(f.size); prune will not run",
          hint: "run `tidemark check --read-data` to see what is damaged")
      }
      listed.append((id, f.size, p))
    }
    // Packs the index names that are missing: fine if nothing needs them, fatal otherwise.
    var ignore = Set<PackID>()
    for (id, p) in info {
      if p.usedBlobs == 0 {
        ignore.insert(id)
        st.removeBlobs += p.unusedBlobs
        st.removeBytes += p.unusedSize
      } else {
        throw TidemarkError(
          .general, "pack \(id.short) is named by the index and needed, but missing from the repository",
          hint: "run `tidemark check` to find the affected snapshots")
      }
    }

    /// restic's decisions, except that `pinned` packs are kept as they are (the storage will not delete them).
    func decide(pinned: Set<PackID>) -> PrunePlan {
      var plan = PrunePlan()
      var st = st
      plan.ignore = ignore
      for (id, size) in unreferenced where !pinned.contains(id) {
        plan.removeFirst.insert(id)
        st.unreferencedBytes += size
      }
      let smallPack = BlobSaver.targetPackSize / 25
      var candidates: [(PackID, PackInfo)] = []
      var smallCandidates: [(PackID, PackInfo)] = []
      for (id, size, listedInfo) in listed {
        var p = listedInfo
        if p.usedBlobs == 0 {
          st.packsUnused += 1
        } else if p.unusedBlobs == 0 {
          st.packsUsed += 1
        } else {
          st.packsPartlyUsed += 1
        }
        if pinned.contains(id) {
          st.packsKeep += 1
          continue
        }
        let isTree = p.type == .tree || p.mixed
        p.mustCompress =
          repo.config.version >= 2 && (isTree || options.repackUncompressed) && p.uncompressed
        if p.usedBlobs == 0 {
          plan.remove.insert(id)
          st.removeBlobs += p.unusedBlobs
          st.removeBytes += p.unusedSize
        } else if p.unusedBlobs == 0 && !p.mixed && !p.mustCompress {
          if size >= smallPack { st.packsKeep += 1 } else { smallCandidates.append((id, p)) }
        } else {
          candidates.append((id, p))
        }
      }
      if smallCandidates.count < 10 {
        st.packsKeep += smallCandidates.count
      } else {
        candidates += smallCandidates
      }
      func total(_ p: PackInfo) -> Int { p.usedSize + p.unusedSize }
      candidates.sort { a, b in
        let (pi, pj) = (a.1, b.1)
        let ti = pi.type != .data || pi.mixed
        let tj = pj.type != .data || pj.mixed
        if ti != tj { return ti }
        let si = total(pi) < smallPack
        let sj = total(pj) < smallPack
        if si != sj { return si }
        return pi.unusedSize * pj.usedSize > pj.unusedSize * pi.usedSize
      }
      let maxUnusedAfter = options.maxUnused(st.usedBytes)
      for (id, p) in candidates {
        let reachedUnused = st.unusedBytes - st.removeBytes - st.repackRemovedBytes < maxUnusedAfter
        let reachedRepack = st.repackBytes + total(p) >= options.maxRepackBytes
        let largeEnough = total(p) >= smallPack
        if reachedRepack {
          st.packsKeep += 1
        } else if p.type != .data || p.mixed || p.mustCompress {
          plan.repack.insert(id)
        } else if reachedUnused && largeEnough {
          st.packsKeep += 1
        } else {
          plan.repack.insert(id)
        }
        if plan.repack.contains(id) {
          st.repackBlobs += p.usedBlobs + p.unusedBlobs
          st.repackBytes += total(p)
          st.repackRemovedBlobs += p.unusedBlobs
          st.repackRemovedBytes += p.unusedSize
        }
      }
      plan.inUse = Set(listed.filter { $0.info.usedBlobs > 0 && !plan.repack.contains($0.id) }.map(\.id))
      st.packsUnreferenced = plan.removeFirst.count
      st.packsRepack = plan.repack.count
      st.packsRemove = plan.remove.count

      // Used blobs that must be copied: those with no copy in a pack that stays.
      if !plan.repack.isEmpty {
        var keepBlobs = keep
        index.forEachEntry { pack, b in
          if plan.repack.contains(pack) { return }
          if plan.remove.contains(pack) || plan.ignore.contains(pack) { return }
          keepBlobs.remove(BlobHandleKey(b.id, b.type))
        }
        plan.keepBlobs = keepBlobs
      }
      plan.stats = st
      return plan
    }

    // Files the storage keeps until a date (S3 Object Lock) cannot be deleted, so the plan must not depend on
    // deleting them: a retained pack is kept as it is (never repacked: that would only add a copy), and so is
    // every pack a retained index file names (deleting it would leave that index naming a missing pack). Keeping
    // packs changes which others are worth repacking, so the plan is redone until it asks about nothing new.
    var pinned = Set<PackID>()
    var asked = Set<Handle>()
    var retained = RetainedFiles()
    var plan = decide(pinned: [])
    while true {
      let dropsIndex = !plan.remove.isEmpty || !plan.repack.isEmpty || !plan.ignore.isEmpty
      var wanted = plan.removeFirst.union(plan.remove).union(plan.repack).map { Handle(.pack, $0.hex) }
      if dropsIndex { wanted += index.files.map { Handle(.index, $0.id.hex) } }
      wanted = wanted.filter { !asked.contains($0) }
      if wanted.isEmpty { break }
      asked.formUnion(wanted)
      let found = try await RetainedFiles.of(wanted, in: repo.backend)
      if found.isEmpty { break }
      retained.merge(found)
      for h in found.until.keys where h.type == .pack { pinned.insert(PackID(hex: h.name)!) }
      for f in index.files where found.contains(Handle(.index, f.id.hex)) {
        for p in f.file.packs { pinned.insert(p.id) }
      }
      plan = decide(pinned: pinned)
    }
    plan.stats.retained = retained
    return plan
  }

  /// Carries out a plan (see the order at the top of this file). The caller holds an exclusive lock.
  public static func execute(
    _ repo: Repository, index: StoredIndex, plan: PrunePlan, progress: Progress = { _ in }
  ) async throws -> PruneStats {
    var st = plan.stats
    // 1. Packs nothing refers to.
    if !plan.removeFirst.isEmpty {
      progress("deleting \(plan.removeFirst.count) unreferenced packs")
      st.retained.merge(try await removeAll(repo, .pack, plan.removeFirst.map(\.hex)))
    }
    // 2. Repack.
    var newIndexFiles = Set<String>()
    if !plan.repack.isEmpty {
      progress("repacking \(plan.repack.count) packs")
      let packs = index.packs()
      let saver = BlobSaver(repository: repo, deduplicateAgainstIndex: false)
      let toCopy = Mutex(plan.keepBlobs)
      try await forEachConcurrently(Array(plan.repack), limit: 2) { pack in
        guard let blobs = packs[pack] else { return }
        let wanted = toCopy.withLock { s in blobs.filter { s.remove(BlobHandleKey($0.id, $0.type)) != nil } }
        guard !wanted.isEmpty else { return }
        var data = try await repo.backend.load(Handle(.pack, pack.hex))
        for b in wanted.sorted(by: { $0.offset < $1.offset }) {
          guard Int(b.offset) + Int(b.length) <= data.count else {
            throw TidemarkError.corrupt("pack \(pack.short) is shorter than its index says")
          }
          let plain = try data.withUnsafeMutableBytes { buf in
            try repo.decodeBlob(
              inPlace: UnsafeMutableRawBufferPointer(rebasing: buf[Int(b.offset)..<Int(b.offset) + Int(b.length)]),
              b, pack: pack)
          }
          try await saver.save(b.type, plain, id: b.id)
        }
        data = []
      }
      try await saver.finish()
      newIndexFiles = saver.indexFilesWritten
      st.repackWrittenBytes = saver.stats.bytesStored
      let left = toCopy.withLock { $0 }
      guard left.isEmpty else {
        throw TidemarkError(
          .general, "internal error: \(left.count) blobs were not repacked; nothing was deleted",
          hint: "run `tidemark check`")
      }
    }
    // 3. New index files for everything kept; 4. the old ones go (those the storage keeps stay, which only
    // duplicates entries).
    let drop = plan.remove.union(plan.repack).union(plan.ignore)
    if !drop.isEmpty || !plan.repack.isEmpty {
      progress("rebuilding index")
      var kept: [(PackID, [PackedBlob])] = []
      var seen = Set<PackID>()
      for f in index.files {
        for p in f.file.packs where !drop.contains(p.id) && seen.insert(p.id).inserted { kept.append((p.id, p.blobs)) }
      }
      let written = try await saveIndexFiles(repo, packs: kept, supersedes: index.files.map(\.id)).count
      st.indexFilesWritten = written + newIndexFiles.count
      progress("deleting obsolete index files")
      let oldIndex = index.files.filter { !st.retained.contains(Handle(.index, $0.id.hex)) }
      let late = try await removeAll(repo, .index, oldIndex.map(\.id.hex))
      st.retained.merge(late)
      st.indexFilesRemoved = oldIndex.count - late.count
      // 5. Packs no index names any more. An index file that stayed still names its packs: they stay too (the
      // plan already kept those of the index files it knew to be retained).
      var packs = plan.remove.union(plan.repack)
      for f in index.files where late.contains(Handle(.index, f.id.hex)) {
        for p in f.file.packs { packs.remove(p.id) }
      }
      if !packs.isEmpty {
        progress("removing \(packs.count) old packs")
        st.retained.merge(try await removeAll(repo, .pack, packs.map(\.hex)))
      }
    }
    // 6. Where the storage was asked to (S3: -o s3.object-lock-extend=true), the packs still in use get their
    // retention renewed, so what the snapshots need stays protected for as long as they need it. Packs no
    // snapshot needs are left to expire.
    let extended = Mutex<(count: Int, until: Date?)>((0, nil))
    try await forEachConcurrently(Array(plan.inUse), limit: 8) { id in
      guard let d = try await repo.backend.extendRetention(Handle(.pack, id.hex)) else { return }
      extended.withLock { e in e = (e.count + 1, max(d, e.until ?? d)) }
    }
    (st.retentionExtended, st.retentionExtendedUntil) = extended.withLock { $0 }
    return st
  }

  /// Removes the files; returns those the storage keeps until a date (they stay, unchanged).
  static func removeAll(_ repo: Repository, _ type: FileType, _ names: [String]) async throws -> RetainedFiles {
    let retained = Mutex(RetainedFiles())
    try await forEachConcurrently(names, limit: 8) { n in
      do {
        try await repo.backend.remove(Handle(type, n))
      } catch is BackendNotFound {
        // already gone: the goal is reached
      } catch let e as FileRetained {
        retained.withLock { $0.add(e.handle, e.until) }
      }
    }
    return retained.withLock { $0 }
  }
}

extension Prune {
  /// Loads the index, plans, and (unless `options.dryRun`) carries out a prune, as `prune` and `forget --prune`
  /// run it; `planned` sees the plan before anything is deleted. Returns the statistics (the plan's for a dry
  /// run). The caller holds an exclusive lock.
  public static func run(
    _ repo: Repository, options: PruneOptions, ignoring: Set<SnapshotID> = [], progress: Progress,
    planned: (PrunePlan) -> Void = { _ in }
  ) async throws -> PruneStats {
    if !options.dryRun { try await Forget.ensureDeletable(repo, for: "prune") }
    progress("loading indexes...")
    let index = try await StoredIndex.load(repo)
    for f in index.files { repo.index.add(f.file) }
    let plan = try await plan(repo, index: index, options: options, ignoring: ignoring) { progress($0 + "...") }
    planned(plan)
    guard !options.dryRun else { return plan.stats }
    let stats = try await execute(repo, index: index, plan: plan, progress: progress)
    progress("done")
    return stats
  }
}

extension PruneStats {
  /// The JSON summary `prune --json` prints (restic's field names, sizes in bytes), one line.
  public func json(dryRun: Bool) -> [UInt8] {
    var w = JSONWriter()
    w.raw("{\"message_type\":\"summary\",\"dry_run\":\(dryRun)")
    let fields: [(String, Int)] = [
      ("used_blobs", usedBlobs), ("used_size", usedBytes), ("duplicate_blobs", duplicateBlobs),
      ("duplicate_size", duplicateBytes), ("unused_blobs", unusedBlobs), ("unused_size", unusedBytes),
      ("unreferenced_size", unreferencedBytes), ("repack_blobs", repackBlobs), ("repack_size", repackBytes),
      ("repack_removed_blobs", repackRemovedBlobs), ("repack_removed_size", repackRemovedBytes),
      ("remove_blobs", removeBlobs), ("remove_size", removeBytes), ("pruned_size", prunedBytes),
      ("unused_size_after", unusedAfterBytes), ("packs_keep", packsKeep), ("packs_repack", packsRepack),
      ("packs_remove", packsRemove), ("packs_unreferenced", packsUnreferenced),
      ("repack_written_size", repackWrittenBytes), ("index_files_written", indexFilesWritten),
      ("index_files_removed", indexFilesRemoved),
    ]
    for (k, v) in fields { w.raw(",\"\(k)\":\(v)") }
    w.raw("}\n")
    return w.out
  }
}
