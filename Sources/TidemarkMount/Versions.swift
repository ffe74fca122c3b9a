// `versions/<host>/<absolute path>`: one path followed through every snapshot of a host.
//
// A directory there lists the union of the names found at that path in the host's snapshots; every name is
// again a versions directory. Where the path is a file (or a symlink, a device, …) the directory also holds one
// entry per version, named by the time of the snapshot that first holds it, oldest first. A version is a
// maximal run of snapshots (those that hold the path; others are skipped) with the same content: for files the
// same blob list, for symlinks the same target, for devices the same type and number. So A, B, A shows three
// entries, and the entry with the greatest time at or before T is what the path held at T.
//
// Nothing is computed until a path is looked at. What is known about a path (`VersionsNode`) is the directory
// tree found there in each snapshot, deduplicated by tree ID: the next path component is looked up once per
// distinct tree, not once per snapshot, and the trees themselves come through the mount's tree cache. Nodes
// are kept in a cache bounded in bytes (CacheBudget.versions) and recomputed from their parent's when they
// were let go or when the host's snapshots changed (a refresh). A version entry is an ordinary tree node to the
// rest of the mount: its inode is entered in the InodeTable (its tree and position), so attributes, reads,
// links and extended attributes are served exactly as below a snapshot directory.
import Foundation
import Synchronization
import TidemarkCore
import TidemarkFUSE

/// One host's snapshots, oldest first, with their names in the mount.
struct HostHistory: Sendable {
  var snapshots: [Snapshot]
  /// Each snapshot's name: its time (`--time-template`), with -1, -2, … for equal times, exactly as in
  /// `hosts/<host>/`, so that a version names the snapshot directory it comes from.
  var names: [[UInt8]]
  /// Changes when the host's snapshots do (a hash of their IDs): cached nodes of another generation are stale.
  var generation: UInt64

  init(snapshots: [Snapshot], timeTemplate: String) {
    self.snapshots = snapshots.sorted { ($0.time, $0.id!) < ($1.time, $1.id!) }
    var seen: [[UInt8]: Int] = [:]
    names = self.snapshots.map {
      let name = Array(GoTime.format($0.time, layout: timeTemplate).utf8)
      let n = seen[name, default: 0]
      seen[name] = n + 1
      return n > 0 ? name + Array("-\(n)".utf8) : name
    }
    var h = InodeHasher()
    for s in self.snapshots { h.add(s.id?.raw.bytes ?? []) }
    generation = h.value
  }
}

/// One version of a non-directory path: the first snapshot of the run and where its node is.
struct Version: Sendable {
  var name: [UInt8]
  var snapshot: SnapshotID
  /// The directory tree holding the node (an index into the parent path's `VersionsNode.trees`), and its slot.
  var tree: Int32
  var slot: UInt32
  var mode: UInt32
}

/// A path below `versions/<host>/` across the host's snapshots.
struct VersionsNode: Sendable {
  var generation: UInt64
  /// For each snapshot of the host, oldest first: the index in `trees` of the directory tree at this path, or
  /// -1 where the path is no directory (absent, or a file); empty when it is a directory in no snapshot.
  var at: [Int32]
  /// The distinct directory trees at this path.
  var trees: [BlobID]
  /// The versions where the path is not a directory, oldest first.
  var versions: [Version] = []
  /// The directory trees the versions' nodes are in (the parent path's `trees`).
  var versionTrees: [BlobID] = []
  /// Owner, permissions and time of the newest snapshot's node at this path, for the directory's attributes.
  var uid: UInt32 = 0
  var gid: UInt32 = 0
  var perm: UInt32 = 0o555
  var time = Timestamp(seconds: 0, nanoseconds: 0, offset: 0)
  /// Whether any snapshot holds this path.
  var exists: Bool { !versions.isEmpty || !trees.isEmpty }

  /// The host's root: every snapshot's tree.
  init(root h: HostHistory) {
    generation = h.generation
    var index: [BlobID: Int32] = [:]
    var trees: [BlobID] = []
    var at: [Int32] = []
    at.reserveCapacity(h.snapshots.count)
    for s in h.snapshots {
      if let i = index[s.tree] {
        at.append(i)
      } else {
        index[s.tree] = Int32(trees.count)
        at.append(Int32(trees.count))
        trees.append(s.tree)
      }
    }
    self.at = at
    self.trees = trees
    uid = getuid()
    gid = getgid()
    time = h.snapshots.last?.time ?? time
  }

  private init(generation: UInt64) {
    self.generation = generation
    at = []
    trees = []
  }

