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
  public var cacheBytes = 256 << 20
  public var mountpoint = ""
  public init() {}
}

public final class SnapshotFS: FUSEFilesystem {
  let repo: Repository
  let options: MountOptions
  let blobs: BlobCache
  let trees: TreeCache
  /// The virtual top of the tree, replaced as a whole on refresh.
  let top = Mutex<Top>(Top())
  /// Tree nodes the kernel holds (lookup counts), by inode.
  let nodes = Mutex<[UInt64: NodeInode]>([:])
  let handles = Mutex<(next: UInt64, open: [UInt64: OpenFile])>((1, [:]))
  let indexFiles = Mutex<Set<String>>([])
  let mountTime = Timestamp.now()

  static let rootIno: UInt64 = 1

  public init(repository: Repository, options: MountOptions) {
    repo = repository
    self.options = options
    blobs = BlobCache(repository: repository, limit: options.cacheBytes)
    trees = TreeCache(repository: repository, limit: 256)
  }

  // MARK: Refresh

  /// Loads new index files and the snapshot list, then rebuilds the top of the tree.
  public func refresh() async throws {
    let known = indexFiles.withLock { $0 }
    let now = try await repo.loadIndex(skipping: known)
    indexFiles.withLock { $0 = now }
    let snaps = try await repo.listSnapshots().filter(matches)
    let t = Top.build(snapshots: snaps, options: options, repository: repo.backend.location, time: mountTime)
    top.withLock { $0 = t }
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

  public func lookup(parent: UInt64, name: [UInt8]) async throws -> FUSEAttributes {
    if let v = top.withLock({ $0.entries[parent] }) {
      switch v.kind {
      case .dir(let children):
        guard let ino = children[name], let c = top.withLock({ $0.entries[ino] }) else { throw FUSEError(ENOENT) }
        return c.attributes
      case .snapshot(let snap):
        return try await lookupNode(parent: parent, root: parent, tree: snap.tree, name: name)
      default:
        throw FUSEError(ENOTDIR)
      }
    }
    guard let p = nodes.withLock({ $0[parent] }) else { throw FUSEError(ENOENT) }
    guard let sub = p.node.subtree else { throw FUSEError(ENOTDIR) }
    return try await lookupNode(parent: parent, root: p.root, tree: sub, name: name)
  }

  private func lookupNode(parent: UInt64, root: UInt64, tree: BlobID, name: [UInt8]) async throws -> FUSEAttributes {
    let t = try await loadTree(tree)
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

  public func getattr(ino: UInt64) async throws -> FUSEAttributes {
    if let v = top.withLock({ $0.entries[ino] }) { return v.attributes }
    guard let n = nodes.withLock({ $0[ino] }) else { throw FUSEError(ENOENT) }
    return attributes(n.node, ino: ino)
  }

  public func readlink(ino: UInt64) async throws -> [UInt8] {
    if let v = top.withLock({ $0.entries[ino] }) {
      guard case .link(let target) = v.kind else { throw FUSEError(EINVAL) }
      return target
    }
    guard let n = nodes.withLock({ $0[ino] }), n.node.type == .symlink else { throw FUSEError(EINVAL) }
    return n.node.linkTarget
  }

  public func open(ino: UInt64) async throws -> (handle: UInt64, keepCache: Bool) {
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
    let h = handles.withLock { h in
      let id = h.next
      h.next += 1
      h.open[id] = file
      return id
    }
    return (h, file.inline == nil)
  }

  public func release(ino: UInt64, handle: UInt64) { _ = handles.withLock { $0.open.removeValue(forKey: handle) } }

  public func read(ino: UInt64, handle: UInt64, offset: Int64, size: Int) async throws -> [UInt8] {
    guard let f = handles.withLock({ $0.open[handle] }) else { throw FUSEError(EBADF) }
    if let data = f.inline {
      guard offset < data.count else { return [] }
      return Array(data[Int(offset)..<min(data.count, Int(offset) + size)])
    }
    let total = f.ends.last ?? 0
    guard offset < total, size > 0 else { return [] }
    let end = min(total, offset + Int64(size))
    var out: [UInt8] = []
    out.reserveCapacity(Int(end - offset))
    // First blob that ends after `offset`.
    var i = f.ends.partitioningIndex { $0 > offset }
    var pos = offset
    // Fetch every blob the request needs concurrently, then copy in order.
    var last = i
    while last < f.ends.count && f.ends[last] < end { last += 1 }
    let needed = Array(f.content[i...min(last, f.content.count - 1)])
    let fetched = try await withThrowingTaskGroup(of: (Int, [UInt8]).self) { g in
      for (k, id) in needed.enumerated() { g.addTask { (k, try await self.blobs.get(id)) } }
      var r = [[UInt8]](repeating: [], count: needed.count)
      for try await (k, b) in g { r[k] = b }
      return r
    }
    for data in fetched {
      let start = i == 0 ? 0 : f.ends[i - 1]
      let from = Int(pos - start)
      let to = Int(min(end, f.ends[i]) - start)
      guard from <= to, to <= data.count else { throw FUSEError(EIO) }
      out += data[from..<to]
      pos = start + Int64(to)
      i += 1
      if pos >= end { break }
    }
    // Read-ahead: the next two blobs, fetched while the caller consumes this answer.
    for k in (last + 1)..<min(last + 3, f.content.count) { blobs.prefetch(f.content[k]) }
    return out
  }

  public func readdir(ino: UInt64) async throws -> (entries: [FUSEDirEntry], cacheable: Bool) {
    if let v = top.withLock({ $0.entries[ino] }) {
      switch v.kind {
      case .dir(let children):
        let all = top.withLock { t in
          children.compactMap { (name, c) in
            t.entries[c].map { FUSEDirEntry(name: name, ino: c, mode: $0.attributes.mode) }
          }
        }
        return (all.sorted { $0.name.lexicographicallyPrecedes($1.name) }, false)
      case .snapshot(let s):
        return (try await listTree(parent: ino, root: ino, tree: s.tree), true)
      default:
        throw FUSEError(ENOTDIR)
      }
    }
    guard let n = nodes.withLock({ $0[ino] }) else { throw FUSEError(ENOENT) }
    guard let sub = n.node.subtree else { throw FUSEError(ENOTDIR) }
    return (try await listTree(parent: ino, root: n.root, tree: sub), true)
  }

  private func listTree(parent: UInt64, root: UInt64, tree: BlobID) async throws -> [FUSEDirEntry] {
    try await loadTree(tree).nodes.map {
      FUSEDirEntry(
        name: $0.name, ino: SnapshotFS.inode(parent: parent, root: root, node: $0), mode: SnapshotFS.stMode($0))
    }
  }

  public func listxattr(ino: UInt64) async throws -> [[UInt8]] {
    guard let n = nodes.withLock({ $0[ino] }) else { return [] }
    return n.node.xattrs.map(\.name)
  }

  public func getxattr(ino: UInt64, name: [UInt8]) async throws -> [UInt8] {
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
      return hashInode([0x68, 0x6c] + le(root) + le(node.deviceID) + le(node.inode))
    }
    return hashInode(le(parent) + node.name)
  }

  static func hashInode(_ bytes: [UInt8]) -> UInt64 {
    let h = RawID.hash(bytes).bytes
    var v: UInt64 = 0
    for i in 0..<8 { v = v << 8 | UInt64(h[i]) }
    v &= (1 << 62) - 1  // keep clear of the top bits some tools treat as signed
    return v < 16 ? v + 16 : v
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

extension Array where Element: Comparable {
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
