// Repository statistics with restic's counting modes (`restic stats`). Returns numbers; never prints.
import Synchronization
import TidemarkCore

public enum StatsMode: String, Sendable, CaseIterable {
  /// Every node of every snapshot, sizes of hard-linked files once per snapshot: what a restore writes.
  case restoreSize = "restore-size"
  /// Files unique by content (the sequence of their blob IDs), across all snapshots.
  case filesByContents = "files-by-contents"
  /// The stored (encrypted, compressed) size of every blob the snapshots reference, each once.
  case rawData = "raw-data"
  /// For files unique by content: each of their blobs once per path.
  case blobsPerFile = "blobs-per-file"

  /// `stats --mode`, refused with the modes there are when unknown.
  public init(parsing text: String) throws {
    guard let m = StatsMode(rawValue: text) else {
      throw TidemarkError(
        .usage, "unknown counting mode: \(text)",
        hint: "use restore-size, files-by-contents, blobs-per-file or raw-data")
    }
    self = m
  }
}

public struct RepositoryStats: Sendable {
  public var totalSize: UInt64 = 0
  public var totalFileCount: UInt64 = 0
  public var totalBlobCount: UInt64 = 0
  public var snapshotsCount = 0
  /// raw-data on a version 2 repository: what the blobs would take uncompressed (encrypted, as restic counts).
  public var totalUncompressedSize: UInt64 = 0
  /// raw-data: stored and uncompressed size of the compressed blobs alone.
  public var compressedBlobsSize: UInt64 = 0
  public var compressedBlobsUncompressedSize: UInt64 = 0

  public init() {}

  /// Uncompressed / stored size of the compressed blobs (0 when none is compressed).
  public var compressionRatio: Double {
    compressedBlobsSize == 0 ? 0 : Double(compressedBlobsUncompressedSize) / Double(compressedBlobsSize)
  }
  /// Percentage of the data (by uncompressed size) that is stored compressed.
  public var compressionProgress: Double {
    totalUncompressedSize == 0 ? 0 : Double(compressedBlobsUncompressedSize) / Double(totalUncompressedSize) * 100
  }
  /// Percentage of space compression saves.
  public var compressionSpaceSaving: Double {
    totalUncompressedSize == 0 ? 0 : (1 - Double(totalSize) / Double(totalUncompressedSize)) * 100
  }

  /// restic 0.14's `stats --json` document (`total_file_count` always present), plus restic 0.16's compression
  /// fields when non-zero.
  public var json: String {
    var w = JSONWriter()
    w.raw("{\"total_size\":")
    w.number(totalSize)
    if totalUncompressedSize > 0 {
      w.raw(",\"total_uncompressed_size\":")
      w.number(totalUncompressedSize)
    }
    for (key, value) in [
      ("compression_ratio", compressionRatio), ("compression_progress", compressionProgress),
      ("compression_space_saving", compressionSpaceSaving),
    ] where value != 0 {
      w.raw(",\"\(key)\":")
      w.number(value)
    }
    w.raw(",\"total_file_count\":")
    w.number(totalFileCount)
    if totalBlobCount > 0 {
      w.raw(",\"total_blob_count\":")
      w.number(totalBlobCount)
    }
    w.raw(",\"snapshots_count\":")
    w.number(snapshotsCount)
    w.raw("}")
    return String(decoding: w.out, as: UTF8.self)
  }