  /// What a name in this directory is across the snapshots; `parsed[j]` is the tree `trees[j]`.
  func child(_ name: [UInt8], history h: HostHistory, parsed: [Tree]) -> VersionsNode {
    var c = VersionsNode(generation: generation)
    c.at = Array(repeating: -1, count: at.count)
    c.versionTrees = trees
    let slots = parsed.map { SnapshotFS.find(name, in: $0.nodes) }
    var index: [BlobID: Int32] = [:]
    /// What makes two non-directory nodes the same version.
    struct Key: Equatable {
      var type: NodeType
      var content: [BlobID]?
      var target: [UInt8]
      var device: UInt64
    }
    var last: Key? = nil
    var newest: Node? = nil
    var newestTime = c.time
    for (i, j) in at.enumerated() where j >= 0 {
      guard let slot = slots[Int(j)] else { continue }
      let n = parsed[Int(j)].nodes[slot]
      newest = n
      newestTime = h.snapshots[i].time
      if n.type == .dir, let sub = n.subtree {
        if let k = index[sub] {
          c.at[i] = k
        } else {
          c.at[i] = Int32(index.count)
          index[sub] = c.at[i]
          c.trees.append(sub)
        }
        last = nil  // a directory in between ends a file's run
        continue
      }
      let key = Key(type: n.type, content: n.content, target: n.linkTarget, device: n.device)
      if key != last {
        c.versions.append(
          Version(
            name: h.names[i], snapshot: h.snapshots[i].id!, tree: j, slot: UInt32(slot), mode: SnapshotFS.stMode(n)))
        last = key
      }
    }
    if c.versions.isEmpty { c.versionTrees = [] }
    if c.trees.isEmpty { c.at = [] }  // a file's path has no directories to follow: no per-snapshot list
    if let n = newest {
      c.uid = n.uid
      c.gid = n.gid
      let p = GoMode.permissions(n.mode) & 0o777
      // A file's versions directory can be entered by whoever could read the file.
      c.perm = n.type == .dir ? p : p | ((p & 0o444) >> 2)
      c.time = newestTime
    }
    return c
  }

  /// The names of this directory's entries across the snapshots, sorted, without duplicates.
  static func union(_ parsed: [Tree]) -> [[UInt8]] {
    var all = Set<[UInt8]>()
    for t in parsed { for n in t.nodes { all.insert(n.name) } }
    return all.sorted { $0.lexicographicallyPrecedes($1) }
  }

  /// What the node occupies in the versions cache, estimated.
  var cost: Int {
    128 + at.count * 4 + (trees.count + versionTrees.count) * MemoryLayout<BlobID>.stride
      + versions.reduce(0) { $0 + MemoryLayout<Version>.stride + 32 + $1.name.count }
  }
}

/// The versions directories the kernel holds below `versions/<host>/`, with the kernel's lookup counts. Each
/// keeps its parent and its name (the path is found by walking up to the host directory, which the kernel
/// holds while it holds anything below it) and the attributes it was last looked up with.
struct VersionsTable {
  struct Entry {
    var parent: UInt64
    var name: [UInt8]
    var lookups: UInt64
    var uid: UInt32
    var gid: UInt32
    var perm: UInt32
    var time: Timestamp
  }
  private var entries: [UInt64: Entry] = [:]

  var count: Int { entries.count }

  func entry(_ ino: UInt64) -> Entry? { entries[ino] }

  mutating func lookedUp(_ ino: UInt64, parent: UInt64, name: [UInt8], node: VersionsNode) {
    if let i = entries.index(forKey: ino) {
      entries.values[i].lookups += 1
      entries.values[i].uid = node.uid
      entries.values[i].gid = node.gid
      entries.values[i].perm = node.perm
      entries.values[i].time = node.time
      return
    }
    entries[ino] = Entry(
      parent: parent, name: name, lookups: 1, uid: node.uid, gid: node.gid, perm: node.perm, time: node.time)
  }

  mutating func forget(_ ino: UInt64, count: UInt64) {
    guard let i = entries.index(forKey: ino) else { return }
    if entries.values[i].lookups > count {
      entries.values[i].lookups -= count
      return
    }
    entries.remove(at: i)
    if entries.capacity > 1 << 14 && entries.count < entries.capacity / 8 {
      entries = Dictionary(uniqueKeysWithValues: entries.lazy.map { ($0.key, $0.value) })
    }
  }
}

extension SnapshotFS {
  /// A versions directory's path: its host's history, the host directory's inode and the names below it.
  struct VersionsPath {
    var history: HostHistory
    var host: UInt64
    var names: [[UInt8]]
  }

