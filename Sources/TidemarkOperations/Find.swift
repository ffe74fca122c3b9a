// Finding things in snapshots (`restic find`): nodes whose path matches patterns, and the files and
// directories that use given blobs, e.g. the blobs of a damaged pack. Results go to closures or come back as
// values; never prints. Concurrency: `uses` loads and scans each distinct tree once, several at a time, and
// shares the result between every place (and snapshot) the tree appears.
import Synchronization
import TidemarkCore

/// What `find PATTERN...` looks for.
public struct FindCriteria: Sendable {
  public var patterns: [FindPattern]
  public var ignoreCase: Bool
  /// Only nodes modified at or after `oldest` and at or before `newest`.
  public var oldest: Timestamp?
  public var newest: Timestamp?

  /// Refuses a malformed pattern (e.g. an unclosed `[`) before any snapshot is searched.
  public func validate() throws {
    for p in patterns {
      do {
        _ = try p.matches(Array("/x".utf8))
      } catch {
        throw TidemarkError(.usage, "\(error)")
      }
    }
  }

  public init(patterns: [String], ignoreCase: Bool = false, oldest: Timestamp? = nil, newest: Timestamp? = nil) {
    self.patterns = patterns.map {
      FindPattern(ignoreCase ? String(decoding: goLowercased(Array($0.utf8)), as: UTF8.self) : $0)
    }
    self.ignoreCase = ignoreCase
    self.oldest = oldest
    self.newest = newest
  }
}

/// Blob IDs to look for: full IDs, and 8-digit short IDs (restic's short form) matched against IDs' first digits.
public struct BlobSelector: Sendable {
  public var ids: Set<BlobID>
  public var shortIDs: Set<String>
  public init(ids: Set<BlobID> = [], shortIDs: Set<String> = []) {
    self.ids = ids
    self.shortIDs = shortIDs
  }
  /// IDs as given on the command line: 64 hex digits are full IDs, anything else a short ID.
  public init(refs: [String]) {
    self.init()
    for r in refs {
      if let id = BlobID(hex: r) { ids.insert(id) } else { shortIDs.insert(r) }
    }
  }

  /// The data blobs and the tree blobs of `blobs` (e.g. a pack's), as two selectors.
  public static func split(_ blobs: [PackedBlob]) -> (data: BlobSelector, trees: BlobSelector) {
    var (data, trees) = (BlobSelector(), BlobSelector())
    for b in blobs {
      if b.type == .data { data.ids.insert(b.id) } else { trees.ids.insert(b.id) }
    }
    return (data, trees)
  }

  public var isEmpty: Bool { ids.isEmpty && shortIDs.isEmpty }
  public func contains(_ id: BlobID) -> Bool {
    ids.contains(id) || (!shortIDs.isEmpty && shortIDs.contains(id.short))
  }
}

/// A place a blob is used: a data blob in a file's content, or a tree blob as a directory's contents.
public struct BlobUse: Sendable {
  public var snapshot: SnapshotID
  /// The file or directory (`/` for the snapshot's root tree).
  public var path: [UInt8]
  public var blob: BlobID
  public var type: BlobType
  /// The tree holding the file's or directory's node; nil for a snapshot's root tree.
  public var parentTree: BlobID?

  /// restic's `find --blob/--tree --json` object for this use, in a snapshot taken at `time`.
  public func json(time: Timestamp) -> [UInt8] {
    var w = JSONWriter()
    w.raw("{\"object_type\":\"\(type == .data ? "blob" : "tree")\",\"id\":\"\(blob.hex)\",\"path\":")
    w.string(path)
    if let p = parentTree, type == .data { w.raw(",\"parent_tree\":\"\(p.hex)\"") }
    w.raw(",\"snapshot\":\"\(snapshot.hex)\",\"time\":\"\(time.rfc3339Nano)\"}")
    return w.out
  }
}

/// A tree that could not be loaded: nothing below `path` could be searched.
public struct UnreadableTree: Sendable {
  public var snapshot: SnapshotID
  public var path: [UInt8]
  public var tree: BlobID
  public var error: String
}