  /// Counts `snapshots` (in this order, which blobs-per-file depends on) the way restic 0.14 does.
  public static func compute(
    _ repo: Repository, snapshots: [Snapshot], mode: StatsMode, cache: TreeCache? = nil
  ) async throws -> RepositoryStats {
    let cache = cache ?? TreeCache(repo: repo)
    var stats = RepositoryStats()
    stats.snapshotsCount = snapshots.count
    switch mode {
    case .rawData:
      try await stats.countRawData(repo, snapshots.map(\.tree))
    case .restoreSize:
      for s in snapshots {
        var inodes = Set<UInt64>()
        try await walk(s, cache) { _, n in
          stats.totalFileCount += 1
          if n.inode == 0 || inodes.insert(n.inode).inserted { stats.totalSize += n.size }
          return .descend
        }
      }
    case .filesByContents, .blobsPerFile:
      // A tree walked once holds only files whose contents were counted then: it need not be walked again,
      // in this snapshot or any other (restic skips it within a snapshot; the result is the same).
      var walked = Set<BlobID>()
      var uniqueFiles = Set<[BlobID]>()
      var fileBlobs: [[UInt8]: Set<BlobID>] = [:]
      for s in snapshots {
        try await walk(s, cache) { path, n in
          if n.type == .dir, let sub = n.subtree, !walked.insert(sub).inserted { return .skip }
          guard uniqueFiles.insert(n.content ?? []).inserted else { return .descend }
          if mode == .filesByContents {
            stats.totalSize += n.size
            stats.totalFileCount += 1
            return .descend
          }
          for blob in n.content ?? [] {
            if fileBlobs[path] == nil {
              fileBlobs[path] = []
              stats.totalFileCount += 1
            }
            guard fileBlobs[path]!.insert(blob).inserted else { continue }
            guard let e = repo.index.lookup(blob), e.blob.type == .data else {
              throw TidemarkError.corrupt(
                "data blob \(blob.short) of \(String(decoding: path, as: UTF8.self)) is not in the index",
                hint: "run `restic check`")
            }
            stats.totalSize += UInt64(e.blob.plainLength)
            stats.totalBlobCount += 1
          }
          return .descend
        }
      }
    }
    return stats
  }

  private static func walk(
    _ s: Snapshot, _ cache: TreeCache, _ visit: (_ path: [UInt8], _ node: Node) throws -> WalkAction
  ) async throws {
    try await TreeWalk.walk(
      s.tree, cache: cache, visit: { path, node, _ in try visit(path, node) },
      unreadable: { path, tree, error in
        throw TidemarkError.corrupt(
          "snapshot \(s.id?.short ?? "?"): cannot load tree \(tree.short) (\(String(decoding: path, as: UTF8.self))): \(error)"
        )
      })
  }

  /// Collects every tree and data blob the trees reference (each tree loaded once, several at a time), then
  /// adds up their stored sizes from the index.
  private mutating func countRawData(_ repo: Repository, _ roots: [BlobID]) async throws {
    var trees = Set<BlobID>()
    var data = Set<BlobID>()
    var level = roots.filter { trees.insert($0).inserted }
    while !level.isEmpty {
      let found = Mutex<[(subtrees: [BlobID], blobs: [BlobID])]>([])
      try await forEachConcurrently(level, limit: 8) { id in
        let t = try await repo.loadTree(id)
        var subtrees: [BlobID] = []
        var blobs: [BlobID] = []
        for n in t.nodes {
          if n.type == .file { blobs += n.content ?? [] }
          if n.type == .dir, let s = n.subtree { subtrees.append(s) }
        }
        found.withLock { $0.append((subtrees, blobs)) }
      }
      level = []
      for f in found.withLock({ $0 }) {
        data.formUnion(f.blobs)
        level += f.subtrees.filter { trees.insert($0).inserted }
      }
    }
    for (ids, type) in [(trees, BlobType.tree), (data, BlobType.data)] {
      for id in ids {
        guard let e = repo.index.lookup(id), e.blob.type == type else {
          throw TidemarkError.corrupt("\(type.name) blob \(id.short) is not in the index", hint: "run `restic check`")
        }
        totalSize += UInt64(e.blob.length)
        totalBlobCount += 1
        if repo.config.version >= 2 {
          // As restic counts it: the uncompressed length plus the encryption overhead.
          let uncompressed = UInt64(e.blob.plainLength + MasterKey.overhead)
          totalUncompressedSize += uncompressed
          if e.blob.isCompressed {
            compressedBlobsSize += UInt64(e.blob.length)
            compressedBlobsUncompressedSize += uncompressed
          }
        }
      }
    }
  }
}
