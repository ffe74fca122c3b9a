// TidemarkMount: the repository as a read-only filesystem of snapshots (restic's layout).
//
//   ids/<short id>/   snapshots/<time>/   hosts/<host>/<time>/   tags/<tag>/<time>/   (+ `latest` links)
//   .tidemark/status.json   maps every snapshot directory back to repository + snapshot (for restore)
//
// The top of the tree ("virtual" entries) is rebuilt from the snapshot list on every refresh; below a
// snapshot directory, trees load lazily when a directory is visited and are forgotten when the kernel
// forgets their inodes. Inode numbers are hashes of (parent inode, name), so they are stable across
// refreshes and remounts; hard-linked files share one number within a snapshot directory.
import Foundation
import Synchronization
import TidemarkCore
import TidemarkFUSE

public struct MountOptions: Sendable {
  /// restic's `--path-template`s: `%i` short ID, `%I` long ID, `%u` user, `%h` host, `%t` tag, `%T` time.
  public var pathTemplates = ["ids/%i", "snapshots/%T", "hosts/%h/%T", "tags/%t/%T"]
  /// restic's `--time-template` (a Go layout).
  public var timeTemplate = "2006-01-02T15:04:05Z07:00"
  public var hosts: [String] = []
  public var tags: [String] = []
  public var paths: [String] = []
  /// Seconds between looks for new (and forgotten) snapshots.
  public var refresh: Double = 30
  /// Upper bound for cached blob plaintext.
  public var cacheBytes = 64 << 20
  public var mountpoint = ""
  /// The abstract socket that hands the master key to `tidemark restore` (root or this user), if any.
  public var keySocket: String? = nil
  /// Let other users access the mount (FUSE's allow_other).
  public var allowOther = false
  public init() {}
}

public final class SnapshotFS: FUSEFilesystem {
  let repo: Repository
  let options: MountOptions
  let blobs: BlobStore
  let trees: TreeCache
  /// The virtual top of the tree, replaced as a whole on refresh.
  let top = Mutex<Top>(Top())
  /// Tree nodes the kernel holds (lookup counts), by inode.
  let nodes = Mutex<[UInt64: NodeInode]>([:])
  let handles = Mutex<(next: UInt64, open: [UInt64: OpenFile])>((1, [:]))
  let indexFiles = Mutex<Set<String>>([])
  /// Files being read, by inode: opens are stateless (the kernel sends none), so reads find their
  /// blob list here, made on first use.
  let files = Mutex(ClockCache<UInt64, OpenFile>(limit: 4096))
  /// Listings of snapshot directories by inode (immutable), bounded by their entry count.
  let listings = Mutex(ClockCache<UInt64, [FUSEDirEntry]>(limit: 200_000))
  let mountTime = Timestamp.now()

  static let rootIno: UInt64 = 1

  public init(repository: Repository, options: MountOptions) {
    repo = repository
    self.options = options
    blobs = BlobStore(repository: repository, limit: options.cacheBytes)
    trees = TreeCache(blobs: blobs)
  }

  // MARK: Refresh

  /// Loads new index files and the snapshot list, then rebuilds the top of the tree.
  public func refresh() async throws {
    let known = indexFiles.withLock { $0 }
    let now = try await repo.loadIndex(skipping: known)
    indexFiles.withLock { $0 = now }
    let snaps = try await repo.listSnapshots().filter(matches)
    var t = Top.build(snapshots: snaps, options: options, repository: repo.backend.location, time: mountTime)
    let built = Timestamp.now()
    top.withLock { old in
      t.carryTimes(from: old, now: built)
      old = t
    }
  }

  /// Refreshes every `options.refresh` seconds until cancelled; errors are reported and retried.
  public func refreshLoop(report: @escaping @Sendable (String) -> Void) async {
    while !Task.isCancelled {
      try? await Task.sleep(nanoseconds: UInt64(max(options.refresh, 0.1) * 1e9))
      if Task.isCancelled { return }
      do { try await refresh() } catch { report("refresh failed: \(error)") }
    }
  }

