// Replica: a disaster-recovery copy of a repository that shares its master key, kept up to date by copying
// stored files verbatim (nothing is decrypted and re-encrypted; only index files are decrypted, to learn
// which packs they name).
//
// A replica has the same `config` file (same ID, chunker polynomial and version) and its own key file
// wrapping the same master key, so every pack, index and snapshot file of the source is valid there as is,
// under the same name.
//
// Publish order, so the target is consistent at every instant (backends save atomically, so a file is
// either there in full or not at all):
//   1. packs the target lacks, each checked against its name (SHA-256) after loading; a damaged one is
//      not copied and is reported;
//   2. an index file the target lacks as soon as every pack it names is on the target (index files that
//      name a damaged pack, or a pack the source itself lacks, are not published);
//   3. snapshot files the target lacks, only when every index file of the source is on the target or covered
//      (below): the source's snapshots are complete in the source's index (listed in that order: snapshots,
//      then index, then packs, under a shared lock, so prune cannot interfere), hence in the target's.
// Covered: a source index file the target lacks by name, but whose every (pack, blob) entry the target's own
// index already holds, is not copied. Index consolidation and prune rewrite index files under new names on
// either side; copying the old names again would grow the target's index without bound, and the target's
// index would gain nothing. The target's index is read only when some source index file names no pack the
// target lacks (a fresh backup's index names new packs, so the usual sync does not pay for it).
// A rerun copies only what is still missing (resumable by construction).
//
// Concurrency: `sync` runs `concurrency` transfers at once; its callbacks may come from several tasks.
// Never: write a file the target has under that name, or publish a file before what it refers to.
import Foundation
import Synchronization
import TidemarkCore

/// What one `Replica.sync` did.
public struct ReplicaStats: Sendable {
  public var packsCopied = 0, packBytes = 0
  public var indexFilesCopied = 0, indexBytes = 0
  public var snapshotsCopied = 0, snapshotBytes = 0
  /// Files of the source the target already had.
  public var packsPresent = 0, indexFilesPresent = 0, snapshotsPresent = 0
  /// Source index files the target lacks by name but whose every entry its own index holds (not copied).
  public var indexFilesCovered = 0
  /// Files not copied: damaged packs, index files naming a pack that is damaged or missing, and
  /// snapshots waiting for index files.
  public var packsSkipped = 0, indexFilesSkipped = 0, snapshotsSkipped = 0
  /// Harmless findings worth a line (skipped index files and why).
  public var notes: [String] = []
  public var seconds = 0.0
  public var bytesCopied: Int { packBytes + indexBytes + snapshotBytes }
  public init() {}
}

/// Progress of a sync, reported as it happens (from several tasks at once).
public enum ReplicaEvent: Sendable {
  /// What is to be copied: counts and bytes of the files the target lacks.
  case planned(packs: Int, packBytes: Int, indexFiles: Int, snapshots: Int)
  case copied(Handle, bytes: Int)
  case note(String)
}

/// Shared locks on both repositories, held while a sync runs.
public struct ReplicaLocks: Sendable {
  let source: RepositoryLock
  let target: RepositoryLock

  /// Throws the lock error if either lock's second look found a conflict (see `RepositoryLock.confirmed`).
  public func confirmed() async throws {
    try await source.confirmed()
    try await target.confirmed()
  }

  public func release() async {
    await target.release()
    await source.release()
  }
}

