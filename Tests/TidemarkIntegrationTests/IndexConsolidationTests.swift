// Index consolidation and the replica's coverage rule, with restic as the oracle: many backups with a
// consolidation after each keep the index file count bounded and the repository checks clean with every snapshot
// readable; a consolidation that fails between writing and removing leaves a repository restic accepts; a replica
// does not copy back index files its own index already covers, yet copies every one it does not cover exactly.
// Consolidation and prune leave index files under retention (S3 Object Lock) alone, and prune their packs too.
import Foundation
import Synchronization
import Testing
import TidemarkBackends
import TidemarkCore
import TidemarkOperations
import TidemarkSystem

private let password = Array("test-pw".utf8)
private let fastKDF: (n: UInt64, r: UInt64, p: UInt64) = (1024, 8, 1)

/// A tiny source directory backed up through the library (no child process per backup, so hundreds are quick).
private struct TinySource {
  let ws: Workspace
  let repo: Repository
  var last: SnapshotID? = nil
  var round = 0
  var src: String { ws.sub("src") }

  init(_ ws: Workspace, repo: String) async throws {
    self.ws = ws
    try FileManager.default.createDirectory(atPath: ws.sub("src"), withIntermediateDirectories: true)
    try Data("unchanging\n".utf8).write(to: URL(fileURLWithPath: ws.sub("src/constant")))
    self.repo = try await Repository.initialize(
      backend: LocalBackend(path: BytePath(ws.sub(repo))), password: password, kdf: fastKDF)
  }

  /// Changes `src/round` to this round's number and backs up: one new data blob, new trees, one index file.
  mutating func backup() async throws -> SnapshotID {
    try Data("round \(round)\n".utf8).write(to: URL(fileURLWithPath: ws.sub("src/round")))
    var o = BackupOptions()
    o.paths = [BytePath(src)]
    o.host = "consolidation-test"
    o.parent = last
    guard let id = try await Backup(repository: repo, options: o).run().snapshotID else {
      throw TidemarkError(.general, "backup wrote no snapshot")
    }
    last = id
    round += 1
    return id
  }
}

/// Every (pack, blob) entry of the repository's index files, duplicates collapsed.
private func indexEntries(_ repo: Repository) async throws -> Set<String> {
  var out = Set<String>()
  for f in try await StoredIndex.load(repo).files {
    for p in f.file.packs {
      for b in p.blobs { out.insert("\(p.id.hex) \(b.id.hex) \(b.type.name) \(b.offset) \(b.length)") }
    }
  }
  return out
}

private func indexCount(_ b: any Backend) async throws -> Int { try await b.list(.index).count }

/// The content of `src/round` in a snapshot, read through a freshly opened repository (its index loaded from
/// the stored files only).
private func roundFile(_ repo: Repository, _ snapshot: Snapshot, src: String) async throws -> String {
  var tree = try await repo.loadTree(snapshot.tree)
  for c in BytePath(src).components {
    guard let sub = tree.node(named: c)?.subtree else { throw TidemarkError(.notFound, "no \(src) in the snapshot") }
    tree = try await repo.loadTree(sub)
  }
  guard let content = tree.node(named: Array("round".utf8))?.content else {
    throw TidemarkError(.notFound, "no file `round` in the snapshot")
  }
  var bytes: [UInt8] = []
  for blob in content { bytes += try await repo.loadBlob(blob) }
  return String(decoding: bytes, as: UTF8.self)
}

