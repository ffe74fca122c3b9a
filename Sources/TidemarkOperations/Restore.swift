// Restore: recreate a snapshot tree under a target directory.
// Each needed pack is fetched once (one ranged read covering the blobs needed from it) and its blobs
// are fanned out to every file that needs them. A file is written under a temporary name and renamed
// into place only when complete, then its metadata is applied; directories get theirs last, deepest
// first. Names are checked so nothing is ever written outside the target.
import Foundation
import Synchronization
import TidemarkCore
import TidemarkSystem

public struct RestoreOptions: Sendable {
  public var target: BytePath
  public var includes: [PathPattern] = []
  public var excludes: [PathPattern] = []
  public var dryRun = false
  public init(target: BytePath) { self.target = target }
}

public struct RestoreStats: Sendable {
  public var filesRestored = 0
  public var bytesRestored: Int64 = 0
  public var totalFiles = 0
  public var totalBytes: Int64 = 0
  public var errors: [String] = []
}

public final class Restore: Sendable {
  let repo: Repository
  let options: RestoreOptions
  let names = NameCache()
  let state = Mutex(RestoreStats())
  /// Pack ranges in flight (4 MiB, or one larger blob) and decompression scratch (up to 8 MiB each).
  let packBuffers = BufferPool(keep: Restore.packLimit)
  let blobBuffers = BufferPool(keep: Restore.packLimit)
  /// Restores are bound by the filesystem's inode and page-cache work: more than `cores` packs in
  /// flight only adds memory (measured).
  static let packLimit = max(2, ProcessInfo.processInfo.activeProcessorCount)
  let isRoot = getuid() == 0

  public init(repository: Repository, options: RestoreOptions) {
    repo = repository
    self.options = options
  }

  public var stats: RestoreStats { state.withLock { $0 } }

  /// One entry to recreate: its path below the target and its node.
  struct Item: Sendable {
    var components: [[UInt8]]
    var node: Node
  }

  final class FileJob: Sendable {
    let item: Item
    let path: BytePath
    let temp: BytePath
    let remaining: Mutex<Int>
    let failed = Mutex<Bool>(false)
    /// The temp file, created (and sized) on its first write; -1 until then, -2 once closed.
    let fd = Mutex<Int32>(-1)

    /// Blocking: creates (and sizes) the temp file unless it exists already.
    func create() throws {
      try fd.withLock { fd in
        if fd == -1 { fd = try open() }
      }
    }

    private func open() throws -> Int32 {
      let f = try Sys.open(temp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600)
      if ftruncate(f, off_t(item.node.size)) != 0 {
        let e = errno
        Sys.close(f)
        throw SystemError(e, "ftruncate", temp.description)
      }
      return f
    }

    /// Blocking: writes `data` at `offset`, creating the temp file on first use. Holding the lock
    /// while writing means a concurrent failure cannot close (and the kernel reuse) the descriptor
    /// under the write. Does nothing and returns false once the job is closed (it failed elsewhere).
    func write(_ data: UnsafeRawBufferPointer, at offset: Int64, skip: Bool) throws -> Bool {
      try fd.withLock { fd in
        if fd == -2 { return false }
        if fd == -1 { fd = try open() }
        if !skip { _ = try Sys.pwrite(fd, data, offset: offset) }
        return true
      }
    }

    /// Closes the descriptor; returns whether a temp file had been created.
    @discardableResult
    func close() -> Bool {
      fd.withLock { fd in
        let created = fd >= 0
        if fd >= 0 { Sys.close(fd) }
        fd = -2
        return created
      }
    }
    init(item: Item, path: BytePath, temp: BytePath, blobs: Int) {
      self.item = item
      self.path = path
      self.temp = temp
      remaining = Mutex(blobs)
    }
  }

  static func validName(_ n: [UInt8]) -> Bool {
    !n.isEmpty && n != [46] && n != [46, 46] && !n.contains(47) && !n.contains(0)
  }

  func selected(_ comps: [[UInt8]], isDir: Bool) -> (take: Bool, descend: Bool) {
    if options.excludes.contains(where: { $0.matches(comps) }) { return (false, false) }
    if options.includes.isEmpty { return (true, true) }
    if options.includes.contains(where: { $0.matches(comps) }) { return (true, true) }
    let below = isDir && options.includes.contains { $0.couldMatchBelow(comps) }
    return (false, below)
  }