  /// The path of versions directory `ino` (a host directory or below); nil when `ino` is no such directory.
  func versionsPath(_ ino: UInt64) -> VersionsPath? {
    var names: [[UInt8]] = []
    var cur = ino
    while true {
      if let v = top.withLock({ $0.entries[cur] }) {
        guard case .history(let h) = v.kind else { return nil }
        return VersionsPath(history: h, host: cur, names: names.reversed())
      }
      guard let e = versionsTable.withLock({ $0.entry(cur) }) else { return nil }
      names.append(e.name)
      cur = e.parent
    }
  }

  func isVersionsDirectory(_ ino: UInt64) -> Bool {
    if versionsTable.withLock({ $0.entry(ino) }) != nil { return true }
    if case .history? = top.withLock({ $0.entries[ino]?.kind }) { return true }
    return false
  }

  static func versionsInode(parent: UInt64, name: [UInt8]) -> UInt64 {
    hashInode(le(parent) + [0x76, 0] + name)
  }

  /// A version entry's number: its snapshot is part of it, so a name that comes to mean another version (a
  /// forgotten snapshot shifts a run's start) is another inode, and cached pages are never served for it.
  static func versionInode(parent: UInt64, _ v: Version) -> UInt64 {
    hashInode(le(parent) + [0x76, 1] + v.name + v.snapshot.raw.bytes)
  }

  private func cachedVersionsNode(_ ino: UInt64, _ h: HostHistory) -> VersionsNode? {
    versionsCache.withLock { c in
      guard let n = c.get(ino) else { return nil }
      if n.generation == h.generation { return n }
      c.remove(ino)
      return nil
    }
  }

  private func keepVersionsNode(_ ino: UInt64, _ n: VersionsNode) {
    versionsCache.withLock { $0.insert(ino, n, cost: n.cost) }
  }

  /// The parsed trees `ids` if all are in memory (never waits).
  private func cachedTrees(_ ids: [BlobID]) throws -> [Tree]? {
    var out: [Tree] = []
    out.reserveCapacity(ids.count)
    for id in ids {
      guard let t = try cachedTree(id) else {
        trees.prefetch(ids)
        return nil
      }
      out.append(t)
    }
    return out
  }

  private func loadTrees(_ ids: [BlobID]) async throws -> [Tree] {
    trees.prefetch(ids)
    var out: [Tree] = []
    out.reserveCapacity(ids.count)
    for id in ids { out.append(try await loadTree(id)) }
    return out
  }

  /// Where making the node of versions directory `ino` starts: the deepest of the directories on its path (from
  /// the host directory down) whose node is cached, or the host's root; then the names and inodes below it.
  private func versionsStart(_ ino: UInt64) throws -> (
    history: HostHistory, node: VersionsNode, below: [(name: [UInt8], ino: UInt64)]
  ) {
    guard let p = versionsPath(ino) else { throw FUSEError(ENOENT) }
    var chain: [(name: [UInt8], ino: UInt64)] = []
    var cur = p.host
    for name in p.names {
      cur = SnapshotFS.versionsInode(parent: cur, name: name)
      chain.append((name, cur))
    }
    for k in chain.indices.reversed() {
      if let n = cachedVersionsNode(chain[k].ino, p.history) { return (p.history, n, Array(chain[(k + 1)...])) }
    }
    return (p.history, VersionsNode(root: p.history), chain)
  }

  /// Versions directory `ino` from the cache or from what is in memory; nil when a tree must be loaded.
  func versionsNodeNow(_ ino: UInt64) throws -> VersionsNode? {
    var (h, node, below) = try versionsStart(ino)
    for (name, next) in below {
      guard let parsed = try cachedTrees(node.trees) else { return nil }
      node = node.child(name, history: h, parsed: parsed)
      keepVersionsNode(next, node)
    }
    return node
  }

  func versionsNode(_ ino: UInt64) async throws -> VersionsNode {
    var (h, node, below) = try versionsStart(ino)
    for (name, next) in below {
      node = node.child(name, history: h, parsed: try await loadTrees(node.trees))
      keepVersionsNode(next, node)
    }
    return node
  }