/// A local backend that counts index file loads and, given `allowedIndexRemovals`, fails removals of index files
/// once that many went through (a crash between a consolidation's writes and its removals, or amid the removals).
private final class InstrumentedBackend: Backend {
  let base: any Backend
  let allowed: Int
  let removed = Mutex(0)
  let indexLoads = Mutex(0)
  init(_ path: String, allowedIndexRemovals: Int = .max) {
    base = LocalBackend(path: BytePath(path))
    allowed = allowedIndexRemovals
  }
  var location: String { base.location }
  func create() async throws { try await base.create() }
  func save(_ h: Handle, data: [UInt8]) async throws { try await base.save(h, data: data) }
  func load(_ h: Handle, offset: Int, length: Int) async throws -> [UInt8] {
    if h.type == .index { indexLoads.withLock { $0 += 1 } }
    return try await base.load(h, offset: offset, length: length)
  }
  func size(_ h: Handle) async throws -> Int { try await base.size(h) }
  func list(_ type: FileType) async throws -> [FileInfo] { try await base.list(type) }
  func remove(_ h: Handle) async throws {
    if h.type == .index {
      let ok = removed.withLock { n in
        guard n < allowed else { return false }
        n += 1
        return true
      }
      guard ok else { throw TidemarkError(.general, "simulated crash before removing \(h)") }
    }
    try await base.remove(h)
  }
}

/// A local backend that keeps some files under retention, as S3 Object Lock does: `retainedUntil` names their date
/// and `remove` refuses them with `FileRetained`.
private final class RetainingBackend: Backend {
  let base: any Backend
  let retained: Mutex<Set<Handle>>
  let until = Date().addingTimeInterval(86400)
  init(_ path: String, retained: Set<Handle>) {
    base = LocalBackend(path: BytePath(path))
    self.retained = Mutex(retained)
  }
  var location: String { base.location }
  func create() async throws { try await base.create() }
  func save(_ h: Handle, data: [UInt8]) async throws { try await base.save(h, data: data) }
  func load(_ h: Handle, offset: Int, length: Int) async throws -> [UInt8] {
    try await base.load(h, offset: offset, length: length)
  }
  func size(_ h: Handle) async throws -> Int { try await base.size(h) }
  func list(_ type: FileType) async throws -> [FileInfo] { try await base.list(type) }
  func remove(_ h: Handle) async throws {
    if retained.withLock({ $0.contains(h) }) { throw FileRetained(h, until: until) }
    try await base.remove(h)
  }
  func retainedUntil(_ h: Handle) async throws -> Date? { retained.withLock { $0.contains(h) } ? until : nil }
}

/// Consolidates as the replication cycle would: under an exclusive lock.
private func consolidateLocked(_ repo: Repository, maxFiles: Int) async throws -> IndexConsolidationStats {
  let lock = try await RepositoryLock.acquire(repo, exclusive: true)
  do {
    let st = try await IndexConsolidation.run(repo, maxFiles: maxFiles)
    await lock.release()
    return st
  } catch {
    await lock.release()
    throw error
  }
}

@Suite(.serialized) struct IndexConsolidationTests {
  /// Index files under retention are neither merged (that would only add a file, at every run until their date)
  /// nor counted against the bound; the others are merged as usual.
  @Test func retainedIndexFilesAreLeftAlone() async throws {
    let ws = try Workspace("consolidate-retained")
    var site = try await TinySource(ws, repo: "repo")
    for _ in 0..<6 { _ = try await site.backup() }
    let all = try await site.repo.backend.list(.index).map { Handle(.index, $0.name) }.sorted { $0.name < $1.name }
    #expect(all.count == 6)
    let kept = Set(all.prefix(3))
    let backend = RetainingBackend(ws.sub("repo"), retained: kept)
    let repo = try await Repository.open(backend: backend, password: password)
    let entries = try await indexEntries(repo)
    let st = try await consolidateLocked(repo, maxFiles: 2)
    #expect(st.indexFilesMerged == 3 && st.indexFilesRemoved == 3, "\(st)")
    let after = Set(try await backend.list(.index).map { Handle(.index, $0.name) })
    #expect(kept.isSubset(of: after) && after.count == 3 + st.indexFilesWritten, "\(after)")
    #expect(try await indexEntries(repo) == entries)
    // Three unretained files or fewer now: within the bound, nothing is written.
    let again = try await consolidateLocked(repo, maxFiles: 2)
    #expect(again.indexFilesMerged == 0 && again.indexFilesWritten == 0, "\(again)")
    let check = try ws.restic(["-r", ws.sub("repo"), "check"])
    #expect(check.status == 0, "\(check.out) \(check.stderr)")
  }

