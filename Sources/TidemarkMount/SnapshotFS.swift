// TidemarkMount: the repository as a read-only filesystem of snapshots (restic's layout).
//
//   ids/<short id>/   snapshots/<time>/   hosts/<host>/<time>/   tags/<tag>/<time>/   (+ `latest` links)
//   versions/<host>/<absolute path>/<time>   one path through all of a host's snapshots (Versions.swift)
//   .tidemark/status.json   maps every snapshot directory back to repository + snapshot (for restore)
//
// The top of the tree ("virtual" entries) is rebuilt from the snapshot list on every refresh; below a
// snapshot directory, trees load lazily when a directory is visited and stay in a cache bounded in bytes;
// the inodes the kernel holds are kept compactly (InodeTable) until it forgets them. Inode numbers are hashes of (parent inode, name), so they are stable across
// refreshes and remounts; hard-linked files share one number within a snapshot directory.
import Foundation
import Synchronization
import TidemarkCore
import TidemarkFUSE
import TidemarkSystem

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
  /// Upper bound for the mount's caches together (blob plaintext, parsed trees, listings, files' blob
  /// lists), shared out as `CacheBudget` says.
  public var cacheBytes = CacheBudget.defaultTotal
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
  let nodes = Mutex(InodeTable())
  let handles = Mutex<(next: UInt64, open: [UInt64: OpenFile])>((1, [:]))
  let indexFiles = Mutex<Set<String>>([])
  /// Files being read, by inode: opens are stateless (the kernel sends none), so reads find their
  /// blob list here, made on first use.
  let files: Mutex<ClockCache<UInt64, OpenFile>>
  /// How each file is being read (sequentially or not), by inode, for the most recently read files.
  let readers = Mutex(ClockCache<UInt64, ReadStream>(limit: 1024))
  /// Listings of snapshot directories by inode (immutable), bounded in bytes.
  let listings: Mutex<ClockCache<UInt64, [FUSEDirEntry]>>
  /// Paths below `versions/<host>/` across the host's snapshots, by inode, bounded in bytes.
  let versionsCache: Mutex<ClockCache<UInt64, VersionsNode>>
  /// The versions directories the kernel holds.
  let versionsTable = Mutex(VersionsTable())
  let mountTime = Timestamp.now()
  /// Puts a file's content into the kernel's page cache (`FUSESession.store`), once mounted. (In a struct: a
  /// function stored as a Mutex's value itself is wrapped in two more conversion thunks at every `withLock`.)
  let store = Mutex<KernelStore?>(nil)
  /// The inode each recently listed directory tree was listed under (to name its files' inodes), and the
  /// directory trees whose small files were put into the kernel already (see `putSiblings`).
  let listedUnder = Mutex(ClockCache<InodeTable.Place, UInt64>(limit: 16384))
  let siblingsPut = Mutex(ClockCache<InodeTable.Place, Bool>(limit: 16384))
  /// The thread that puts files into the kernel: a put may wait for a read to be answered (see
  /// `FUSESession.store`), so it never runs where reads are answered (the blocking threads, the workers).
  let putter = DispatchQueue(label: "tidemark.mount.put")

  static let rootIno: UInt64 = 1

  public init(repository: Repository, options: MountOptions) {
    repo = repository
    self.options = options
    let budget = CacheBudget(total: options.cacheBytes)
    blobs = BlobStore(repository: repository, limit: budget.blobs)
    trees = TreeCache(blobs: blobs, byteLimit: budget.trees)
    files = Mutex(ClockCache(limit: budget.files))
    listings = Mutex(ClockCache(limit: budget.listings))
    versionsCache = Mutex(ClockCache(limit: budget.versions))
  }

  /// What the caches and the inode table hold now (for tests and diagnostics).
  public struct Usage: Sendable {
    public var treeBytes: Int
    public var trees: Int
    public var listingBytes: Int
    public var fileBytes: Int
    public var inodes: Int
    /// Trees parsed since the mount started (again after eviction too).
    public var treesParsed: Int
    /// The cache of paths followed under `versions/`, and the versions directories the kernel holds.
    public var versionBytes: Int
    public var versionInodes: Int
  }

  public var usage: Usage {
    let t = trees.usage
    return Usage(
      treeBytes: t.bytes, trees: t.trees, listingBytes: listings.withLock { $0.cost },
      fileBytes: files.withLock { $0.cost }, inodes: nodes.withLock { $0.count }, treesParsed: t.parsed,
      versionBytes: versionsCache.withLock { $0.cost }, versionInodes: versionsTable.withLock { $0.count })
  }

  // MARK: Refresh

  /// Loads new index files and the snapshot list, then rebuilds the top of the tree.
  public func refresh() async throws {
    let known = indexFiles.withLock { $0 }
    let now = try await repo.loadIndex(skipping: known)
    indexFiles.withLock { $0 = now }
    // Reading index files leaves the allocator with their transient buffers, free but resident: give them
    // back, so that the mount's resident memory is what it holds.
    if now.count > known.count { _ = try? await Blocking.run { Sys.releaseFreeMemory() } }
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

  /// A directory of the virtual top below which `name` is looked up; nil when `ino` is not in the top.
  private func topDirectory(_ ino: UInt64, child name: [UInt8]?) throws -> Listing? {
    guard let v = top.withLock({ $0.entries[ino] }) else { return nil }
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

  /// A directory below which `name` is looked up (a tree directory needs no tree loaded: the inode table
  /// keeps directories' tree IDs).
  private func directory(_ ino: UInt64, child name: [UInt8]?) throws -> Listing {
    if let l = try topDirectory(ino, child: name) { return l }
    if let d = nodes.withLock({ $0.directory(ino) }) { return .tree(root: d.root, id: d.tree) }
    throw FUSEError(nodes.withLock { $0.contains(ino) } ? ENOTDIR : ENOENT)
  }

  /// The node behind a tree inode if its tree is in memory; nil when it must be loaded (`node`).
  private func nodeNow(_ ino: UInt64) throws -> (node: Node, root: UInt64)? {
    guard let (place, slot) = nodes.withLock({ $0.locate(ino) }) else { throw FUSEError(ENOENT) }
    guard let t = try cachedTree(place.tree) else { return nil }
    guard slot < t.nodes.count else { throw FUSEError(EIO) }
    return (t.nodes[slot], place.root)
  }

  private func node(_ ino: UInt64) async throws -> (node: Node, root: UInt64) {
    guard let (place, slot) = nodes.withLock({ $0.locate(ino) }) else { throw FUSEError(ENOENT) }
    let t = try await loadTree(place.tree)
    guard slot < t.nodes.count else { throw FUSEError(EIO) }
    return (t.nodes[slot], place.root)
  }

  public func lookupNow(parent: UInt64, name: [UInt8]) throws -> FUSEAttributes? {
    if isVersionsDirectory(parent) { return try versionsLookupNow(parent: parent, name: name) }
    switch try directory(parent, child: name) {
    case .top(let a): return a
    case .tree(let root, let id):
      guard let t = try cachedTree(id) else { return nil }
      return try lookupNode(parent: parent, root: root, treeID: id, tree: t, name: name)
    }
  }

  public func lookup(parent: UInt64, name: [UInt8]) async throws -> FUSEAttributes {
    if isVersionsDirectory(parent) { return try await versionsLookup(parent: parent, name: name) }
    switch try directory(parent, child: name) {
    case .top(let a): return a
    case .tree(let root, let id):
      return try lookupNode(parent: parent, root: root, treeID: id, tree: try await loadTree(id), name: name)
    }
  }

  private func lookupNode(parent: UInt64, root: UInt64, treeID: BlobID, tree t: Tree, name: [UInt8]) throws
    -> FUSEAttributes
  {
    guard let slot = SnapshotFS.find(name, in: t.nodes) else { throw FUSEError(ENOENT) }
    let node = t.nodes[slot]
    let ino = SnapshotFS.inode(parent: parent, root: root, node: node)
    let subtree = node.type == .dir ? node.subtree : nil
    nodes.withLock { $0.lookedUp(ino, tree: treeID, root: root, slot: slot, subtree: subtree) }
    return attributes(node, ino: ino)
  }

  public func forget(ino: UInt64, count: UInt64) {
    nodes.withLock { $0.forget(ino, count: count) }
    versionsTable.withLock { $0.forget(ino, count: count) }
  }

  public func getattrNow(ino: UInt64) throws -> FUSEAttributes? {
    if let v = top.withLock({ $0.entries[ino] }) { return v.attributes }
    if let a = versionsAttributes(ino) { return a }
    return try nodeNow(ino).map { attributes($0.node, ino: ino) }
  }

  public func getattr(ino: UInt64) async throws -> FUSEAttributes {
    if let v = top.withLock({ $0.entries[ino] }) { return v.attributes }
    if let a = versionsAttributes(ino) { return a }
    return attributes(try await node(ino).node, ino: ino)
  }

  public func readlinkNow(ino: UInt64) throws -> [UInt8]? {
    if let v = top.withLock({ $0.entries[ino] }) {
      guard case .link(let target) = v.kind else { throw FUSEError(EINVAL) }
      return target
    }
    if versionsTable.withLock({ $0.entry(ino) }) != nil { throw FUSEError(EINVAL) }
    return try nodeNow(ino).map { try SnapshotFS.linkTarget($0.node) }
  }

  public func readlink(ino: UInt64) async throws -> [UInt8] {
    if let t = try readlinkNow(ino: ino) { return t }
    return try SnapshotFS.linkTarget(try await node(ino).node)
  }

  private static func linkTarget(_ n: Node) throws -> [UInt8] {
    guard n.type == .symlink else { throw FUSEError(EINVAL) }
    return n.linkTarget
  }

  /// Reads identify files by inode; the kernel keeps their pages across opens.
  public var statelessOpen: Bool { true }

  public func attach(store: @escaping @Sendable (UInt64, [UInt8]) -> Bool) {
    self.store.withLock { $0 = KernelStore(put: store) }
  }

  /// Used only when the kernel cannot do stateless opens.
  public func openNow(ino: UInt64) throws -> (handle: UInt64, keepCache: Bool)? {
    try openFileNow(ino).map(register)
  }

  public func open(ino: UInt64) async throws -> (handle: UInt64, keepCache: Bool) {
    register(try await openFile(ino))
  }

  private func register(_ file: OpenFile) -> (handle: UInt64, keepCache: Bool) {
    let h = handles.withLock { h in
      let id = h.next
      h.next += 1
      h.open[id] = file
      return id
    }
    return (h, file.inline == nil)
  }

  /// The file `ino` as reads need it: its blobs and where each ends (or inline data at the top); nil when
  /// its node's tree must be loaded first (`file`).
  private func fileNow(_ ino: UInt64, handle: UInt64) throws -> OpenFile? {
    if handle != 0 {
      guard let f = handles.withLock({ $0.open[handle] }) else { throw FUSEError(EBADF) }
      return f
    }
    if let f = files.withLock({ $0.get(ino) }) { return f }
    guard let f = try openFileNow(ino) else { return nil }
    keep(ino, f)
    return f
  }

  private func file(_ ino: UInt64, handle: UInt64) async throws -> OpenFile {
    if let f = try fileNow(ino, handle: handle) { return f }
    let f = try await openFile(ino)
    keep(ino, f)
    return f
  }

  private func keep(_ ino: UInt64, _ f: OpenFile) {
    // Top files (status.json) change on refresh: never kept.
    if f.inline == nil {
      files.withLock { $0.insert(ino, f, cost: 64 + f.content.count * (MemoryLayout<BlobID>.stride + 8)) }
    }
  }

  private func openFileNow(_ ino: UInt64) throws -> OpenFile? {
    if let v = top.withLock({ $0.entries[ino] }) {
      guard case .file(let data) = v.kind else { throw FUSEError(EISDIR) }
      return OpenFile(inline: data)
    }
    if versionsTable.withLock({ $0.entry(ino) }) != nil { throw FUSEError(EISDIR) }
    return try nodeNow(ino).map { try contentFile($0.node) }
  }

  private func openFile(_ ino: UInt64) async throws -> OpenFile {
    if let f = try openFileNow(ino) { return f }
    return try contentFile(try await node(ino).node)
  }

  private func contentFile(_ n: Node) throws -> OpenFile {
    guard n.type == .file else { throw FUSEError(n.type == .dir ? EISDIR : EINVAL) }
    var ends: [Int64] = []
    var at: Int64 = 0
    for id in n.content ?? [] {
      guard let e = repo.index.lookup(id) else { throw FUSEError(EIO) }
      at += Int64(e.blob.plainLength)
      ends.append(at)
    }
    return OpenFile(content: n.content ?? [], ends: ends)
  }

  public func release(ino: UInt64, handle: UInt64) { _ = handles.withLock { $0.open.removeValue(forKey: handle) } }

  /// Bytes of plaintext decoded ahead of a sequential reader: `readAheadFirst` once a read follows on from the
  /// previous one (or starts the file), doubled with every further such read up to `readAhead` (or a quarter of
  /// the blob cache, if that is less, so that blobs decoded ahead are not evicted before they are read). Enough
  /// to keep every worker busy with the blobs the reader wants next; reads elsewhere in the file (random access)
  /// fetch only the blobs they need and the rest of their pack window.
  static let readAhead: Int64 = 32 << 20
  static let readAheadFirst: Int64 = 4 << 20
  /// How far from where the reads so far ended a read may start and still count as following on: the kernel's
  /// own read-ahead (1 MiB) sends requests that are answered out of order when some wait for a blob.
  static let sequentialSlack: Int64 = 2 << 20

  /// Notes a read of `offset..<end` of `ino`; returns how many bytes after `end` to decode ahead.
  private func readAheadBytes(_ ino: UInt64, _ offset: Int64, _ end: Int64) -> Int64 {
    let most = min(SnapshotFS.readAhead, Int64(blobs.limit / 4))
    return readers.withLock { r in
      var s = r.get(ino) ?? ReadStream()
      if offset >= s.end - SnapshotFS.sequentialSlack && offset <= s.end + SnapshotFS.sequentialSlack {
        s.ahead = min(max(s.ahead * 2, SnapshotFS.readAheadFirst), most)
        s.end = max(s.end, end)
      } else {
        s = ReadStream(end: end, ahead: 0)
      }
      r.insert(ino, s, cost: 1)
      return s.ahead
    }
  }

  /// Starts loading the blobs a read needs (`first...last`), and for a sequential reader the blobs after them.
  /// While the file goes on past those, its loads take no other blobs of their packs: the file's own next blobs
  /// follow with the next reads. Random reads, and reads that reach the end of the file (a walk through small
  /// files), keep the pack window (`BlobStore.prefetch`).
  private func fetch(_ ino: UInt64, _ f: OpenFile, _ first: Int, _ last: Int, _ offset: Int64, _ end: Int64) {
    var stop = last + 1
    let ahead = readAheadBytes(ino, offset, end)
    if ahead > 0 {
      let limit = f.ends[last] + ahead
      while stop < f.content.count && f.ends[stop] <= limit { stop += 1 }
    }
    blobs.prefetch(f.content[first..<stop], extend: ahead == 0 || stop == f.content.count)
  }

  /// The blobs a read needs (`first...last` of the file's content), or the inline answer.
  private enum Plan {
    case done([ArraySlice<UInt8>])
    case blobs(OpenFile, first: Int, last: Int, end: Int64)
  }

  private func plan(_ f: OpenFile, _ offset: Int64, _ size: Int) -> Plan {
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

  /// Copies `offset..<end` out of blobs `first...`.
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
    return out
  }

  public func readNow(ino: UInt64, handle: UInt64, offset: Int64, size: Int) throws -> [ArraySlice<UInt8>]? {
    guard let file = try fileNow(ino, handle: handle) else { return nil }
    switch plan(file, offset, size) {
    case .done(let d): return d
    case .blobs(let f, let first, let last, let end):
      if offset == 0 { putSiblings(of: ino) }
      fetch(ino, f, first, last, offset, end)
      var data: [[UInt8]] = []
      for i in first...last {
        guard let b = blobs.cached(f.content[i]) else { return nil }
        data.append(b)
      }
      return try assemble(f, first, offset, end, data)
    }
  }

  public func read(ino: UInt64, handle: UInt64, offset: Int64, size: Int) async throws -> [ArraySlice<UInt8>] {
    switch plan(try await file(ino, handle: handle), offset, size) {
    case .done(let d): return d
    case .blobs(let f, let first, let last, let end):
      // Every blob the request needs, concurrently (a request rarely spans more than two).
      let ids = Array(f.content[first...last])
      if offset == 0 { putSiblings(of: ino) }
      fetch(ino, f, first, last, offset, end)
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
    // Versions directories change with refreshes: never cached by the kernel.
    if isVersionsDirectory(ino) { return try versionsReaddirNow(ino).map { ($0, false) } }
    switch try directory(ino, child: nil) {
    case .top: return (topListing(ino), false)
    case .tree(let root, let id):
      if let l = listings.withLock({ $0.get(ino) }) { return (l, true) }
      guard let t = try cachedTree(id) else { return nil }
      return (listTree(parent: ino, root: root, treeID: id, tree: t), true)
    }
  }

  public func readdir(ino: UInt64) async throws -> (entries: [FUSEDirEntry], cacheable: Bool) {
    if isVersionsDirectory(ino) { return (try await versionsReaddir(ino), false) }
    switch try directory(ino, child: nil) {
    case .top: return (topListing(ino), false)
    case .tree(let root, let id):
      if let l = listings.withLock({ $0.get(ino) }) { return (l, true) }
      return (listTree(parent: ino, root: root, treeID: id, tree: try await loadTree(id)), true)
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
  private func listTree(parent: UInt64, root: UInt64, treeID: BlobID, tree: Tree) -> [FUSEDirEntry] {
    trees.prefetch(tree.nodes.lazy.compactMap(\.subtree))
    listedUnder.withLock { $0.insert(InodeTable.Place(tree: treeID, root: root), parent, cost: 1) }
    let l = tree.nodes.map {
      FUSEDirEntry(
        name: $0.name, ino: SnapshotFS.inode(parent: parent, root: root, node: $0), mode: SnapshotFS.stMode($0))
    }
    let cost = 64 + l.count * MemoryLayout<FUSEDirEntry>.stride + l.reduce(0) { $0 + 32 + $1.name.count }
    listings.withLock { $0.insert(parent, l, cost: cost) }
    return l
  }

  public func listxattrNow(ino: UInt64) throws -> [[UInt8]]? {
    if top.withLock({ $0.entries[ino] }) != nil || versionsTable.withLock({ $0.entry(ino) }) != nil { return [] }
    return try nodeNow(ino).map { $0.node.xattrs.map(\.name) }
  }

  public func listxattr(ino: UInt64) async throws -> [[UInt8]] {
    if let l = try listxattrNow(ino: ino) { return l }
    return try await node(ino).node.xattrs.map(\.name)
  }

  public func getxattrNow(ino: UInt64, name: [UInt8]) throws -> [UInt8]? {
    if top.withLock({ $0.entries[ino] }) != nil || versionsTable.withLock({ $0.entry(ino) }) != nil {
      throw FUSEError(ENODATA)
    }
    return try nodeNow(ino).map { try SnapshotFS.xattr(name, of: $0.node) }
  }

  public func getxattr(ino: UInt64, name: [UInt8]) async throws -> [UInt8] {
    if let v = try getxattrNow(ino: ino, name: name) { return v }
    return try SnapshotFS.xattr(name, of: try await node(ino).node)
  }

  private static func xattr(_ name: [UInt8], of n: Node) throws -> [UInt8] {
    guard let x = n.xattrs.first(where: { $0.name == name }) else { throw FUSEError(ENODATA) }
    return x.value
  }

  // MARK: Small files ahead of their reader

  /// Files up to this size are put into the kernel's page cache when a file of their directory is read.
  static let putFileLimit: UInt64 = 256 << 10
  /// At most this much of one directory's content is put there.
  static let putDirectoryLimit: UInt64 = 16 << 20

  /// The first read of a file (at offset 0) says its directory's files are being read: a copy (rsync, cp -r,
  /// tar) goes on with the next one at once, and each would cost a round trip through the kernel, most of a small
  /// file's time. So the files after this one in the listing, those of at most `putFileLimit`, are decoded (their
  /// pack windows mostly are already) and put into the kernel's page cache in listing order, a few at a time, and
  /// their reads never reach the mount. Once per directory tree (until forgotten); a file whose inode the kernel
  /// does not hold, or that is read before it is put, is read as usual. A listing alone (`find`, `ls -l`) puts
  /// nothing: reading is the signal.
  private func putSiblings(of ino: UInt64) {
    guard let store = store.withLock({ $0 }), let (place, slot) = nodes.withLock({ $0.locate(ino) }) else { return }
    let first = siblingsPut.withLock { p -> Bool in
      if p.contains(place) { return false }
      p.insert(place, true, cost: 1)
      return true
    }
    guard first, let parent = listedUnder.withLock({ $0.get(place) }),
      let entries = listings.withLock({ $0.get(parent) }), let tree = try? cachedTree(place.tree),
      entries.count == tree.nodes.count
    else { return }
    var files: [(ino: UInt64, node: Node)] = []
    var total: UInt64 = 0
    for k in tree.nodes.indices where k > slot {
      let n = tree.nodes[k]
      guard n.type == .file, n.size > 0, n.size <= SnapshotFS.putFileLimit, entries[k].name == n.name else {
        continue
      }
      total += n.size
      if total > SnapshotFS.putDirectoryLimit { break }
      files.append((entries[k].ino, n))
    }
    guard !files.isEmpty else { return }
    Task {
      // Set by the putter when a whole batch was refused (the session ended, or the kernel let the inodes go).
      let refused = Atomic<Bool>(false)
      var k = 0
      while k < files.count && !refused.load(ordering: .relaxed) {
        let batch = files[k..<min(files.count, k + 8)]
        k += batch.count
        let ids = batch.flatMap { $0.node.content ?? [] }
        blobs.prefetch(ids)
        var ready: [(UInt64, [UInt8])] = []
        for (ino, node) in batch {
          var content: [UInt8] = []
          content.reserveCapacity(Int(node.size))
          for id in node.content ?? [] {
            guard let b = try? await blobs.get(id) else { break }
            content += b
          }
          guard content.count == Int(node.size) else { continue }
          ready.append((ino, content))
        }
        // Writes to the FUSE device, in order on the putter, while the next batch is decoded.
        putter.async { [ready, ids, blobs] in
          let stored = ready.map { store.put($0.0, $0.1) }
          if !stored.isEmpty && !stored.contains(true) { refused.store(true, ordering: .relaxed) }
          // Their pages now answer reads; a read already on its way still finds its blobs until here.
          blobs.release(ids)
        }
      }
    }
  }

  // MARK: Helpers

  func loadTree(_ id: BlobID) async throws -> Tree {
    do {
      return try await trees.get(id)
    } catch {
      throw FUSEError(EIO)
    }
  }

  func cachedTree(_ id: BlobID) throws -> Tree? {
    do {
      return try trees.cached(id)
    } catch {
      throw FUSEError(EIO)
    }
  }

  /// The position of `name` in a tree's nodes.
  static func find(_ name: [UInt8], in nodes: [Node]) -> Int? {
    // Trees are sorted by name (bytewise).
    var lo = 0, hi = nodes.count
    while lo < hi {
      let mid = (lo + hi) / 2
      if nodes[mid].name.lexicographicallyPrecedes(name) { lo = mid + 1 } else { hi = mid }
    }
    return lo < nodes.count && nodes[lo].name == name ? lo : nil
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

/// How one file is being read: where the reads that followed on from each other have got to, and how far ahead
/// of them blobs are decoded (0: the file is read at random).
struct ReadStream {
  var end: Int64 = 0
  var ahead: Int64 = 0
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

/// `FUSESession.store`, as handed to `SnapshotFS.attach`.
struct KernelStore: Sendable {
  let put: @Sendable (UInt64, [UInt8]) -> Bool
}