public enum Replica {
  /// Makes `target` a replica of `source`: the same config file bytes and a new key file wrapping the same
  /// master key with `password`. An existing replica of the same repository is accepted as it is (a key
  /// must open with `password`); anything else at the target is refused.
  ///
  /// The new key file costs what the source's key costs (the scrypt parameters of the key `source` was opened
  /// with, unless `kdf` says otherwise): both guard the same master key, so a cheaper one on either side would
  /// be the easy way in, and a dearer one protects nothing the other does not give away.
  public static func create(
    source: Repository, target: any Backend, password: [UInt8],
    kdf: (n: UInt64, r: UInt64, p: UInt64)? = nil, verifiedKey: KeyID? = nil
  ) async throws -> Repository {
    let config = try await source.backend.load(.config)
    let existing: [UInt8]?
    do {
      existing = try await target.load(.config)
    } catch is BackendNotFound {
      existing = nil
    }
    if let existing {
      try await checkSameRepository(source, target, existingConfig: existing, sourceConfig: config)
      // A key this caller found to open with its password earlier (a previous cycle) and that is still there:
      // no need to derive the password key again (scrypt costs a quarter second per target and cycle).
      if let k = verifiedKey, existing == config, try await target.exists(Handle(.key, k.hex)) {
        return try await Repository.open(backend: target, key: source.key, keyID: k, compression: source.compression)
      }
      guard let keyID = try await findKey(target, master: source.key, password: password) else {
        throw TidemarkError(
          .wrongPassword, "no key of the replica at \(target.location) opens with the given password",
          hint: "pass the replica's own password with --to-password-file")
      }
      return try await Repository.open(
        backend: target, key: source.key, keyID: keyID, compression: source.compression)
    }
    // No config: the target must be empty, except for a key file of ours that an interrupted create wrote.
    for type in [FileType.pack, .index, .snapshot] {
      let files = try await target.list(type)
      guard !files.isEmpty else { continue }
      throw TidemarkError(
        .alreadyExists, "\(target.location) is not empty (\(type.rawValue)/ holds files) but has no config",
        hint: "replicate to an empty location")
    }
    var keyID = try await findKey(target, master: source.key, password: password)
    let keyFiles = try await target.list(.key)
    if keyID == nil && !keyFiles.isEmpty {
      throw TidemarkError(
        .alreadyExists, "\(target.location) holds key files of another repository but no config",
        hint: "replicate to an empty location")
    }
    try await target.create()
    if keyID == nil {
      var params = kdf
      if params == nil { params = await source.keyParams() }
      let kf = try KeyFile.create(
        master: source.key, password: password, username: SystemInfo.username, hostname: SystemInfo.hostname,
        params: params ?? KeyFile.defaultParams)
      let json = kf.json
      let id = KeyID(RawID.hash(json))
      try await target.save(Handle(.key, id.hex), data: json)
      keyID = id
    }
    // The key first, then the config: a config is never there without a key that opens it.
    try await target.save(.config, data: config)
    return try await Repository.open(backend: target, key: source.key, keyID: keyID, compression: source.compression)
  }

  /// Refuses a target whose config is not the source's (byte for byte, or at least the same repository ID
  /// under the same master key).
  static func checkSameRepository(
    _ source: Repository, _ target: any Backend, existingConfig: [UInt8], sourceConfig: [UInt8]
  ) async throws {
    if existingConfig == sourceConfig { return }
    let other = try? await Repository.open(backend: target, key: source.key, keyID: nil)
    guard let other, other.config.id == source.config.id else {
      throw TidemarkError(
        .alreadyExists,
        "\(target.location) holds another repository, not a replica of \(source.backend.location) (different config"
          + (other == nil ? " and master key)" : " ID)"),
        hint: "replicate to an empty location, or copy snapshots between unrelated repositories with `restic copy`")
    }
  }

  /// The key file of `target` that opens with `password` to `master`, if any (at most 20 are tried, as
  /// `Repository.open` does).
  static func findKey(_ target: any Backend, master: MasterKey, password: [UInt8]) async throws -> KeyID? {
    for k in try await target.list(.key).sorted(by: { $0.name < $1.name }).prefix(20) {
      guard let data = try? await target.load(Handle(.key, k.name)), RawID.hash(data).hex == k.name,
        let kf = try? KeyFile(json: data), let mk = try? kf.open(password: password), mk == master
      else { continue }
      return KeyID(hex: k.name)
    }
    return nil
  }