  /// Prune plans around retention: a retained index file stays, and so does every pack it names, even those no
  /// snapshot needs any more; nothing is repacked into packs that could not replace the old ones.
  @Test func prunePlansAroundARetainedIndexFile() async throws {
    let ws = try Workspace("prune-retained")
    var site = try await TinySource(ws, repo: "repo")
    let first = try await site.backup()
    let firstIndex = try await site.repo.backend.list(.index).map { Handle(.index, $0.name) }
    _ = try await site.backup()
    #expect(firstIndex.count == 1)
    try await Forget.remove(site.repo, [first])
    // Without retention prune would delete or repack packs the first index file names.
    let plain = try await Prune.run(
      site.repo,
      options: {
        var o = PruneOptions(); o.dryRun = true; return o
      }()
    ) { _ in }
    #expect(plain.packsRemove + plain.packsRepack > 0, "\(plain)")

    let backend = RetainingBackend(ws.sub("repo"), retained: Set(firstIndex))
    let repo = try await Repository.open(backend: backend, password: password)
    let packsBefore = Set(try await backend.list(.pack).map(\.name))
    let firstPacks = Set(
      try IndexFile(json: try await repo.loadUnpacked(firstIndex[0])).packs.map(\.id.hex))
    let lock = try await RepositoryLock.acquire(repo, exclusive: true)
    let st = try await Prune.run(repo, options: PruneOptions()) { _ in }
    await lock.release()
    #expect(st.retained.count == 1 && st.retained.contains(firstIndex[0]), "\(st.retained.until)")
    #expect(st.packsRemove == 0 && st.packsRepack == 0 && st.repackWrittenBytes == 0, "\(st)")
    let packsAfter = Set(try await backend.list(.pack).map(\.name))
    #expect(firstPacks.isSubset(of: packsAfter) && packsAfter.isSubset(of: packsBefore))
    #expect(try await backend.list(.index).contains { $0.name == firstIndex[0].name })
    let check = try ws.restic(["-r", ws.sub("repo"), "check"])
    #expect(check.status == 0, "\(check.out) \(check.stderr)")
  }

  @Test func threeHundredBackupsWithConsolidationStayBoundedAndCheckClean() async throws {
    let ws = try Workspace("consolidate-300")
    var site = try await TinySource(ws, repo: "repo")
    let bound = 32
    var snapshots: [SnapshotID] = []
    var merges = 0
    var most = 0
    for i in 0..<300 {
      snapshots.append(try await site.backup())
      let before = try await indexCount(site.repo.backend)
      let entriesBefore = before > bound ? try await indexEntries(site.repo) : []
      let st = try await IndexConsolidation.run(site.repo, maxFiles: bound)
      let after = try await indexCount(site.repo.backend)
      most = max(most, after)
      #expect(after <= bound, "round \(i): \(after) index files after consolidation")
      if before > bound {
        merges += 1
        #expect(st.indexFilesMerged == before && st.indexFilesRemoved == before && st.indexFilesWritten == 1)
        #expect(after == 1)
        #expect(try await indexEntries(site.repo) == entriesBefore, "round \(i): entries changed")
        // The new file records the ones it replaced.
        let name = try await site.repo.backend.list(.index)[0].name
        let file = try IndexFile(json: try await site.repo.loadUnpacked(Handle(.index, name)))
        #expect(file.supersedes.count == before)
      } else {
        #expect(st.indexFilesWritten == 0 && st.indexFilesRemoved == 0 && after == before)
      }
    }
    #expect(merges >= 8, "only \(merges) consolidations in 300 rounds")
    #expect(most <= bound)

    let check = try ws.restic(["-r", "repo", "check", "--read-data"])
    #expect(check.status == 0, "\(check.out) \(check.stderr)")
    #expect(try resticSnapshotIDs(ws, "repo") == Set(snapshots.map(\.hex)))
    // Every snapshot's changing file, through a repository opened afresh (index from the stored files only).
    let reopened = try await Repository.open(backend: LocalBackend(path: BytePath(ws.sub("repo"))), password: password)
    try await reopened.loadIndex()
    for (i, id) in snapshots.enumerated() {
      let s = try await reopened.loadSnapshot(id)
      #expect(try await roundFile(reopened, s, src: site.src) == "round \(i)\n")
    }
    // And restic restores the first, a middle and the last one.
    for i in [0, 150, 299] {
      let r = try ws.restic(["-r", "repo", "restore", snapshots[i].hex, "--target", "r\(i)"])
      #expect(r.status == 0, "\(r.stderr)")
      let got = try String(contentsOfFile: ws.sub("r\(i)") + site.src + "/round", encoding: .utf8)
      #expect(got == "round \(i)\n")
    }
  }