  func matches(_ s: Snapshot) -> Bool {
    if !options.hosts.isEmpty && !options.hosts.contains(s.hostname) { return false }
    if !options.tags.isEmpty
      && !options.tags.contains(where: { t in
        t.split(separator: ",").allSatisfy { s.tags.contains(String($0)) }
      })
    {
      return false
    }
    if !options.paths.isEmpty && Set(options.paths) != Set(s.paths) { return false }
    return true
  }

  // MARK: FUSEFilesystem

  /// Where a directory's entries come from: the virtual top (answered at once) or a tree.
  private enum Listing {
    case top(FUSEAttributes)
    case tree(root: UInt64, id: BlobID)
  }

  /// A directory below which `name` is looked up.
  private func directory(_ ino: UInt64, child name: [UInt8]?) throws -> Listing {
    if let v = top.withLock({ $0.entries[ino] }) {
      switch v.kind {
      case .dir(let children):
        guard let name else { return .top(v.attributes) }
        guard let c = children[name], let e = top.withLock({ $0.entries[c] }) else { throw FUSEError(ENOENT) }
        return .top(e.attributes)
      case .snapshot(let snap):
        return .tree(root: ino, id: snap.tree)
      default:
        throw FUSEError(ENOTDIR)
      }
    }
    guard let p = nodes.withLock({ $0[ino] }) else { throw FUSEError(ENOENT) }
    guard let sub = p.node.subtree else { throw FUSEError(ENOTDIR) }
    return .tree(root: p.root, id: sub)
  }

  public func lookupNow(parent: UInt64, name: [UInt8]) throws -> FUSEAttributes? {
    switch try directory(parent, child: name) {
    case .top(let a): return a
    case .tree(let root, let id):
      guard let t = try cachedTree(id) else { return nil }
      return try lookupNode(parent: parent, root: root, tree: t, name: name)
    }
  }

  public func lookup(parent: UInt64, name: [UInt8]) async throws -> FUSEAttributes {
    switch try directory(parent, child: name) {
    case .top(let a): return a
    case .tree(let root, let id):
      return try lookupNode(parent: parent, root: root, tree: try await loadTree(id), name: name)
    }
  }

  private func lookupNode(parent: UInt64, root: UInt64, tree t: Tree, name: [UInt8]) throws -> FUSEAttributes {
    guard let node = SnapshotFS.find(name, in: t.nodes) else { throw FUSEError(ENOENT) }
    let ino = SnapshotFS.inode(parent: parent, root: root, node: node)
    nodes.withLock { n in
      if n[ino] == nil {
        n[ino] = NodeInode(node: node, root: root, lookups: 1)
      } else {
        n[ino]!.lookups += 1
      }
    }
    return attributes(node, ino: ino)
  }

  public func forget(ino: UInt64, count: UInt64) {
    nodes.withLock { n in
      guard var e = n[ino] else { return }
      e.lookups = e.lookups > count ? e.lookups - count : 0
      n[ino] = e.lookups == 0 ? nil : e
    }
  }

  public func getattr(ino: UInt64) throws -> FUSEAttributes {
    if let v = top.withLock({ $0.entries[ino] }) { return v.attributes }
    guard let n = nodes.withLock({ $0[ino] }) else { throw FUSEError(ENOENT) }
    return attributes(n.node, ino: ino)
  }

  public func readlink(ino: UInt64) throws -> [UInt8] {
    if let v = top.withLock({ $0.entries[ino] }) {
      guard case .link(let target) = v.kind else { throw FUSEError(EINVAL) }
      return target
    }
    guard let n = nodes.withLock({ $0[ino] }), n.node.type == .symlink else { throw FUSEError(EINVAL) }
    return n.node.linkTarget
  }

  /// Reads identify files by inode; the kernel keeps their pages across opens.
  public var statelessOpen: Bool { true }

  /// Used only when the kernel cannot do stateless opens.
  public func open(ino: UInt64) throws -> (handle: UInt64, keepCache: Bool) {
    let file = try openFile(ino)
    let h = handles.withLock { h in
      let id = h.next
      h.next += 1
      h.open[id] = file
      return id
    }
    return (h, file.inline == nil)
  }