  /// Takes shared locks on the source and the target (both, or neither), at the same time, so their pauses
  /// before the second look overlap each other and the start of the copy: writes to the target wait for
  /// its lock's confirmation (`WriteGate`); call `confirmed()` when the copy is done.
  public static func lock(source: Repository, target: Repository, retry: Duration = .zero) async throws
    -> ReplicaLocks
  {
    let nothing: @Sendable () async throws -> Void = {}
    let locks = try await RepositoryLock.acquireAll(
      [(source, nothing), (target, nothing)], retry: retry, overlap: true)
    return ReplicaLocks(source: locks[0], target: locks[1])
  }

  /// Copies to `target` every pack, index and snapshot file of `source` it lacks, in publish order (see the
  /// top of this file). Takes shared locks on both unless the caller holds them (`locked`). A damaged source
  /// file is not copied, nothing that needs it is published, everything else is, and then the sync throws
  /// an error naming it.
  ///
  /// `fullListing`: list every pack on both sides, so packs lost on the target (or never indexed on the source)
  /// are copied too. Without it the work grows with what is new, not with the repository: only the snapshot
  /// and index directories are listed, and only the packs named by index files the target lacks are looked up
  /// (one `size` each, on both sides). The replication cycle lists in full now and then.
  public static func sync(
    source: Repository, target: Repository, concurrency: Int = 4, locked: Bool = false,
    lockRetry: Duration = .zero, fullListing: Bool = true,
    progress: @escaping @Sendable (ReplicaEvent) -> Void = { _ in }
  ) async throws -> ReplicaStats {
    guard source.key == target.key, source.config.id == target.config.id else {
      throw TidemarkError(
        .general, "\(target.backend.location) is not a replica of \(source.backend.location) (different master key)",
        hint: "replicate to an empty location to create a replica")
    }
    guard !locked else {
      return try await Copier(
        source: source, target: target, concurrency: concurrency, fullListing: fullListing, progress: progress
      ).run()
    }
    let locks = try await lock(source: source, target: target, retry: lockRetry)
    do {
      let stats = try await Copier(
        source: source, target: target, concurrency: concurrency, fullListing: fullListing, progress: progress
      ).run()
      try await locks.confirmed()
      await locks.release()
      return stats
    } catch {
      await locks.release()
      throw error
    }
  }
}

/// One sync's plan and state.
private struct Copier {
  let source: Repository
  let target: Repository
  let concurrency: Int
  let fullListing: Bool
  let progress: @Sendable (ReplicaEvent) -> Void

  /// A source index file the target lacks: its stored bytes, the packs it names and its content.
  struct PendingIndex: Sendable {
    var name: String
    var data: [UInt8]
    var packs: Set<String>
    var file: IndexFile
  }

  /// One index entry, compared whole: a source entry is covered only by the very same entry on the target.
  struct Entry: Hashable {
    var pack: PackID
    var blob: PackedBlob
  }

  final class State: Sendable {
    struct Inner {
      var stats = ReplicaStats()
      /// Per pending index file: how many of its packs are not on the target yet.
      var waiting: [String: Int] = [:]
      /// Index files that will not be published (a pack damaged or missing).
      var blocked: Set<String> = []
      var published: Set<String> = []
      /// Damaged source files, one line each.
      var damaged: [String] = []
    }
    let inner = Mutex(Inner())
  }

  /// What both sides hold, as listed when the sync starts.
  struct Listing {
    var srcSnapshots: [FileInfo]
    var srcIndex: [FileInfo]
    /// Empty unless `fullListing`.
    var srcPacks: [FileInfo]
    var dstSnapshots: Set<String>
    var dstIndex: Set<String>
    /// Every pack of the target with `fullListing`; otherwise, once looked up, those the new index files name.
    var dstPacks: Set<String>
    /// Sizes of the source's packs, known like `dstPacks`.
    var srcPackSize: [String: Int]
    /// Source index files the target lacks by name, sorted.
    var missingIndex: [FileInfo]
  }

  /// What is to be copied, decided before anything is.
  struct Plan {
    /// Packs to copy, those an index file waits for first.
    var order: [String]
    /// For each pack to copy, the index files waiting for it.
    var indexesOfPack: [String: [String]]
    var pendingByName: [String: PendingIndex]
    /// Index files the target's own index already covers (not copied).
    var covered: Set<String>
    /// Index files whose packs are all on the target already: published first.
    var ready: [PendingIndex]
    /// Index files naming packs the source itself lacks (never published).
    var skippedForAbsence: Set<String>
    var missingSnapshots: [FileInfo]
  }

