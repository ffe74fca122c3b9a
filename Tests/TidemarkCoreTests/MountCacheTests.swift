// The mount's caches: what a sweep of the blob cache (CLOCK) evicts first, the inode table, the cache budget,
// and a walk that stays within it.
import Foundation
import Testing
import TidemarkBackends
import TidemarkCore
import TidemarkFUSE
import TidemarkSystem

@testable import TidemarkMount

@Suite struct MountCacheTests {
  /// A reader has used A; B and C were fetched ahead of it. When D arrives, A goes, not the unread B.
  @Test func blobsFetchedAheadOutliveOnesAlreadyRead() {
    var c = ClockCache<String, Int>(limit: 3)
    c.insert("A", 1, cost: 1)
    #expect(c.get("A") == 1)
    c.insert("B", 2, cost: 1, wanted: true)
    c.insert("C", 3, cost: 1, wanted: true)
    c.insert("D", 4, cost: 1, wanted: true)
    #expect(!c.contains("A") && c.contains("B") && c.contains("C") && c.contains("D") && c.cost == 3)
    // Entries nobody marked go first, oldest first; a read gives an entry its second chance back.
    c.insert("E", 5, cost: 1)
    #expect(!c.contains("B") && c.contains("C") && c.contains("D") && c.contains("E"))
    #expect(c.get("C") == 3)
    c.insert("F", 6, cost: 1)
    #expect(c.contains("C") && c.contains("F") && c.count == 3)
  }

  /// The newest entry stays even when it alone is over the limit.
  @Test func anOversizedEntryStaysAlone() {
    var c = ClockCache<Int, [UInt8]>(limit: 10)
    c.insert(1, [1], cost: 4)
    c.insert(2, [2], cost: 20)
    #expect(!c.contains(1) && c.contains(2) && c.count == 1 && c.cost == 20)
  }

  /// A removed entry gives its cost back; its old place in the queue is skipped, and it can come back.
  @Test func removedEntriesFreeTheirCostAndMayReturn() {
    var c = ClockCache<String, Int>(limit: 3)
    for k in ["A", "B", "C"] { c.insert(k, 0, cost: 1) }
    c.remove("A")
    c.remove("nothing")
    #expect(!c.contains("A") && c.cost == 2 && c.count == 2)
    c.insert("D", 4, cost: 1)
    #expect(c.contains("B") && c.contains("C") && c.contains("D") && c.cost == 3)
    c.insert("A", 1, cost: 1)
    #expect(c.get("A") == 1 && c.count == 3 && c.cost == 3 && !c.contains("B"))
  }
}

/// The mount's inode table and cache budget, and a walk of a real repository under a budget far smaller than
/// its trees: every cache stays within its share, and what was evicted is loaded again, unchanged.
@Suite struct MountMemoryTests {
  /// Runs Debian's restic on the repository `repo` under `dir` (password "pw", no cache), from `dir`.
  static func restic(in dir: URL, _ args: [String]) throws {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/restic")
    p.arguments = ["-q", "-r", dir.appendingPathComponent("repo").path, "--no-cache"] + args
    p.environment = ["RESTIC_PASSWORD": "pw", "PATH": "/usr/bin:/bin"]
    p.currentDirectoryURL = dir
    try p.run()
    p.waitUntilExit()
    try #require(p.terminationStatus == 0, "restic \(args)")
  }

  @Test func inodeTableCountsLookupsSharesDirectoriesAndForgets() {
    var t = InodeTable()
    let a = BlobID(RawID.hash([1])), b = BlobID(RawID.hash([2])), sub = BlobID(RawID.hash([3]))
    t.lookedUp(100, tree: a, root: 7, slot: 0, subtree: nil)
    t.lookedUp(101, tree: a, root: 7, slot: 1, subtree: sub)
    t.lookedUp(100, tree: a, root: 7, slot: 0, subtree: nil)
    t.lookedUp(200, tree: b, root: 7, slot: 3, subtree: nil)
    #expect(t.count == 3 && t.placeCount == 2)
    #expect(t.locate(100)?.slot == 0 && t.locate(101)?.place.tree == a && t.locate(200)?.slot == 3)
    #expect(t.directory(101)?.tree == sub && t.directory(101)?.root == 7 && t.directory(100) == nil)
    // Two lookups of 100: one forget leaves it, the second removes it.
    t.forget(100, count: 1)
    #expect(t.contains(100))
    t.forget(100, count: 1)
    t.forget(101, count: 5)
    #expect(!t.contains(100) && !t.contains(101) && t.directory(101) == nil && t.count == 1 && t.placeCount == 1)
    // The freed directory record is reused.
    t.lookedUp(300, tree: sub, root: 9, slot: 2, subtree: nil)
    #expect(t.placeCount == 2 && t.locate(300)?.place.root == 9)
    t.forget(999, count: 1)
    #expect(t.count == 2)
  }