  /// The file `ino` as reads need it: its blobs and where each ends (or inline data at the top).
  private func file(_ ino: UInt64, handle: UInt64) throws -> OpenFile {
    if handle != 0 {
      guard let f = handles.withLock({ $0.open[handle] }) else { throw FUSEError(EBADF) }
      return f
    }
    if let f = files.withLock({ $0.get(ino) }) { return f }
    let f = try openFile(ino)
    // Top files (status.json) change on refresh: never kept.
    if f.inline == nil { files.withLock { $0.insert(ino, f, cost: 1) } }
    return f
  }

  private func openFile(_ ino: UInt64) throws -> OpenFile {
    let file: OpenFile
    if let v = top.withLock({ $0.entries[ino] }) {
      guard case .file(let data) = v.kind else { throw FUSEError(EISDIR) }
      file = OpenFile(inline: data)
    } else {
      guard let n = nodes.withLock({ $0[ino] }) else { throw FUSEError(ENOENT) }
      guard n.node.type == .file else { throw FUSEError(n.node.type == .dir ? EISDIR : EINVAL) }
      var ends: [Int64] = []
      var at: Int64 = 0
      for id in n.node.content ?? [] {
        guard let e = repo.index.lookup(id) else { throw FUSEError(EIO) }
        at += Int64(e.blob.plainLength)
        ends.append(at)
      }
      file = OpenFile(content: n.node.content ?? [], ends: ends)
    }
    return file
  }

  public func release(ino: UInt64, handle: UInt64) { _ = handles.withLock { $0.open.removeValue(forKey: handle) } }

  /// Bytes of plaintext fetched ahead of a sequential reader.
  static let readAhead: Int64 = 16 << 20

  /// The blobs a read needs (`first...last` of the file's content), or the inline answer.
  private enum Plan {
    case done([ArraySlice<UInt8>])
    case blobs(OpenFile, first: Int, last: Int, end: Int64)
  }

  private func plan(_ ino: UInt64, _ handle: UInt64, _ offset: Int64, _ size: Int) throws -> Plan {
    let f = try file(ino, handle: handle)
    if let data = f.inline {
      guard offset < data.count else { return .done([]) }
      return .done([data[Int(offset)..<min(data.count, Int(offset) + size)]])
    }
    let total = f.ends.last ?? 0
    guard offset < total, size > 0 else { return .done([]) }
    let end = min(total, offset + Int64(size))
    let first = f.ends.partitioningIndex { $0 > offset }  // first blob that ends after `offset`
    var last = first
    while last + 1 < f.ends.count && f.ends[last] < end { last += 1 }
    return .blobs(f, first: first, last: last, end: end)
  }

  /// Copies `offset..<end` out of blobs `first...` and starts fetching what comes next.
  private func assemble(_ f: OpenFile, _ first: Int, _ offset: Int64, _ end: Int64, _ data: [[UInt8]]) throws
    -> [ArraySlice<UInt8>]
  {
    var out: [ArraySlice<UInt8>] = []
    out.reserveCapacity(data.count)
    var pos = offset
    for (k, blob) in data.enumerated() {
      let i = first + k
      let start = i == 0 ? 0 : f.ends[i - 1]
      let from = Int(pos - start)
      let to = Int(min(end, f.ends[i]) - start)
      guard from >= 0, from <= to, to <= blob.count else { throw FUSEError(EIO) }
      out.append(blob[from..<to])
      pos = start + Int64(to)
    }
    // Blobs this answer reads up to their last byte are done with (see `BlobStore.release`); a blob the
    // answer starts in but does not finish stays for the next request.
    blobs.release((first..<first + data.count).lazy.filter { f.ends[$0] <= end }.map { f.content[$0] })
    // Read-ahead: the blobs after this answer, up to `readAhead` bytes, while the caller consumes it.
    let next = first + data.count
    if next < f.content.count {
      var stop = next
      let limit = f.ends[next - 1] + SnapshotFS.readAhead
      while stop < f.content.count && f.ends[stop] <= limit { stop += 1 }
      blobs.prefetch(f.content[next..<max(stop, next + 1)])
    }
    return out
  }