public struct BlobUseReport: Sendable {
  /// Per snapshot in the order given, then in walk order (name order, a directory before its contents, a
  /// file's blobs in content order).
  public var uses: [BlobUse] = []
  public var unreadable: [UnreadableTree] = []
}

/// The blobs of a pack.
public struct PackContents: Sendable {
  public var blobs: [PackedBlob]
  /// Why the pack's own header could not be used (missing or damaged pack); the blobs then come from the index.
  public var headerError: String?
}

public enum Find {
  /// Walks `snapshot` and calls `match` for each node that matches, in restic's walk order. Directories no pattern
  /// can match below are not walked. A tree that cannot be loaded goes to `unreadable` and the walk goes on.
  public static func matches(
    in snapshot: Snapshot, cache: TreeCache, criteria: FindCriteria,
    match: (_ path: [UInt8], _ node: Node) -> Void,
    unreadable: (_ path: [UInt8], _ tree: BlobID, _ error: any Error) -> Void
  ) async throws {
    try await TreeWalk.walk(
      snapshot.tree, cache: cache,
      visit: { path, node, _ in
        let normalized = criteria.ignoreCase ? goLowercased(path) : path
        var found = false
        for p in criteria.patterns {
          if try p.matches(normalized) {
            found = true
            break
          }
        }
        var descend = true
        if node.type == .dir {
          descend = false
          for p in criteria.patterns {
            if try p.childMayMatch(normalized) {
              descend = true
              break
            }
          }
        }
        if !found { return descend ? .descend : .skip }
        if let o = criteria.oldest, node.mtime < o { return descend ? .descend : .skip }
        if let n = criteria.newest, n < node.mtime { return descend ? .descend : .skip }
        match(path, node)
        return .descend
      },
      unreadable: { path, tree, error in unreadable(path, tree, error) })
  }

  /// Every use of the selected blobs in `snapshots`: data blobs in files' contents, tree blobs as directories
  /// (and as a snapshot's root). Each distinct tree is loaded once, `concurrentLoads` at a time.
  public static func uses(
    data: BlobSelector, trees: BlobSelector, in snapshots: [Snapshot], repo: Repository, concurrentLoads: Int = 8
  ) async -> BlobUseReport {
    let finder = UseFinder(repo: repo, data: data, trees: trees, loads: AsyncSemaphore(concurrentLoads))
    finder.start(snapshots.map(\.tree))
    var report = BlobUseReport()
    for s in snapshots {
      guard let sid = s.id else { continue }
      if trees.contains(s.tree) {
        report.uses.append(BlobUse(snapshot: sid, path: [47], blob: s.tree, type: .tree, parentTree: nil))
      }
      let r = await finder.result(s.tree)
      for u in r.uses {
        report.uses.append(
          BlobUse(snapshot: sid, path: [47] + u.path, blob: u.blob, type: u.type, parentTree: u.parentTree))
      }
      for e in r.unreadable {
        report.unreadable.append(UnreadableTree(snapshot: sid, path: [47] + e.path, tree: e.tree, error: e.error))
      }
    }
    return report
  }

  /// The blobs of `pack`, from its header; from the index when the header cannot be read. (The index keeps one
  /// place per blob, so blobs also stored in another pack may be missing from that answer.)
  public static func contents(of pack: PackID, repo: Repository) async -> PackContents {
    do {
      return PackContents(blobs: try await repo.loadPackHeader(pack), headerError: nil)
    } catch {
      let blobs = repo.index.allEntries.filter { $0.pack == pack }.map(\.blob).sorted { $0.offset < $1.offset }
      return PackContents(blobs: blobs, headerError: "\(error)")
    }
  }
}