  @Test func cacheSizesParseWithUnitsAndShareOutTheBudget() {
    #expect(CacheBudget.parse("64") == 64 << 20)
    #expect(CacheBudget.parse("128M") == 128 << 20 && CacheBudget.parse("128MiB") == 128 << 20)
    #expect(CacheBudget.parse("1G") == 1 << 30 && CacheBudget.parse("512k") == 512 << 10)
    #expect(CacheBudget.parse("4096B") == 4096 && CacheBudget.parse("2 GiB") == 2 << 30)
    for bad in ["", "M", "-5", "0", "12X", "1.5G", "99999999999G"] { #expect(CacheBudget.parse(bad) == nil, "\(bad)") }
    let b = CacheBudget(total: 128 << 20)
    #expect(b.total == 128 << 20 && b.blobs == 64 << 20 && b.trees == 40 << 20 && b.listings == 16 << 20)
    #expect(CacheBudget(total: 1000).total == 1000)
  }

  /// A tree's estimated size grows with what its nodes hold.
  @Test func treeCostCountsNodesAndWhatTheyPointTo() {
    var small = Node(name: Array("a".utf8), type: .file)
    small.content = [BlobID(RawID.hash([1]))]
    var large = small
    large.name = Array(repeating: 0x61, count: 200)
    large.content = (0..<100).map { BlobID(RawID.hash([UInt8($0)])) }
    let one = TreeCache.cost(Tree(nodes: [small]))
    #expect(one >= MemoryLayout<Node>.stride + 32)
    #expect(TreeCache.cost(Tree(nodes: [large])) >= one + 199 + 99 * 32)
    #expect(TreeCache.cost(Tree(nodes: [small, small])) > one + MemoryLayout<Node>.stride)
  }

  @Test func aWalkUnderATinyBudgetStaysWithinItAndReadsEverythingBack() async throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tm-mount-mem-\(UUID().uuidString)")
    defer { try? FileManager.default.removeItem(at: dir) }
    // 40 directories of 30 files (a few hundred bytes to 20 KiB each), two levels deep; made by restic.
    let src = dir.appendingPathComponent("data")
    var rng = SystemRandomNumberGenerator()
    var expected: [String: [UInt8]] = [:]
    for d in 0..<40 {
      let sub = src.appendingPathComponent("g\(d % 4)/d\(d)")
      try FileManager.default.createDirectory(at: sub, withIntermediateDirectories: true)
      for f in 0..<30 {
        let bytes = (0..<Int.random(in: 300...20_000, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        try Data(bytes).write(to: sub.appendingPathComponent("file-\(f).bin"))
        expected["g\(d % 4)/d\(d)/file-\(f).bin"] = bytes
      }
    }
    for args in [["init"], ["backup", "data"]] { try Self.restic(in: dir, args) }
    let repo = try await Repository.open(
      backend: LocalBackend(path: BytePath(dir.appendingPathComponent("repo").path)), password: Array("pw".utf8))
    var options = MountOptions()
    options.cacheBytes = 64 << 10
    let budget = CacheBudget(total: options.cacheBytes)
    let fs = SnapshotFS(repository: repo, options: options)
    try await fs.refresh()

    // Down the virtual top to the snapshot's `data` directory.
    var ino = SnapshotFS.rootIno
    for name in ["ids"] { ino = try await fs.lookup(parent: ino, name: Array(name.utf8)).ino }
    let ids = try await fs.readdir(ino: ino).entries
    try #require(ids.count == 1)
    ino = try await fs.lookup(parent: ino, name: ids[0].name).ino
    let data = try await fs.lookup(parent: ino, name: Array("data".utf8)).ino

    // The largest tree and listing here: a cache may hold one entry over its share (the newest stays).
    let biggestTree = TreeCache.cost(Tree(nodes: Array(repeating: Node(name: [], type: .file), count: 30))) + 30 * 96
    let biggestListing = 64 + 30 * (MemoryLayout<FUSEDirEntry>.stride + 48)
    var seen: [String: [UInt8]] = [:]
    var firstFile: (ino: UInt64, size: Int64)? = nil
    func walk(_ ino: UInt64, _ path: String) async throws {
      for e in try await fs.readdir(ino: ino).entries {
        let name = String(decoding: e.name, as: UTF8.self)
        let a = try await fs.lookup(parent: ino, name: e.name)
        let p = path.isEmpty ? name : path + "/" + name
        if a.mode & 0o170000 == 0o040000 {
          try await walk(a.ino, p)
        } else {
          var bytes: [UInt8] = []
          while true {
            let piece = try await fs.read(ino: a.ino, handle: 0, offset: Int64(bytes.count), size: 7000)
            let n = piece.reduce(0) { $0 + $1.count }
            if n == 0 { break }
            for s in piece { bytes += s }
          }
          seen[p] = bytes
          if firstFile == nil { firstFile = (a.ino, a.size) }
        }
        let u = fs.usage
        #expect(u.treeBytes <= budget.trees + biggestTree, "trees: \(u.treeBytes) bytes in \(u.trees)")
        #expect(u.listingBytes <= budget.listings + biggestListing, "listings: \(u.listingBytes) bytes")
        #expect(u.fileBytes <= budget.files + 1024, "files: \(u.fileBytes) bytes")
      }
    }
    try await walk(data, "")
    #expect(seen.count == expected.count)
    #expect(seen == expected, "contents differ after eviction")
    // The first file's directory tree left the cache long ago: asking for it loads it again.
    let first = try #require(firstFile)
    #expect(try fs.getattrNow(ino: first.ino) == nil, "the first directory's tree was never evicted")
    #expect(try await fs.getattr(ino: first.ino).size == first.size)
    #expect(fs.usage.inodes == expected.count + 40 + 4 + 1)  // files, their directories, g0-g3, data
    // The kernel forgetting what it looked up empties the table.
    fs.forget(ino: first.ino, count: 1)
    await #expect(throws: FUSEError.self) { _ = try await fs.getattr(ino: first.ino) }
  }
}

extension MountMemoryTests {
  /// `versions/<host>/<path>` across 500 snapshots that share three trees, under a budget too small for even one
  /// of the big directory's trees: each distinct tree is parsed a handful of times, not once per snapshot, the
  /// versions cache stays within its share, and every version reads back.
  @Test func versionsFollowAPathThroughFiveHundredSnapshotsParsingEachTreeOnce() async throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tm-mount-versions-\(UUID().uuidString)")
    defer { try? FileManager.default.removeItem(at: dir) }
    let big = dir.appendingPathComponent("data/g0/d0")
    try FileManager.default.createDirectory(at: big, withIntermediateDirectories: true)
    // 300 names make the directory's tree far larger than the tree cache's share.
    for f in 0..<300 { try Data("\(f)".utf8).write(to: big.appendingPathComponent("other-\(f).txt")) }
    func restic(_ args: [String]) throws { try MountMemoryTests.restic(in: dir, args) }
    try restic(["init"])
    let versions = ["one", "two", "three"]
    for v in versions {
      try Data(v.utf8).write(to: big.appendingPathComponent("file.txt"))
      try restic(["backup", "--host", "vh", "data"])
    }
    let repo = try await Repository.open(
      backend: LocalBackend(path: BytePath(dir.appendingPathComponent("repo").path)), password: Array("pw".utf8))
    let real = try await repo.listSnapshots().sorted { $0.time < $1.time }
    try #require(real.count == 3)
    for i in 0..<497 {
      // Runs of ten snapshots over one tree, cycling three, one, two, …: 3 + 49 versions.
      var s = Snapshot(
        time: Timestamp(seconds: real[2].time.seconds + 3600 + Int64(i) * 300, nanoseconds: 0, offset: 0),
        tree: real[(i / 10 + 2) % 3].tree, paths: real[0].paths)
      s.hostname = "vh"
      _ = try await repo.saveUnpacked(.snapshot, json: s.encode())
    }

    var options = MountOptions()
    options.cacheBytes = 64 << 10
    let budget = CacheBudget(total: options.cacheBytes)
    let fs = SnapshotFS(repository: repo, options: options)
    try await fs.refresh()
    var ino = SnapshotFS.rootIno
    for name in ["versions", "vh", "data", "g0", "d0"] {
      ino = try await fs.lookup(parent: ino, name: Array(name.utf8)).ino
    }
    #expect(try await fs.readdir(ino: ino).entries.count == 301)
    let file = try await fs.lookup(parent: ino, name: Array("file.txt".utf8)).ino
    let entries = try await fs.readdir(ino: file).entries
    #expect(entries.count == 52)
    // Four directories on the way (root, data, g0, d0), three trees each: without sharing them across snapshots
    // the tree cache, which cannot hold d0's trees, would parse them again for nearly every run of snapshots.
    let walked = fs.usage
    print("versions walk: \(walked.treesParsed) trees parsed; versions cache \(walked.versionBytes) bytes")
    #expect(walked.treesParsed <= 24, "\(walked.treesParsed) trees parsed")
    var contents: [String] = []
    for e in entries {
      let a = try await fs.lookup(parent: file, name: e.name)
      #expect(a.mode & 0o170000 == 0o100000)
      let bytes = try await fs.read(ino: a.ino, handle: 0, offset: 0, size: 100).reduce([], +)
      contents.append(String(decoding: bytes, as: UTF8.self))
    }
    #expect(contents == versions + (1..<50).map { versions[($0 + 2) % 3] })
    // Reading a version parses its tree when the cache let it go, once per version, as below a snapshot.
    let read = fs.usage
    #expect(read.treesParsed - walked.treesParsed <= 2 * entries.count, "\(read.treesParsed) trees parsed")
    // The versions cache keeps to its share, but for the newest node (the file's, with its 52 versions).
    let fileNode = 128 + 3 * 32 + 52 * (MemoryLayout<Version>.stride + 32 + entries[0].name.count)
    #expect(read.versionBytes <= budget.versions + fileNode, "versions cache: \(read.versionBytes) bytes")
  }
}