  /// Looks `name` up in versions directory `parent` (node `p`): a name found at that path in some snapshot is a
  /// versions directory (it wins over a version of the same name), else a version entry. `tree` gives a parsed
  /// tree, nil when it must be loaded first; only the trees the answer needs are asked for.
  private func versionsLookup(
    parent: UInt64, name: [UInt8], node p: VersionsNode, tree: (BlobID) throws -> Tree?
  ) throws -> FUSEAttributes? {
    if !p.trees.isEmpty {
      guard let h = versionsPath(parent)?.history else { throw FUSEError(ENOENT) }
      var parsed: [Tree] = []
      for id in p.trees {
        guard let t = try tree(id) else { return nil }
        parsed.append(t)
      }
      let c = p.child(name, history: h, parsed: parsed)
      if c.exists {
        let ino = SnapshotFS.versionsInode(parent: parent, name: name)
        keepVersionsNode(ino, c)
        versionsTable.withLock { $0.lookedUp(ino, parent: parent, name: name, node: c) }
        return versionsAttributes(ino, uid: c.uid, gid: c.gid, perm: c.perm, time: c.time)
      }
    }
    guard let v = p.versions.first(where: { $0.name == name }) else { throw FUSEError(ENOENT) }
    let id = p.versionTrees[Int(v.tree)]
    guard let t = try tree(id) else { return nil }
    guard Int(v.slot) < t.nodes.count else { throw FUSEError(EIO) }
    let ino = SnapshotFS.versionInode(parent: parent, v)
    nodes.withLock { $0.lookedUp(ino, tree: id, root: parent, slot: Int(v.slot), subtree: nil) }
    var a = attributes(t.nodes[Int(v.slot)], ino: ino)
    a.timeout = 1  // the name may come to mean another version when snapshots are forgotten
    return a
  }

  func versionsLookupNow(parent: UInt64, name: [UInt8]) throws -> FUSEAttributes? {
    guard let p = try versionsNodeNow(parent) else { return nil }
    return try versionsLookup(parent: parent, name: name, node: p) { id in
      if let t = try cachedTree(id) { return t }
      trees.prefetch(CollectionOfOne(id))
      return nil
    }
  }

  func versionsLookup(parent: UInt64, name: [UInt8]) async throws -> FUSEAttributes {
    let p = try await versionsNode(parent)
    // The trees this lookup needs, loaded first, then looked up again from those held here: a tree the cache
    // lets go meanwhile is not loaded a second time.
    var held: [BlobID: Tree] = [:]
    for _ in 0..<3 {
      var missing: BlobID? = nil
      let a = try versionsLookup(parent: parent, name: name, node: p) { id in
        if let t = try held[id] ?? cachedTree(id) { return t }
        missing = id
        return nil
      }
      if let a { return a }
      guard let id = missing else { throw FUSEError(EIO) }
      if p.trees.contains(id) {
        for t in p.trees where held[t] == nil { held[t] = try await loadTree(t) }
      } else {
        held[id] = try await loadTree(id)
      }
    }
    throw FUSEError(EIO)
  }

  func versionsAttributes(_ ino: UInt64) -> FUSEAttributes? {
    guard let e = versionsTable.withLock({ $0.entry(ino) }) else { return nil }
    return versionsAttributes(ino, uid: e.uid, gid: e.gid, perm: e.perm, time: e.time)
  }

  private func versionsAttributes(_ ino: UInt64, uid: UInt32, gid: UInt32, perm: UInt32, time: Timestamp)
    -> FUSEAttributes
  {
    var a = FUSEAttributes(ino: ino, mode: 0o040000 | perm)
    a.nlink = 2
    a.uid = uid
    a.gid = gid
    a.mtime = (time.seconds, Int64(time.nanoseconds))
    a.atime = a.mtime
    a.ctime = a.mtime
    a.timeout = 1  // a refresh may add names and versions
    return a
  }

  /// The entries of a versions directory: the names found at its path, then its versions (oldest first).
  func versionsListing(_ ino: UInt64, node: VersionsNode, parsed: [Tree]) -> [FUSEDirEntry] {
    let names = VersionsNode.union(parsed)
    var out = names.map {
      FUSEDirEntry(name: $0, ino: SnapshotFS.versionsInode(parent: ino, name: $0), mode: 0o040555)
    }
    let taken = Set(names)
    for v in node.versions where !taken.contains(v.name) {
      out.append(FUSEDirEntry(name: v.name, ino: SnapshotFS.versionInode(parent: ino, v), mode: v.mode))
    }
    return out
  }

  func versionsReaddirNow(_ ino: UInt64) throws -> [FUSEDirEntry]? {
    guard let n = try versionsNodeNow(ino), let parsed = try cachedTrees(n.trees) else { return nil }
    return versionsListing(ino, node: n, parsed: parsed)
  }

  func versionsReaddir(_ ino: UInt64) async throws -> [FUSEDirEntry] {
    let n = try await versionsNode(ino)
    return versionsListing(ino, node: n, parsed: try await loadTrees(n.trees))
  }
}