  func run() async throws -> ReplicaStats {
    let start = ContinuousClock.now
    let state = State()
    var listing = try await listBothSides()
    let pending = try await loadMissingIndexFiles(listing.missingIndex, state)
    if !fullListing { try await lookUpNamedPacks(pending, &listing) }
    let plan = try await planCopies(pending, listing, state)
    // Index files whose packs are all on the target already.
    try await forEachConcurrently(plan.ready, limit: concurrency) { p in try await publishIndex(p, state) }
    try await copyPacks(plan, state)
    try await publishSnapshots(plan, listing, state)
    return try finish(state, since: start)
  }

  /// Lists the source in publish order reversed (snapshots, index, packs), then the target: whatever a
  /// listed snapshot needs was published before it, so it is in the later listings.
  func listBothSides() async throws -> Listing {
    let src = source.backend
    let dst = target.backend
    let srcSnapshots = try await src.list(.snapshot)
    let srcIndex = try await src.list(.index)
    let srcPacks = fullListing ? try await src.list(.pack) : []
    let dstSnapshots = Set(try await dst.list(.snapshot).map(\.name))
    let dstIndex = Set(try await dst.list(.index).map(\.name))
    let dstPacks = fullListing ? Set(try await dst.list(.pack).map(\.name)) : []
    let srcPackSize = Dictionary(srcPacks.map { ($0.name, $0.size) }) { a, _ in a }
    let missingIndex = srcIndex.filter { !dstIndex.contains($0.name) }.sorted { $0.name < $1.name }
    return Listing(
      srcSnapshots: srcSnapshots, srcIndex: srcIndex, srcPacks: srcPacks, dstSnapshots: dstSnapshots,
      dstIndex: dstIndex, dstPacks: dstPacks, srcPackSize: srcPackSize, missingIndex: missingIndex)
  }

  /// Loads the index files to publish, decrypted only to learn their packs; a damaged one is recorded and
  /// left out. Sorted by name.
  func loadMissingIndexFiles(_ missingIndex: [FileInfo], _ state: State) async throws -> [PendingIndex] {
    let src = source.backend
    let loaded = Mutex<[PendingIndex]>([])
    try await forEachConcurrently(missingIndex, limit: concurrency) { f in
      let h = Handle(.index, f.name)
      let data = try await src.load(h)
      let got = RawID.hash(data).hex
      guard got == f.name else {
        state.inner.withLock {
          $0.damaged.append("source index file \(f.name) is damaged (its content hashes to \(got.prefix(8)))")
          $0.stats.indexFilesSkipped += 1
        }
        return
      }
      guard let plain = try source.key.open(data),
        let file = try? IndexFile(json: try Repository.decodeUnpacked(plain))
      else {
        state.inner.withLock {
          $0.damaged.append("source index file \(f.name) does not decrypt or decode")
          $0.stats.indexFilesSkipped += 1
        }
        return
      }
      let pending = PendingIndex(name: f.name, data: data, packs: Set(file.packs.map(\.id.hex)), file: file)
      loaded.withLock { $0.append(pending) }
    }
    return loaded.withLock { $0 }.sorted { $0.name < $1.name }
  }

  /// Without a full listing, looks up only the packs the new index files name: which the source has (and
  /// their sizes), which the target has.
  func lookUpNamedPacks(_ pending: [PendingIndex], _ listing: inout Listing) async throws {
    let src = source.backend
    let dst = target.backend
    let wanted = Array(Set(pending.flatMap(\.packs))).sorted()
    let found = Mutex<(src: [String: Int], dst: Set<String>)>(([:], []))
    try await forEachConcurrently(wanted, limit: 2 * concurrency) { name in
      let h = Handle(.pack, name)
      let size: Int?
      do { size = try await src.size(h) } catch is BackendNotFound { size = nil }
      let there = try await dst.exists(h)
      found.withLock {
        if let size { $0.src[name] = size }
        if there { $0.dst.insert(name) }
      }
    }
    (listing.srcPackSize, listing.dstPacks) = found.withLock { ($0.src, $0.dst) }
  }