  @Test func withinTheBoundNothingIsWrittenAndACrashBeforeOrDuringRemovalLeavesAnAcceptedRepository() async throws {
    for allowed in [0, 10] {
      let ws = try Workspace("consolidate-crash")
      var site = try await TinySource(ws, repo: "repo")
      for _ in 0..<40 { _ = try await site.backup() }
      let names = Set(try await site.repo.backend.list(.index).map(\.name))
      #expect(names.count == 40)
      let entries = try await indexEntries(site.repo)

      // At the bound: untouched.
      let none = try await consolidateLocked(site.repo, maxFiles: 40)
      #expect(none.indexFilesWritten == 0 && none.indexFilesRemoved == 0)
      #expect(Set(try await site.repo.backend.list(.index).map(\.name)) == names)

      // Over it, with removals failing after `allowed`: new files saved, some or none of the old ones gone.
      let failing = InstrumentedBackend(ws.sub("repo"), allowedIndexRemovals: allowed)
      let crashing = try await Repository.open(backend: failing, password: password)
      await #expect(throws: (any Error).self) { try await IndexConsolidation.run(crashing, maxFiles: 32) }
      let left = Set(try await site.repo.backend.list(.index).map(\.name))
      // The new file is there; of the old ones, at most `allowed` are gone.
      #expect(left.subtracting(names).count == 1 && left.count >= 41 - allowed, "\(left.count) index files")
      if allowed == 0 { #expect(left.count == 41) }
      #expect(try await indexEntries(site.repo) == entries)
      _ = try Tools.sh("rm -f repo/locks/*", cwd: ws.path)
      let check = try ws.restic(["-r", "repo", "check", "--read-data"])
      #expect(check.status == 0, "removals allowed \(allowed): \(check.out) \(check.stderr)")

      // A later run over the bound (fewer than 32 may be left) merges old and new, identical entries once.
      let st = try await consolidateLocked(site.repo, maxFiles: 8)
      #expect(st.indexFilesMerged == left.count && st.indexFilesWritten == 1)
      #expect(st.duplicateEntries > 0 && st.entries == entries.count)
      #expect(try await indexCount(site.repo.backend) == 1)
      #expect(try await indexEntries(site.repo) == entries)
      let after = try ws.restic(["-r", "repo", "check", "--read-data"])
      #expect(after.status == 0 && !after.out.contains("several indexes"), "\(after.out) \(after.stderr)")
      #expect(try resticSnapshotIDs(ws, "repo").count == 40)
    }
  }

  @Test func replicaDoesNotCopyBackIndexFilesItsIndexCoversButCopiesNewOnes() async throws {
    let ws = try Workspace("consolidate-replica")
    var site = try await TinySource(ws, repo: "dc")
    for _ in 0..<40 { _ = try await site.backup() }
    let dc = site.repo
    let dr = try await Replica.create(
      source: dc, target: LocalBackend(path: BytePath(ws.sub("dr"))), password: password, kdf: fastKDF)
    let first = try await Replica.sync(source: dc, target: dr)
    #expect(first.indexFilesCopied == 40 && first.snapshotsCopied == 40 && first.indexFilesCovered == 0)

    // The usual cycle: a backup's index file names new packs; the target's index is not read.
    _ = try await site.backup()
    let counting = InstrumentedBackend(ws.sub("dr"))
    let drCounted = try await Repository.open(backend: counting, key: dc.key, keyID: dr.keyID)
    let usual = try await Replica.sync(source: dc, target: drCounted)
    #expect(usual.indexFilesCopied == 1 && usual.indexFilesCovered == 0 && usual.snapshotsCopied == 1)
    #expect(counting.indexLoads.withLock { $0 } == 0)

    // The target consolidates: the source's 41 files are missing there by name, but covered.
    #expect(try await consolidateLocked(dr, maxFiles: 32).indexFilesWritten == 1)
    for _ in 0..<2 {
      let s = try await Replica.sync(source: dc, target: dr)
      #expect(s.indexFilesCopied == 0 && s.indexFilesCovered == 41 && s.packsCopied == 0, "\(s)")
      #expect(s.snapshotsCopied == 0 && s.snapshotsSkipped == 0 && s.notes.isEmpty, "\(s.notes)")
      #expect(try await indexCount(dr.backend) == 1)
    }

    // The source consolidates too: its one new file is covered as well.
    #expect(try await consolidateLocked(dc, maxFiles: 32).indexFilesWritten == 1)
    let afterBoth = try await Replica.sync(source: dc, target: dr)
    #expect(afterBoth.indexFilesCopied == 0 && afterBoth.indexFilesCovered == 1 && afterBoth.bytesCopied == 0)
    #expect(try await indexCount(dr.backend) == 1)

    // A new backup: its index file names new packs and is copied, with its snapshot.
    let newest = try await site.backup()
    let next = try await Replica.sync(source: dc, target: dr)
    #expect(next.indexFilesCopied == 1 && next.indexFilesCovered == 1 && next.snapshotsCopied == 1, "\(next)")
    #expect(next.packsCopied >= 1)
    #expect(try await indexCount(dr.backend) == 2)
    let check = try ws.restic(["-r", "dr", "check", "--read-data"])
    #expect(check.status == 0, "\(check.out) \(check.stderr)")
    let ids = try resticSnapshotIDs(ws, "dr")
    let sourceIDs = try resticSnapshotIDs(ws, "dc")
    #expect(ids.contains(newest.hex) && ids == sourceIDs)
  }

  @Test func anIndexFileNamingAPackTheTargetHasButDoesNotIndexIsCopied() async throws {
    let ws = try Workspace("consolidate-exact")
    var site = try await TinySource(ws, repo: "dc")
    for _ in 0..<3 { _ = try await site.backup() }
    let dc = site.repo
    let dr = try await Replica.create(
      source: dc, target: LocalBackend(path: BytePath(ws.sub("dr"))), password: password, kdf: fastKDF)
    _ = try await Replica.sync(source: dc, target: dr)
    let oldPacks = Set(try await dc.backend.list(.pack).map(\.name))

    // A backup whose packs reach the target without their index (as a sync interrupted before publishing the
    // index leaves it); then the source merges everything into one file: old, covered entries and new ones.
    let newest = try await site.backup()
    let newPacks = try await dc.backend.list(.pack).map(\.name).filter { !oldPacks.contains($0) }
    #expect(!newPacks.isEmpty)
    for p in newPacks {
      let path = "data/\(p.prefix(2))/\(p)"
      _ = try Tools.sh("mkdir -p dr/data/\(p.prefix(2)) && cp dc/\(path) dr/\(path)", cwd: ws.path)
    }
    #expect(try await IndexConsolidation.run(dc, maxFiles: 0).indexFilesWritten == 1)

    let s = try await Replica.sync(source: dc, target: dr)
    #expect(s.packsCopied == 0, "the packs were there already")
    #expect(s.indexFilesCopied == 1 && s.indexFilesCovered == 0, "\(s)")
    #expect(s.snapshotsCopied == 1)
    let check = try ws.restic(["-r", "dr", "check", "--read-data"])
    #expect(check.status == 0, "\(check.out) \(check.stderr)")
    #expect(try resticSnapshotIDs(ws, "dr").contains(newest.hex))
    // Now every entry is on the target: the next sync copies nothing.
    let again = try await Replica.sync(source: dc, target: dr)
    #expect(again.bytesCopied == 0 && again.indexFilesCovered == 0 && again.indexFilesPresent == 1)
  }
}