  public func readNow(ino: UInt64, handle: UInt64, offset: Int64, size: Int) throws -> [ArraySlice<UInt8>]? {
    switch try plan(ino, handle, offset, size) {
    case .done(let d): return d
    case .blobs(let f, let first, let last, let end):
      var data: [[UInt8]] = []
      for i in first...last {
        guard let b = blobs.cached(f.content[i]) else {
          blobs.prefetch(f.content[i...last])
          return nil
        }
        data.append(b)
      }
      return try assemble(f, first, offset, end, data)
    }
  }

  public func read(ino: UInt64, handle: UInt64, offset: Int64, size: Int) async throws -> [ArraySlice<UInt8>] {
    switch try plan(ino, handle, offset, size) {
    case .done(let d): return d
    case .blobs(let f, let first, let last, let end):
      // Every blob the request needs, concurrently (a request rarely spans more than two).
      let ids = Array(f.content[first...last])
      blobs.prefetch(ids)
      let fetched = try await withThrowingTaskGroup(of: (Int, [UInt8]).self) { g in
        for (k, id) in ids.enumerated() { g.addTask { (k, try await self.blobs.get(id)) } }
        var r = [[UInt8]](repeating: [], count: ids.count)
        for try await (k, b) in g { r[k] = b }
        return r
      }
      return try assemble(f, first, offset, end, fetched)
    }
  }

  public func readdirNow(ino: UInt64) throws -> (entries: [FUSEDirEntry], cacheable: Bool)? {
    switch try directory(ino, child: nil) {
    case .top: return (topListing(ino), false)
    case .tree(let root, let id):
      if let l = listings.withLock({ $0.get(ino) }) { return (l, true) }
      guard let t = try cachedTree(id) else { return nil }
      return (listTree(parent: ino, root: root, tree: t), true)
    }
  }

  public func readdir(ino: UInt64) async throws -> (entries: [FUSEDirEntry], cacheable: Bool) {
    switch try directory(ino, child: nil) {
    case .top: return (topListing(ino), false)
    case .tree(let root, let id):
      if let l = listings.withLock({ $0.get(ino) }) { return (l, true) }
      return (listTree(parent: ino, root: root, tree: try await loadTree(id)), true)
    }
  }

  private func topListing(_ ino: UInt64) -> [FUSEDirEntry] {
    top.withLock { t in
      guard case .dir(let children)? = t.entries[ino]?.kind else { return [] }
      return children.compactMap { (name, c) in
        t.entries[c].map { FUSEDirEntry(name: name, ino: c, mode: $0.attributes.mode) }
      }.sorted { $0.name.lexicographicallyPrecedes($1.name) }
    }
  }

  /// Lists a snapshot directory, and keeps the listing (directories are opened again and again: each
  /// `ls`, each pass of a walker), bounded by entry count.
  private func listTree(parent: UInt64, root: UInt64, tree: Tree) -> [FUSEDirEntry] {
    trees.prefetch(tree.nodes.lazy.compactMap(\.subtree))
    let l = tree.nodes.map {
      FUSEDirEntry(
        name: $0.name, ino: SnapshotFS.inode(parent: parent, root: root, node: $0), mode: SnapshotFS.stMode($0))
    }
    listings.withLock { $0.insert(parent, l, cost: max(1, l.count)) }
    return l
  }

  public func listxattr(ino: UInt64) throws -> [[UInt8]] {
    guard let n = nodes.withLock({ $0[ino] }) else { return [] }
    return n.node.xattrs.map(\.name)
  }

  public func getxattr(ino: UInt64, name: [UInt8]) throws -> [UInt8] {
    guard let n = nodes.withLock({ $0[ino] }), let x = n.node.xattrs.first(where: { $0.name == name }) else {
      throw FUSEError(ENODATA)
    }
    return x.value
  }

  // MARK: Helpers

  private func loadTree(_ id: BlobID) async throws -> Tree {
    do {
      return try await trees.get(id)
    } catch {
      throw FUSEError(EIO)
    }
  }

  private func cachedTree(_ id: BlobID) throws -> Tree? {
    do {
      return try trees.cached(id)
    } catch {
      throw FUSEError(EIO)
    }
  }