  /// Decides which packs to copy, grouped by the index file that waits for them so index files publish
  /// early, then the other packs the target lacks (not indexed yet on the source, or lost on the target);
  /// which index files are ready or covered; and reports the plan.
  func planCopies(_ pending: [PendingIndex], _ listing: Listing, _ state: State) async throws -> Plan {
    let dstPacks = listing.dstPacks
    let srcPackSize = listing.srcPackSize
    var order: [String] = []
    var scheduled = Set<String>()
    var indexesOfPack: [String: [String]] = [:]
    /// Index files whose packs are all on the target: published unless the target's index covers them.
    var candidates: [PendingIndex] = []
    var byName: [String: PendingIndex] = [:]
    for p in pending {
      byName[p.name] = p
      let absent = p.packs.filter { !dstPacks.contains($0) && srcPackSize[$0] == nil }
      if !absent.isEmpty {
        let note =
          "index file \(p.name.prefix(8)) not copied: it names \(absent.count) pack(s) the source lacks, e.g. \(absent.sorted()[0].prefix(8))"
        progress(.note(note))
        state.inner.withLock {
          $0.stats.notes.append(note)
          $0.stats.indexFilesSkipped += 1
          $0.blocked.insert(p.name)
        }
        continue
      }
      let toCopy = p.packs.filter { !dstPacks.contains($0) }.sorted()
      if toCopy.isEmpty {
        candidates.append(p)
        continue
      }
      state.inner.withLock { $0.waiting[p.name] = toCopy.count }
      for pack in toCopy {
        indexesOfPack[pack, default: []].append(p.name)
        if scheduled.insert(pack).inserted { order.append(pack) }
      }
    }
    for f in listing.srcPacks.sorted(by: { $0.name < $1.name }) where !dstPacks.contains(f.name) {
      if scheduled.insert(f.name).inserted { order.append(f.name) }
    }
    let covered = try await coveredByTarget(candidates)
    let ready = candidates.filter { !covered.contains($0.name) }
    let skippedForAbsence = state.inner.withLock { $0.blocked }
    let missingSnapshots = listing.srcSnapshots.filter { !listing.dstSnapshots.contains($0.name) }
    state.inner.withLock { s in
      s.stats.packsPresent = fullListing ? listing.srcPacks.count - order.count : dstPacks.count
      s.stats.indexFilesPresent = listing.srcIndex.count - listing.missingIndex.count
      s.stats.indexFilesCovered = covered.count
      s.stats.snapshotsPresent = listing.srcSnapshots.count - missingSnapshots.count
    }
    progress(
      .planned(
        packs: order.count, packBytes: order.reduce(0) { $0 + (srcPackSize[$1] ?? 0) },
        indexFiles: listing.missingIndex.count - covered.count, snapshots: missingSnapshots.count))
    return Plan(
      order: order, indexesOfPack: indexesOfPack, pendingByName: byName, covered: covered, ready: ready,
      skippedForAbsence: skippedForAbsence, missingSnapshots: missingSnapshots)
  }

  /// Saves one index file on the target once every pack it names is there.
  func publishIndex(_ p: PendingIndex, _ state: State) async throws {
    // Held until the target's lock is confirmed (the copy starts during the lock pause).
    try await target.writeGate.pass()
    try await target.backend.save(Handle(.index, p.name), data: p.data)
    state.inner.withLock { s in
      s.published.insert(p.name)
      s.stats.indexFilesCopied += 1
      s.stats.indexBytes += p.data.count
    }
    progress(.copied(Handle(.index, p.name), bytes: p.data.count))
  }