extension Find {
  /// restic's `find --json` object for a matching node: path and permissions, then the node's fields but name,
  /// inode, extended attributes, device, content and subtree.
  public static func nodeJSON(_ w: inout JSONWriter, _ path: [UInt8], _ n: Node) {
    w.raw("{\"path\":")
    w.string(path)
    w.raw(",\"permissions\":")
    w.string(GoFormat.fileMode(n.mode))
    w.raw(",\"type\":\"\(n.type.rawValue)\"")
    if n.mode != 0 { w.raw(",\"mode\":\(n.mode)") }
    w.raw(",\"mtime\":\"\(n.mtime.rfc3339Nano)\",\"atime\":\"\(n.atime.rfc3339Nano)\"")
    w.raw(",\"ctime\":\"\(n.ctime.rfc3339Nano)\",\"uid\":\(n.uid),\"gid\":\(n.gid)")
    if !n.user.isEmpty {
      w.raw(",\"user\":")
      w.string(n.user)
    }
    if !n.group.isEmpty {
      w.raw(",\"group\":")
      w.string(n.group)
    }
    if n.deviceID != 0 { w.raw(",\"device_id\":\(n.deviceID)") }
    if n.size != 0 { w.raw(",\"size\":\(n.size)") }
    if n.links != 0 { w.raw(",\"links\":\(n.links)") }
    if !n.linkTarget.isEmpty {
      w.raw(",\"linktarget\":")
      w.string(n.linkTarget)
    }
    w.raw("}")
  }

  /// Where `--show-pack-id` finds an object searched for.
  public enum PackLocation: Sendable, Equatable {
    /// Not an ID (a short ID that matched nothing found).
    case unparsable(String)
    /// Not in the index as a blob of the type searched.
    case notIndexed(BlobID)
    case found(BlobID, IndexEntry)
  }

  /// The pack of each ID in `selector` (short ones resolved through the uses found, in `report`), in the order of
  /// the IDs' text.
  public static func packLocations(
    of selector: BlobSelector, type: BlobType, report: BlobUseReport, index: MasterIndex
  ) -> [PackLocation] {
    var refs = Set(selector.ids.map(\.hex))
    for s in selector.shortIDs {
      refs.insert(report.uses.first(where: { $0.type == type && $0.blob.short == s })?.blob.hex ?? s)
    }
    return refs.sorted().map { ref in
      guard let id = BlobID(hex: ref) else { return .unparsable(ref) }
      guard let e = index.lookup(id), e.blob.type == type else { return .notIndexed(id) }
      return .found(id, e)
    }
  }
}

/// restic's `find --json` document, written as matches come: `[{"matches":[node,…],"hits":n,"snapshot":"…"},…]`,
/// or `[]` when nothing matches.
public struct FindMatchesJSON: Sendable {
  private var opened = false
  public init() {}

  /// A match, `hit` its number within its snapshot (from 0), with what precedes it.
  public mutating func match(_ path: [UInt8], _ node: Node, hit: Int) -> [UInt8] {
    var w = JSONWriter()
    if hit == 0 {
      w.raw(opened ? ",{\"matches\":[" : "[{\"matches\":[")
      opened = true
    } else {
      w.raw(",")
    }
    Find.nodeJSON(&w, path, node)
    return w.out
  }

  /// Closes the object of a snapshot that had `hits` matches.
  public func snapshotEnd(_ id: SnapshotID, hits: Int) -> [UInt8] {
    Array("],\"hits\":\(hits),\"snapshot\":\"\(id.hex)\"}".utf8)
  }

  /// Closes the document (without the newline).
  public var end: String { opened ? "]" : "[]" }
}

/// Per-tree search results, memoized: a tree shared by many snapshots or places is scanned once.
private final class UseFinder: Sendable {
  struct RelUse: Sendable {
    var path: [UInt8]
    var blob: BlobID
    var type: BlobType
    var parentTree: BlobID?
  }
  struct RelUnreadable: Sendable {
    var path: [UInt8]
    var tree: BlobID
    var error: String
  }
  struct TreeResult: Sendable {
    var uses: [RelUse] = []
    var unreadable: [RelUnreadable] = []
  }
  enum Slot {
    case running(Task<TreeResult, Never>)
    case done(TreeResult)
  }