  /// Walks the tree, collecting items in depth-first order.
  func plan(tree id: BlobID, prefix: [[UInt8]], into items: inout [Item]) async throws {
    let tree = try await repo.loadTree(id)
    for n in tree.nodes {
      guard Restore.validName(n.name) else {
        state.withLock {
          $0.errors.append("skipping entry with unsafe name \(BytePath.display(n.name)) in tree \(id.short)")
        }
        continue
      }
      let comps = prefix + [n.name]
      let (take, descend) = selected(comps, isDir: n.type == .dir)
      if n.type == .dir {
        if take || descend {
          // A directory that is only traversed is still created, to hold what is selected below it.
          let at = items.count
          items.append(Item(components: comps, node: n))
          let before = items.count
          if let sub = n.subtree { try await plan(tree: sub, prefix: comps, into: &items) }
          if !take && items.count == before { items.remove(at: at) }
        }
      } else if take {
        items.append(Item(components: comps, node: n))
      }
    }
  }

  func path(_ comps: [[UInt8]]) -> BytePath {
    var p = options.target
    for c in comps { p = p.appending(c) }
    return p
  }

  func fail(_ msg: String) { state.withLock { $0.errors.append(msg) } }

  public func run(tree: BlobID) async throws -> RestoreStats {
    var items: [Item] = []
    try await plan(tree: tree, prefix: [], into: &items)
    let target = options.target
    if options.dryRun {
      state.withLock { s in
        for i in items where i.node.type == .file {
          s.totalFiles += 1
          s.totalBytes += Int64(i.node.size)
        }
      }
      return stats
    }
    try await Blocking.run { try Sys.mkdirAll(target, 0o700) }

    // 1. Directories (private until their metadata is applied at the end).
    for item in items where item.node.type == .dir {
      let p = path(item.components)
      try await Blocking.run { try Restore.ensureDirectory(p) }
    }

    // 2. Files: each is written to a temp file sized on creation (unwritten zero ranges stay holes),
    //    created on its first write and kept open until complete.
    var toCreate: [FileJob] = []
    var hardlinks: [(Item, BytePath)] = []
    var firstLink: [String: BytePath] = [:]
    var others: [Item] = []
    for item in items {
      switch item.node.type {
      case .dir: continue
      case .file:
        let n = item.node
        let p = path(item.components)
        if n.links > 1 && n.inode != 0 {
          let key = "\(n.deviceID):\(n.inode)"
          if let first = firstLink[key] {
            hardlinks.append((item, first))
            continue
          }
          firstLink[key] = p
        }
        var tmp = p.bytes
        tmp.removeLast(item.components.last!.count)
        tmp += Array(".tidemark-restore-\(UInt32.random(in: 0...UInt32.max))-".utf8) + item.components.last!.prefix(100)
        toCreate.append(FileJob(item: item, path: p, temp: BytePath(bytes: tmp), blobs: (n.content ?? []).count))
        state.withLock {
          $0.totalFiles += 1
          $0.totalBytes += Int64(n.size)
        }
      default:
        others.append(item)
      }
    }
    var jobs: [FileJob] = []
    for job in toCreate {
      if (job.item.node.content ?? []).isEmpty {
        do {
          try await Blocking.run { try job.create() }
        } catch {
          fail("\(job.path): \(error)")
          continue
        }
        await finishFile(job)
      } else {
        jobs.append(job)  // created on its first write
      }
    }

    // 3. Content: group every blob occurrence by pack.
    struct Target: Sendable {
      let job: FileJob
      let offset: Int64
    }
    var byPack: [PackID: [BlobID: (PackedBlob, [Target])]] = [:]
    for job in jobs {
      var off: Int64 = 0
      for id in job.item.node.content ?? [] {
        guard let e = repo.index.lookup(id) else {
          fail("\(job.path): data blob \(id.short) is not in the index; file not restored")
          job.failed.withLock { $0 = true }
          break
        }
        byPack[e.pack, default: [:]][id, default: (e.blob, [])].1.append(Target(job: job, offset: off))
        off += Int64(e.blob.plainLength)
      }
    }

    let packs = Array(byPack)
    try await forEachConcurrently(packs, limit: Restore.packLimit) { (pack, blobs) in
      await self.restorePack(pack, blobs.values.map { ($0.0, $0.1.map { ($0.job, $0.offset) }) })
    }

    // 4. Everything that has no content, then hard links to completed files.
    for item in others { await makeSpecial(item) }
    for (item, first) in hardlinks {
      let p = path(item.components)
      do {
        try await Blocking.run {
          if Sys.exists(p) { try Sys.unlink(p) }
          _ = try first.withCString { a in try p.withCString { b in try check("link", p.description) { link(a, b) } } }
        }
        state.withLock { $0.filesRestored += 1 }
      } catch {
        fail("\(p): \(error)")
      }
    }

    // 5. Directory metadata, deepest first, so restoring contents does not disturb their times.
    for item in items.reversed() where item.node.type == .dir {
      let p = path(item.components)
      let n = item.node
      try? await Blocking.run { self.applyMetadata(p, n) }
    }
    return stats
  }