  /// Copies the planned packs, each verified against its name before it is saved, and publishes each
  /// index file as soon as its last pack is on the target. A damaged pack blocks the index files naming it.
  func copyPacks(_ plan: Plan, _ state: State) async throws {
    let src = source.backend
    let dst = target.backend
    // Held until the target's lock is confirmed (the copy starts during the lock pause).
    let gate = target.writeGate
    let waiters = plan.indexesOfPack
    let pendingByName = plan.pendingByName
    try await forEachConcurrently(plan.order, limit: concurrency) { name in
      let h = Handle(.pack, name)
      let data: [UInt8]
      do {
        data = try await src.load(h)
      } catch is BackendNotFound {
        // Removed from the source since the listing: nothing on the target will need it.
        return
      }
      let got = RawID.hash(data).hex
      guard got == name else {
        let line = "source pack \(name) is damaged (its content hashes to \(got.prefix(8)), not to its name)"
        state.inner.withLock { s in
          s.damaged.append(line)
          s.stats.packsSkipped += 1
          for i in waiters[name] ?? [] where s.blocked.insert(i).inserted { s.stats.indexFilesSkipped += 1 }
        }
        return
      }
      try await gate.pass()
      try await dst.save(h, data: data)
      progress(.copied(h, bytes: data.count))
      let complete = state.inner.withLock { s -> [String] in
        s.stats.packsCopied += 1
        s.stats.packBytes += data.count
        var done: [String] = []
        for i in waiters[name] ?? [] {
          s.waiting[i, default: 1] -= 1
          if s.waiting[i] == 0 && !s.blocked.contains(i) { done.append(i) }
        }
        return done
      }
      for i in complete {
        if let p = pendingByName[i] { try await publishIndex(p, state) }
      }
    }
  }

  /// Copies the snapshots the target lacks, only when every index file of the source is on the target or
  /// covered there (those naming packs the source itself lacks excepted: the source is damaged there, and
  /// the target can be no better).
  func publishSnapshots(_ plan: Plan, _ listing: Listing, _ state: State) async throws {
    let src = source.backend
    let dst = target.backend
    let gate = target.writeGate
    let missingSnapshots = plan.missingSnapshots
    let published = state.inner.withLock { $0.published }
    let unindexed = listing.srcIndex.filter {
      !listing.dstIndex.contains($0.name) && !published.contains($0.name)
        && !plan.skippedForAbsence.contains($0.name) && !plan.covered.contains($0.name)
    }
    if !unindexed.isEmpty {
      if !missingSnapshots.isEmpty {
        let note =
          "\(missingSnapshots.count) snapshot(s) not copied: \(unindexed.count) index file(s) of the source are not on the target"
        progress(.note(note))
        state.inner.withLock {
          $0.stats.notes.append(note)
          $0.stats.snapshotsSkipped += missingSnapshots.count
        }
      }
    } else {
      // Read and checked concurrently, published one at a time, oldest first: a reader of the target (a keeper's
      // snapshot guard) sees snapshots arrive in the order they were taken, also when a sync catches up.
      let loaded = Mutex<[(time: Timestamp?, name: String, data: [UInt8])]>([])
      let key = source.key
      try await forEachConcurrently(missingSnapshots, limit: concurrency) { f in
        let h = Handle(.snapshot, f.name)
        let data: [UInt8]
        do {
          data = try await src.load(h)
        } catch is BackendNotFound {
          return  // forgotten on the source since the listing
        }
        let got = RawID.hash(data).hex
        guard got == f.name else {
          state.inner.withLock {
            $0.damaged.append("source snapshot file \(f.name) is damaged (its content hashes to \(got.prefix(8)))")
            $0.stats.snapshotsSkipped += 1
          }
          return
        }
        var time: Timestamp? = nil
        if let plain = try? key.open(data), let json = try? Repository.decodeUnpacked(plain) {
          time = (try? Snapshot(json: json, id: SnapshotID(hex: f.name)))?.time
        }
        loaded.withLock { $0.append((time, f.name, data)) }
      }
      let ordered = loaded.withLock { $0 }.sorted { a, b in
        switch (a.time, b.time) {
        case (let x?, let y?): return (x, a.name) < (y, b.name)
        case (nil, _?): return true
        case (_?, nil): return false
        case (nil, nil): return a.name < b.name
        }
      }
      for (_, name, data) in ordered {
        let h = Handle(.snapshot, name)
        try await gate.pass()
        try await dst.save(h, data: data)
        state.inner.withLock { s in
          s.stats.snapshotsCopied += 1
          s.stats.snapshotBytes += data.count
        }
        progress(.copied(h, bytes: data.count))
      }
    }
  }