  let repo: Repository
  let data: BlobSelector
  let trees: BlobSelector
  let loads: AsyncSemaphore
  let memo = Mutex<[BlobID: Slot]>([:])

  init(repo: Repository, data: BlobSelector, trees: BlobSelector, loads: AsyncSemaphore) {
    self.repo = repo
    self.data = data
    self.trees = trees
    self.loads = loads
  }

  /// Starts the search of the trees not started yet.
  func start(_ ids: [BlobID]) {
    memo.withLock { m in
      for id in ids where m[id] == nil { m[id] = .running(Task { await self.compute(id) }) }
    }
  }

  func result(_ id: BlobID) async -> TreeResult {
    start([id])
    switch memo.withLock({ $0[id]! }) {
    case .done(let r): return r
    case .running(let t): return await t.value
    }
  }

  private func compute(_ id: BlobID) async -> TreeResult {
    await loads.acquire()
    let tree: Tree
    do {
      tree = try await repo.loadTree(id)
      loads.release()
    } catch {
      loads.release()
      return finish(id, TreeResult(unreadable: [RelUnreadable(path: [], tree: id, error: "\(error)")]))
    }
    let nodes = TreeWalk.sortedNodes(tree)
    start(nodes.compactMap { $0.type == .dir ? $0.subtree : nil })
    var out = TreeResult()
    for n in nodes {
      if n.type == .file {
        for b in n.content ?? [] where data.contains(b) {
          out.uses.append(RelUse(path: n.name, blob: b, type: .data, parentTree: id))
        }
      }
      guard n.type == .dir, let sub = n.subtree else { continue }
      if trees.contains(sub) { out.uses.append(RelUse(path: n.name, blob: sub, type: .tree, parentTree: id)) }
      let r = await result(sub)
      for u in r.uses {
        out.uses.append(RelUse(path: n.name + [47] + u.path, blob: u.blob, type: u.type, parentTree: u.parentTree))
      }
      for e in r.unreadable {
        out.unreadable.append(
          RelUnreadable(path: e.path.isEmpty ? n.name : n.name + [47] + e.path, tree: e.tree, error: e.error))
      }
    }
    return finish(id, out)
  }

  private func finish(_ id: BlobID, _ r: TreeResult) -> TreeResult {
    memo.withLock { $0[id] = .done(r) }
    return r
  }
}

extension Find {
  /// The blobs of the packs named (full IDs or 8-digit short IDs), from their headers, or from the index for
  /// packs that are missing (`fromIndex`) or whose header cannot be read (`damaged`, with the reason).
  public static func packBlobs(_ repo: Repository, _ refs: [String]) async throws -> (
    blobs: [PackedBlob], fromIndex: [PackID], damaged: [String]
  ) {
    let stored = try await repo.backend.list(.pack).compactMap { PackID(hex: $0.name) }
    var wanted = Set(refs)
    var fromBackend: [PackID] = []
    for id in stored.sorted() where wanted.contains(id.hex) || wanted.contains(id.short) {
      fromBackend.append(id)
    }
    for id in fromBackend {
      wanted.remove(id.hex)
      wanted.remove(id.short)
    }
    var fromIndex: [PackID] = []
    if !wanted.isEmpty {
      for id in repo.index.packIDs.sorted() where wanted.contains(id.hex) || wanted.contains(id.short) {
        fromIndex.append(id)
      }
      for id in fromIndex {
        wanted.remove(id.hex)
        wanted.remove(id.short)
      }
    }
    guard wanted.isEmpty else {
      throw TidemarkError(.notFound, "unable to find pack(s): [\(wanted.sorted().joined(separator: " "))]")
    }
    var blobs: [PackedBlob] = []
    var damaged: [String] = []
    for id in fromBackend + fromIndex {
      let c = await contents(of: id, repo: repo)
      if let e = c.headerError, fromBackend.contains(id) { damaged.append("\(id.short) (\(e))") }
      blobs += c.blobs
    }
    return (blobs, fromIndex, damaged)
  }
}