  static func find(_ name: [UInt8], in nodes: [Node]) -> Node? {
    // Trees are sorted by name (bytewise).
    var lo = 0, hi = nodes.count
    while lo < hi {
      let mid = (lo + hi) / 2
      if nodes[mid].name.lexicographicallyPrecedes(name) { lo = mid + 1 } else { hi = mid }
    }
    return lo < nodes.count && nodes[lo].name == name ? nodes[lo] : nil
  }

  static func inode(parent: UInt64, root: UInt64, node: Node) -> UInt64 {
    if node.type == .file && node.links > 1 && node.inode != 0 {
      var h = InodeHasher()
      h.add([0x68, 0x6c])
      for v in [root, node.deviceID, node.inode] { h.add(v) }
      return h.value
    }
    var h = InodeHasher()
    h.add(parent)
    h.add(node.name)
    return h.value
  }

  static func hashInode(_ bytes: [UInt8]) -> UInt64 {
    var h = InodeHasher()
    h.add(bytes)
    return h.value
  }

  static func le(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }

  static func stMode(_ n: Node) -> UInt32 {
    let type: UInt32
    switch n.type {
    case .dir: type = 0o040000
    case .symlink: type = 0o120000
    case .dev: type = 0o060000
    case .chardev: type = 0o020000
    case .fifo: type = 0o010000
    case .socket: type = 0o140000
    default: type = 0o100000
    }
    return type | GoMode.permissions(n.mode)
  }

  func attributes(_ n: Node, ino: UInt64) -> FUSEAttributes {
    var a = FUSEAttributes(ino: ino, mode: SnapshotFS.stMode(n))
    a.nlink = n.type == .dir ? 2 : UInt32(max(1, min(n.links, UInt64(UInt32.max))))
    a.uid = n.uid
    a.gid = n.gid
    a.rdev = n.device
    a.size = n.type == .symlink ? Int64(n.linkTarget.count) : Int64(n.size)
    a.blocks = (Int64(n.size) + 511) / 512
    a.atime = (n.atime.seconds, Int64(n.atime.nanoseconds))
    a.mtime = (n.mtime.seconds, Int64(n.mtime.nanoseconds))
    a.ctime = (n.ctime.seconds, Int64(n.ctime.nanoseconds))
    a.timeout = 3600  // snapshot contents never change
    return a
  }
}

struct NodeInode: Sendable {
  var node: Node
  /// The snapshot directory this node was reached through (hard links are grouped per root).
  var root: UInt64
  var lookups: UInt64
}

struct OpenFile: Sendable {
  var content: [BlobID] = []
  /// End offset of each blob in the file.
  var ends: [Int64] = []
  var inline: [UInt8]? = nil
  init(content: [BlobID], ends: [Int64]) {
    self.content = content
    self.ends = ends
  }
  init(inline: [UInt8]) { self.inline = inline }
}

extension Array {
  /// The first index whose element satisfies `pred` (which must be false, then true, along the array).
  func partitioningIndex(where pred: (Element) -> Bool) -> Int {
    var lo = 0, hi = count
    while lo < hi {
      let mid = (lo + hi) / 2
      if pred(self[mid]) { hi = mid } else { lo = mid + 1 }
    }
    return lo
  }
}

/// Inode numbers: FNV-1a over the bytes, then a 64-bit finaliser (splitmix64) so that numbers spread
/// over the whole range. Deterministic (the same path gives the same number on every mount), cheap (a
/// directory listing computes one per entry), and collisions are as unlikely as for any 62-bit hash.
struct InodeHasher {
  private var state: UInt64 = 0xcbf2_9ce4_8422_2325

  mutating func add(_ bytes: [UInt8]) {
    for b in bytes {
      state ^= UInt64(b)
      state = state &* 0x0000_0100_0000_01b3
    }
  }

  mutating func add(_ v: UInt64) {
    for k in 0..<8 {
      state ^= (v >> (8 * UInt64(k))) & 0xff
      state = state &* 0x0000_0100_0000_01b3
    }
  }

  var value: UInt64 {
    var z = state &+ 0x9e37_79b9_7f4a_7c15
    z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
    z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
    z ^= z >> 31
    z &= (1 << 62) - 1  // keep clear of the top bits some tools treat as signed
    return z < 16 ? z + 16 : z
  }
}