  /// The stats, or, when source files were damaged, an error naming them that still carries the stats.
  func finish(_ state: State, since start: ContinuousClock.Instant) throws -> ReplicaStats {
    var stats = state.inner.withLock { $0.stats }
    stats.seconds = (ContinuousClock.now - start).inSeconds
    let allDamaged = state.inner.withLock { $0.damaged }
    if !allDamaged.isEmpty {
      throw ReplicaError(
        stats: stats,
        error: TidemarkError.corrupt(
          allDamaged.sorted().joined(separator: "; ")
            + "; not copied, and nothing on \(target.backend.location) refers to it",
          hint: "run `tidemark check --read-data` on the source; restore the damaged files from the replica"))
    }
    return stats
  }
}

extension Copier {
  /// The names of the `candidates` (source index files whose packs are all on the target) whose every entry the
  /// target's index holds. Reads the target's index files only if a candidate names any pack; a target index
  /// file that does not load covers nothing (the source file is then copied, which is always safe).
  func coveredByTarget(_ candidates: [PendingIndex]) async throws -> Set<String> {
    var covered = Set(candidates.filter { $0.file.packs.isEmpty }.map(\.name))
    let named = Set(candidates.flatMap { $0.file.packs.map(\.id) })
    guard !named.isEmpty else { return covered }
    let stored = try await StoredIndex.load(target, tolerant: true)
    var known = Set<Entry>()
    for f in stored.files {
      for p in f.file.packs where named.contains(p.id) {
        for b in p.blobs { known.insert(Entry(pack: p.id, blob: b)) }
      }
    }
    for c in candidates where !c.file.packs.isEmpty {
      let all = c.file.packs.allSatisfy { p in p.blobs.allSatisfy { known.contains(Entry(pack: p.id, blob: $0)) } }
      if all { covered.insert(c.name) }
    }
    return covered
  }
}

/// A sync that finished what it could but found damaged source files: what was copied, and the error.
public struct ReplicaError: Error, CustomStringConvertible, Sendable {
  public var stats: ReplicaStats
  public var error: TidemarkError
  public var description: String { error.description }
}

extension ReplicaStats {
  /// The JSON summary `replicate --json` prints: whether it succeeded, what was copied, already there or skipped,
  /// and `error` (a failed sync's message), so monitoring can tell a partial sync from a complete one.
  public func json(created: Bool, target: String, error: String?) -> [UInt8] {
    var w = JSONWriter()
    w.raw("{\"message_type\":\"summary\",\"ok\":\(error == nil),\"target\":")
    w.string(target)
    w.raw(",\"created\":\(created)")
    w.raw(",\"packs_copied\":\(packsCopied),\"pack_bytes\":\(packBytes)")
    w.raw(",\"index_files_copied\":\(indexFilesCopied),\"index_bytes\":\(indexBytes)")
    w.raw(",\"snapshots_copied\":\(snapshotsCopied),\"snapshot_bytes\":\(snapshotBytes)")
    w.raw(",\"bytes_copied\":\(bytesCopied)")
    w.raw(
      ",\"packs_present\":\(packsPresent),\"index_files_present\":\(indexFilesPresent),\"index_files_covered\":\(indexFilesCovered),\"snapshots_present\":\(snapshotsPresent)"
    )
    w.raw(
      ",\"packs_skipped\":\(packsSkipped),\"index_files_skipped\":\(indexFilesSkipped),\"snapshots_skipped\":\(snapshotsSkipped)"
    )
    w.raw(",\"notes\":")
    w.stringArray(notes)
    if let error {
      w.raw(",\"error\":")
      w.string(error)
    }
    w.raw(",\"duration_seconds\":")
    w.raw(String(format: "%.3f", seconds))
    w.raw("}\n")
    return w.out
  }
}