  /// Word-at-a-time zero test (blobs of holes are skipped: the file was sized, so they stay holes).
  static func isAllZero(_ b: [UInt8]) -> Bool { b.withUnsafeBytes { isAllZero($0) } }

  static func isAllZero(_ raw: UnsafeRawBufferPointer) -> Bool {
    guard let base = raw.baseAddress else { return true }
    let words = raw.count / 8
    var i = 0
    while i < words {
      if base.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self) != 0 { return false }
      i += 1
    }
    for k in (words * 8)..<raw.count where raw[k] != 0 { return false }
    return true
  }

  static func ensureDirectory(_ p: BytePath) throws {
    if let st = try? Sys.lstat(p) {
      if st.isDirectory { return }
      // A file or symlink stands where the snapshot has a directory: replace it (never follow it).
      try Sys.unlink(p)
    }
    try Sys.mkdir(p, 0o700)
  }

  func restorePack(_ pack: PackID, _ blobs: [(PackedBlob, [(FileJob, Int64)])]) async {
    // Read the pack in runs of blobs spanning at most 4 MiB (a larger blob is a run of its own): the
    // buffers in flight stay small, and the page cache serves the reads either way.
    var run: [(PackedBlob, [(FileJob, Int64)])] = []
    for blob in blobs.sorted(by: { $0.0.offset < $1.0.offset }) {
      if let first = run.first, blob.0.offset + blob.0.length - first.0.offset > 4 << 20 {
        await restoreRun(pack, run)
        run.removeAll(keepingCapacity: true)
      }
      run.append(blob)
    }
    if !run.isEmpty { await restoreRun(pack, run) }
  }

  /// Restores blobs that lie close together in one pack (sorted by offset): one read, one blocking hop.
  func restoreRun(_ pack: PackID, _ blobs: [(PackedBlob, [(FileJob, Int64)])]) async {
    let live = blobs.filter { !$0.1.allSatisfy { $0.0.failed.withLock { $0 } } }
    guard let lo = live.first?.0.offset, let hi = live.map({ $0.0.offset + $0.0.length }).max() else {
      return
    }
    let data: [UInt8]
    do {
      data = try await repo.backend.load(
        Handle(.pack, pack.hex), offset: Int(lo), length: Int(hi - lo), reusing: packBuffers.take())
    } catch {
      for (b, targets) in live {
        await failTargets(targets, "cannot read pack \(pack.short) (blob \(b.id.short)): \(error)")
      }
      return
    }
    // One blocking hop decrypts every blob in place and writes it everywhere it belongs, with pooled
    // buffers (no allocation or page faults per blob), and finishes the files it completes.
    struct Outcome: Sendable {
      var failed: [([(FileJob, Int64)], String)] = []
      var bytes: Int64 = 0
    }
    let repo = self.repo
    let scratchPool = self.blobBuffers
    guard
      let (buffer, outcome) = try? await Blocking.run(
        moving: consume data,
        { (data: inout [UInt8]) -> Outcome in
          var out = Outcome()
          var scratch = scratchPool.take()
          defer { scratchPool.give(scratch) }
          data.withUnsafeMutableBytes { d in
            for (b, targets) in live {
              let sealed = UnsafeMutableRawBufferPointer(
                rebasing: d[Int(b.offset - lo)..<Int(b.offset - lo + b.length)])
              do {
                try repo.decodeBlob(inPlace: sealed, b, pack: pack, scratch: &scratch) { plain in
                  let zero = Restore.isAllZero(plain)
                  for (job, off) in targets where !job.failed.withLock({ $0 }) {
                    do {
                      guard try job.write(plain, at: off, skip: zero) else { continue }
                    } catch {
                      out.failed.append(([(job, off)], "\(job.path): \(error)"))
                      continue
                    }
                    out.bytes += Int64(plain.count)
                    if job.remaining.withLock({ r in
                      r -= 1
                      return r == 0
                    }) {
                      self.finishFileNow(job)
                    }
                  }
                }
              } catch {
                out.failed.append((targets, "\(error)"))
              }
            }
          }
          return out
        })
    else { return }
    packBuffers.give(buffer)
    state.withLock { $0.bytesRestored += outcome.bytes }
    for (targets, why) in outcome.failed { await failTargets(targets, why) }
  }

  func failTargets(_ targets: [(FileJob, Int64)], _ why: String) async {
    for (job, _) in targets {
      let first = job.failed.withLock { f in
        let was = f
        f = true
        return !was
      }
      if first {
        fail("\(job.path): not restored: \(why)")
        try? await Blocking.run {
          if job.close() { try Sys.unlink(job.temp) }
        }
      }
    }
  }

  /// Moves a complete file into place and applies its metadata.
  func finishFile(_ job: FileJob) async {
    try? await Blocking.run { self.finishFileNow(job) }
  }

  /// Blocking: `finishFile` on this thread (the pack writer finishes its files in the same hop).
  func finishFileNow(_ job: FileJob) {
    do {
      job.close()
      if let st = try? Sys.lstat(job.path), st.isDirectory {
        throw SystemError(EISDIR, "replace", job.path.description)
      }
      try Sys.rename(job.temp, job.path)
      applyMetadata(job.path, job.item.node)
      state.withLock { $0.filesRestored += 1 }
    } catch {
      job.close()
      try? Sys.unlink(job.temp)
      fail("\(job.path): \(error)")
    }
  }

  func makeSpecial(_ item: Item) async {
    let p = path(item.components)
    let n = item.node
    do {
      try await Blocking.run {
        if let st = try? Sys.lstat(p) {
          if st.isDirectory { throw SystemError(EISDIR, "replace", p.description) }
          try Sys.unlink(p)
        }
        switch n.type {
        case .symlink:
          _ = try BytePath(bytes: n.linkTarget).withCString { t in
            try p.withCString { c in try check("symlink", p.description) { symlink(t, c) } }
          }
        case .fifo:
          _ = try p.withCString { c in try check("mkfifo", p.description) { mkfifo(c, 0o600) } }
        case .dev, .chardev:
          let kind: UInt32 = n.type == .dev ? 0o060000 : 0o020000
          _ = try p.withCString { c in
            try check("mknod", p.description) { mknod(c, mode_t(kind | 0o600), dev_t(n.device)) }
          }
        case .socket:
          return  // sockets are not restorable; restic skips them too
        default:
          return
        }
        self.applyMetadata(p, n)
      }
      state.withLock { $0.filesRestored += 1 }
    } catch {
      fail("\(p): \(error)")
    }
  }

  /// Ownership (as root), xattrs, mode, then times. Best effort: failures are recorded, not fatal.
  func applyMetadata(_ p: BytePath, _ n: Node) {
    p.withCString { c in
      if isRoot {
        var uid = n.uid
        var gid = n.gid
        if let u = names.uid(named: n.user) { uid = u }
        if let g = names.gid(named: n.group) { gid = g }
        if lchown(c, uid, gid) != 0 { fail("\(p): lchown: \(String(cString: strerror(errno)))") }
      }
      if n.type != .symlink {
        for x in n.xattrs {
          let r = BytePath(bytes: x.name).withCString { name in
            x.value.withUnsafeBytes { v in Sys.setXattr(c, name, v) }
          }
          if r != 0 && errno != ENOTSUP {
            fail("\(p): setxattr \(BytePath.display(x.name)): \(String(cString: strerror(errno)))")
          }
        }
        if chmod(c, mode_t(GoMode.permissions(n.mode))) != 0 {
          fail("\(p): chmod: \(String(cString: strerror(errno)))")
        }
      }
      var times = [
        timespec(tv_sec: Int(n.atime.seconds), tv_nsec: Int(n.atime.nanoseconds)),
        timespec(tv_sec: Int(n.mtime.seconds), tv_nsec: Int(n.mtime.nanoseconds)),
      ]
      if utimensat(AT_FDCWD, c, &times, AT_SYMLINK_NOFOLLOW) != 0 {
        fail("\(p): utimensat: \(String(cString: strerror(errno)))")
      }
    }
  }
}

/// Reusable byte buffers: hot loops hand them back instead of freeing them, so their pages stay mapped.
final class BufferPool: Sendable {
  private let free = Mutex<[[UInt8]]>([])
  private let keep: Int

  init(keep: Int) { self.keep = keep }

  func take() -> [UInt8] { free.withLock { $0.popLast() } ?? [] }

  func give(_ b: consuming [UInt8]) {
    let b = consume b
    free.withLock { f in
      if f.count < keep { f.append(b) }
    }
  }
}
