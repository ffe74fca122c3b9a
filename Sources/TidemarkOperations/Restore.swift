// Restore: make a directory equal a snapshot tree, rsync-style.
//
// Every entry is compared with what is on disk first; only differences are acted on. A missing file is
// fetched whole; an existing one that differs is chunked with the repository's chunker and hashed, so
// the blobs it still holds (wherever they moved to) are copied from it and only the others are fetched
// from the repository. Each needed pack is fetched once (ranged reads covering the blobs needed from
// it) and its blobs are fanned out to every file that needs them. A file is built under a temporary
// name and renamed into place when complete (or, with `inplace`, patched where it differs), then its
// metadata is applied; directories get theirs last, deepest first. Names are checked, symlinks on the
// way are replaced rather than followed, and nothing is deleted without `delete`.
import Foundation
import Synchronization
import TidemarkCore
import TidemarkSystem

/// When an existing file is replaced (restic 0.17's `--overwrite`).
public enum OverwritePolicy: String, Sendable, CaseIterable {
  /// Always make the file equal the snapshot (still writing only the blobs that differ).
  case always
  /// Trust an equal size and mtime; otherwise compare the contents (the default).
  case ifChanged = "if-changed"
  /// Only when the snapshot's file is newer than the one on disk.
  case ifNewer = "if-newer"
  /// Never touch an existing file.
  case never
}

public struct RestoreOptions: Sendable {
  public var target: BytePath
  public var includes: [PathPattern] = []
  public var excludes: [PathPattern] = []
  public var dryRun = false
  public var overwrite = OverwritePolicy.ifChanged
  /// Remove what the snapshot does not have, inside the restored tree only.
  public var delete = false
  /// Re-read what was written and check it against the blob IDs.
  public var verify = false
  /// Leave all-zero blobs of new files as holes.
  public var sparse = true
  /// Patch existing files where they differ instead of building a new copy beside them.
  public var inplace = false
  /// Restore only this entry of the tree (a file or directory picked by SNAPSHOT:PATH).
  public var only: [UInt8]? = nil
  /// The node of the directory being restored (SNAPSHOT:DIR): its metadata goes to the target itself.
  public var rootNode: Node? = nil
  /// Receives each change, in order, before it is made (the `--dry-run` list and `-v` output).
  public var itemize: (@Sendable (ItemizedChange) -> Void)? = nil
  public init(target: BytePath) { self.target = target }
}

/// One change, described like `rsync -i`: `>f+++++++++` new file, `>fcst......` content, size and time,
/// `.f...p.....` permissions only, `cd+++++++++` new directory, `cL+++++++++` new symlink,
/// `hf+++++++++` hard link, `*deleting  ` removal.
public struct ItemizedChange: Sendable {
  public var code: String
  /// Below the target, `/`-separated; directories end in `/`.
  public var path: [UInt8]
  public var size: Int64
  public var action: String
  public var linkTarget: [UInt8]? = nil
}

public struct RestoreStats: Sendable {
  /// Files created or updated.
  public var filesRestored = 0
  /// Plaintext bytes fetched from the repository and written.
  public var bytesRestored: Int64 = 0
  public var totalFiles = 0
  public var totalBytes: Int64 = 0
  public var filesCreated = 0
  public var filesUpdated = 0
  public var filesUnchanged = 0
  /// Entries removed (`delete`), counting everything below a removed directory.
  public var entriesDeleted = 0
  /// Bytes of existing files kept: copied from the old file or left in place.
  public var bytesReused: Int64 = 0
  public var bytesVerified: Int64 = 0
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
  static let tempPrefix = Array(".tidemark-restore-".utf8)
  /// Large copies into a new file are made, and their writeback started, in pieces of this size.
  static let writebackPiece = 8 << 20
  /// Starts writeback of copied pieces off the restore's threads (see `FileJob.open`).
  let writeback = DispatchQueue(label: "tidemark-restore-writeback")
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

  /// How a file's new content comes together.
  enum FileMode: Sendable {
    /// A new file beside the path, renamed over it when complete.
    case fresh
    /// Like `fresh`, but ranges the old file still holds are copied from it first.
    case rebuild(old: BytePath, copies: [(from: Int64, to: Int64, count: Int)])
    /// The existing file, patched where it differs, then cut to size.
    case inplace
  }

  final class FileJob: Sendable {
    let item: Item
    let path: BytePath
    let temp: BytePath
    let mode: FileMode
    let sparse: Bool
    let remaining: Mutex<Int>
    let failed = Mutex<Bool>(false)
    /// The file being written, opened on first use; -1 until then, -2 once closed.
    let fd = Mutex<Int32>(-1)
    /// Where writeback of large copied ranges is started (see `open`).
    let writeback: DispatchQueue

    /// Blocking: opens (and prepares) the file unless that happened already.
    func create() throws {
      try fd.withLock { fd in
        if fd == -1 { fd = try open() }
      }
    }

    private func open() throws -> Int32 {
      if case .inplace = mode { return try Sys.open(path, O_WRONLY | O_NOFOLLOW) }
      let f = try Sys.open(temp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600)
      do {
        if ftruncate(f, off_t(item.node.size)) != 0 { throw SystemError(errno, "ftruncate", temp.description) }
        if case .rebuild(let old, let copies) = mode, !copies.isEmpty {
          let src = try Sys.open(old, O_RDONLY | O_NOFOLLOW)
          defer { Sys.close(src) }
          // ext4 writes a file out before a rename over another file returns (auto_da_alloc). For a
          // large copy, have that writeback done alongside: each piece copied is handed to a thread
          // that starts its writeback, while this one copies the next.
          // One descriptor for the writeback thread per file (not per piece: it may lag far behind).
          let d = copies.contains { $0.count >= Restore.writebackPiece } ? dup(f) : -1
          defer { if d >= 0 { writeback.async { Sys.close(d) } } }
          for c in copies {
            var done = 0
            while done < c.count {
              let n = min(c.count - done, Restore.writebackPiece)
              try Sys.copyRange(from: src, at: c.from + Int64(done), to: f, at: c.to + Int64(done), count: n)
              if d >= 0 && n == Restore.writebackPiece {
                let at = c.to + Int64(done)
                writeback.async { Sys.startWriteback(d, at: at, count: n) }
              }
              done += n
            }
          }
        }
      } catch {
        Sys.close(f)
        try? Sys.unlink(temp)
        throw error
      }
      return f
    }

    /// Blocking: writes `data` at `offset`, opening the file on first use. Holding the lock while
    /// writing means a concurrent failure cannot close (and the kernel reuse) the descriptor under
    /// the write. Does nothing and returns false once the job is closed (it failed elsewhere).
    func write(_ data: UnsafeRawBufferPointer, at offset: Int64, zero: Bool) throws -> Bool {
      try fd.withLock { fd in
        if fd == -2 { return false }
        if fd == -1 { fd = try open() }
        // A new file was sized up front: an all-zero blob left unwritten reads as zeros (a hole).
        let hole: Bool
        if case .inplace = mode { hole = false } else { hole = zero && sparse }
        if !hole { try Sys.pwrite(fd, data, offset: offset) }
        return true
      }
    }

    /// Cuts an in-place file to its size (before `close`).
    func truncateInPlace() throws {
      guard case .inplace = mode else { return }
      try fd.withLock { fd in
        if fd >= 0 && ftruncate(fd, off_t(item.node.size)) != 0 {
          throw SystemError(errno, "ftruncate", path.description)
        }
      }
    }

    /// Closes the descriptor; returns whether a temp file had been created.
    @discardableResult
    func close() -> Bool {
      fd.withLock { fd in
        var created = fd >= 0
        if case .inplace = mode { created = false }
        if fd >= 0 { Sys.close(fd) }
        fd = -2
        return created
      }
    }

    init(
      item: Item, path: BytePath, temp: BytePath, mode: FileMode, sparse: Bool, blobs: Int, writeback: DispatchQueue
    ) {
      self.writeback = writeback
      self.item = item
      self.path = path
      self.temp = temp
      self.mode = mode
      self.sparse = sparse
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

  /// Walks the tree, collecting items in depth-first order, and for every directory visited the
  /// names the snapshot has in it (what `delete` must leave alone).
  func plan(
    tree id: BlobID, prefix: [[UInt8]], into items: inout [Item], names known: inout [[[UInt8]]: Set<[UInt8]>],
    loaded: [BlobID: Tree] = [:]
  ) async throws {
    let tree: Tree
    if let t = loaded[id] { tree = t } else { tree = try await repo.loadTree(id) }
    var seen = Set<[UInt8]>()
    for n in tree.nodes {
      guard Restore.validName(n.name) else {
        state.withLock {
          $0.errors.append("skipping entry with unsafe name \(BytePath.display(n.name)) in tree \(id.short)")
        }
        continue
      }
      guard seen.insert(n.name).inserted else {
        // restic's trees hold each name once; two entries of one name (say a symlink and a directory)
        // could make a restore write through the link. Refuse the whole tree.
        throw TidemarkError.corrupt(
          "tree \(id.short) has two entries named \(BytePath.display(n.name)); refusing to restore it",
          hint: "the snapshot is damaged or was not written by restic or tidemark")
      }
      if prefix.isEmpty, let only = options.only, n.name != only { continue }
      let comps = prefix + [n.name]
      let (take, descend) = selected(comps, isDir: n.type == .dir)
      if n.type == .dir {
        if take || descend {
          // A directory that is only traversed is still created, to hold what is selected below it.
          let at = items.count
          items.append(Item(components: comps, node: n))
          let before = items.count
          if let sub = n.subtree {
            try await plan(tree: sub, prefix: comps, into: &items, names: &known, loaded: loaded)
          }
          if !take && items.count == before { items.remove(at: at) }
        }
      } else if take {
        items.append(Item(components: comps, node: n))
      }
    }
    known[prefix] = seen
  }

  func path(_ comps: [[UInt8]]) -> BytePath {
    var p = options.target
    for c in comps { p = p.appending(c) }
    return p
  }

  func fail(_ msg: String) { state.withLock { $0.errors.append(msg) } }

  static func rel(_ comps: [[UInt8]], dir: Bool = false) -> [UInt8] {
    var out: [UInt8] = []
    for (i, c) in comps.enumerated() {
      if i > 0 { out.append(47) }
      out += c
    }
    if dir { out.append(47) }
    return comps.isEmpty ? [46, 47] : out
  }

  func note(
    _ code: String, _ comps: [[UInt8]], dir: Bool = false, size: Int64 = 0, action: String, link: [UInt8]? = nil
  ) {
    options.itemize?(
      ItemizedChange(
        code: code, path: Restore.rel(comps, dir: dir), size: size, action: action, linkTarget: link))
  }

  /// What differs between an existing entry and its node, as rsync's itemize letters.
  struct Changes: OptionSet, Sendable {
    let rawValue: Int
    static let content = Changes(rawValue: 1)
    static let size = Changes(rawValue: 2)
    static let time = Changes(rawValue: 4)
    static let perms = Changes(rawValue: 8)
    static let owner = Changes(rawValue: 16)
    static let group = Changes(rawValue: 32)
    static let xattrs = Changes(rawValue: 64)

    func code(_ y: Character, _ x: Character) -> String {
      var c = [y, x, ".", ".", ".", ".", ".", ".", ".", ".", "."]
      if contains(.content) { c[2] = "c" }
      if contains(.size) { c[3] = "s" }
      if contains(.time) { c[4] = "t" }
      if contains(.perms) { c[5] = "p" }
      if contains(.owner) { c[6] = "o" }
      if contains(.group) { c[7] = "g" }
      if contains(.xattrs) { c[10] = "x" }
      return String(c)
    }
  }

  /// Blocking: metadata differences (mode, ownership as root, mtime, user xattrs) of an existing entry.
  func metadataChanges(_ p: BytePath, _ st: FileStat, _ n: Node, times: Bool = true) -> Changes {
    var c: Changes = []
    if st.mode & 0o7777 != GoMode.permissions(n.mode) && n.type != .symlink { c.insert(.perms) }
    if isRoot {
      var uid = n.uid
      var gid = n.gid
      if let u = names.uid(named: n.user) { uid = u }
      if let g = names.gid(named: n.group) { gid = g }
      if st.uid != uid { c.insert(.owner) }
      if st.gid != gid { c.insert(.group) }
    }
    if times && (st.mtime.0 != n.mtime.seconds || Int64(st.mtime.1) != Int64(n.mtime.nanoseconds)) {
      c.insert(.time)
    }
    if n.type != .symlink {
      let have = ((try? Sys.extendedAttributes(p)) ?? []).filter { !$0.name.starts(with: Array("security.".utf8)) }
      let want = n.xattrs
      if have.count != want.count
        || !want.allSatisfy({ w in have.contains { $0.name == w.name && $0.value == w.value } })
      {
        c.insert(.xattrs)
      }
    }
    return c
  }

  /// The outcome of comparing a file entry with what is on disk.
  enum FileDecision: Sendable {
    case create
    /// A directory stands in the way (removed only with `delete`).
    case replaceDirectory
    case blockedByDirectory
    case keep(Changes)
    case skip
    case update(Changes, FileMode, fetch: [Bool], reused: Int64)
  }

  /// Blocking: decides what to do with one file of the snapshot.
  func decideFile(_ item: Item) throws -> FileDecision {
    let p = path(item.components)
    let n = item.node
    guard let st = try? Sys.lstat(p) else { return .create }
    if st.isDirectory { return options.delete ? .replaceDirectory : .blockedByDirectory }
    guard st.isRegular else { return .create }  // a symlink or special file: replaced by the rename
    let sameSize = st.size == Int64(n.size)
    let sameTime = st.mtime.0 == n.mtime.seconds && Int64(st.mtime.1) == Int64(n.mtime.nanoseconds)
    switch options.overwrite {
    case .never: return .skip
    case .ifNewer:
      if (st.mtime.0, Int64(st.mtime.1)) >= (n.mtime.seconds, Int64(n.mtime.nanoseconds)) { return .skip }
    case .ifChanged:
      if sameSize && sameTime { return .keep(metadataChanges(p, st, n)) }
    case .always: break
    }
    // Compare contents: which of the snapshot's blobs does the file on disk hold, and where? First at
    // the snapshot's offsets (a hash per blob, no chunking: edits in place keep every other blob where
    // it was). If the size differs, data after the first mismatch may have moved: chunk the rest of
    // the file from there (a blob boundary, so cuts fall where the backup's did) and look blobs up.
    let content = n.content ?? []
    var spans: [(id: BlobID, off: Int64, len: Int)] = []
    var end: Int64 = 0
    for id in content {
      guard let e = repo.index.lookup(id) else {
        throw TidemarkError.corrupt("data blob \(id.short) of \(p) is not in the index", hint: "run `tidemark check`")
      }
      spans.append((id, end, Int(e.blob.plainLength)))
      end += Int64(e.blob.plainLength)
    }
    let atOffset = try Restore.blobsAtOffsets(p, spans.map { ($0.id.raw, $0.off, $0.len) })
    var moved: [RawID: Int64] = [:]
    if !sameSize && !options.inplace, let first = atOffset.firstIndex(of: false) {
      moved = try Restore.localBlobs(p, from: spans[first].off, tables: repo.chunkerTables)
    }
    var fetch: [Bool] = []
    var copies: [(from: Int64, to: Int64, count: Int)] = []
    var sameAll = sameSize
    var reused: Int64 = 0
    for (k, b) in spans.enumerated() {
      let at: Int64? = atOffset[k] ? b.off : moved[b.id.raw]
      if let at {
        if at != b.off { sameAll = false }
        if options.inplace {
          fetch.append(false)  // only blobs already at their offset count when patching in place
        } else {
          fetch.append(false)
          copies.append((at, b.off, b.len))
        }
        reused += Int64(b.len)
      } else {
        sameAll = false
        fetch.append(true)
      }
    }
    // Adjacent copies become one (fewer, larger copy_file_range calls).
    var merged: [(from: Int64, to: Int64, count: Int)] = []
    for c in copies {
      if let last = merged.last, last.from + Int64(last.count) == c.from, last.to + Int64(last.count) == c.to {
        merged[merged.count - 1].count += c.count
      } else {
        merged.append(c)
      }
    }
    copies = merged
    var changes = metadataChanges(p, st, n)
    if sameAll { return .keep(changes) }
    changes.insert(.content)
    if !sameSize { changes.insert(.size) }
    return .update(changes, options.inplace ? .inplace : .rebuild(old: p, copies: copies), fetch: fetch, reused: reused)
  }

  /// Decides every file item (by index into `items`; other items get a placeholder), in batches on
  /// blocking threads: one hop per file would cost more than the lstat it does.
  /// A file whose directory is not among `real` (real directories on disk, reached through real
  /// directories) is created: what stands at its path is not looked at (it may lie behind a symlink).
  func decideFiles(_ items: [Item], real: Set<[[UInt8]]>) async throws -> [Result<FileDecision, Error>] {
    let files = items.indices.filter { items[$0].node.type == .file }
    let out = Mutex([Result<FileDecision, Error>](repeating: .success(.skip), count: items.count))
    let batches = stride(from: 0, to: files.count, by: 256).map { Array(files[$0..<min($0 + 256, files.count)]) }
    try await forEachConcurrently(batches, limit: Restore.packLimit) { batch in
      let results = try await Blocking.run {
        batch.map { k in
          (
            k,
            real.contains(Array(items[k].components.dropLast()))
              ? Result { try self.decideFile(items[k]) } : .success(.create)
          )
        }
      }
      out.withLock { o in
        for (k, r) in results { o[k] = r }
      }
    }
    return out.withLock { $0 }
  }

  /// Blocking: for each (id, offset, length), whether the file holds exactly that blob there. A large
  /// file is hashed on all cores, each taking a contiguous share of its blobs.
  static func blobsAtOffsets(_ p: BytePath, _ spans: [(RawID, Int64, Int)]) throws -> [Bool] {
    let fd = try Sys.open(p, O_RDONLY | O_NOFOLLOW)
    defer { Sys.close(fd) }
    let size = Int64(try Sys.fstat(fd).size)
    let total = spans.reduce(0) { $0 + $1.2 }
    let shares = min(ProcessInfo.processInfo.activeProcessorCount, max(1, total / Restore.hashShare), spans.count)
    if shares <= 1 { return try blobsAtOffsets(fd, size, spans[...]) }
    // Cut the blob list where each share has about total/shares bytes.
    var bounds = [0]
    var acc = 0
    for (k, s) in spans.enumerated() {
      acc += s.2
      if acc >= total * bounds.count / shares && bounds.count < shares && k + 1 < spans.count { bounds.append(k + 1) }
    }
    bounds.append(spans.count)
    let cuts = bounds
    let results = Mutex([Result<[Bool], Error>](repeating: .success([]), count: bounds.count - 1))
    DispatchQueue.concurrentPerform(iterations: cuts.count - 1) { i in
      let r = Result { try blobsAtOffsets(fd, size, spans[cuts[i]..<cuts[i + 1]]) }
      results.withLock { $0[i] = r }
    }
    return try results.withLock { $0 }.flatMap { try $0.get() }
  }

  /// Files with at least this many bytes of blobs per core are hashed on several cores.
  static let hashShare = 16 << 20

  static func blobsAtOffsets(_ fd: Int32, _ size: Int64, _ spans: ArraySlice<(RawID, Int64, Int)>) throws -> [Bool] {
    var buf: [UInt8] = []
    return try spans.map { (id, off, len) in
      guard off + Int64(len) <= size else { return false }
      buf.resizeReusing(len)
      let got = try buf.withUnsafeMutableBytes { try Sys.pread(fd, $0, offset: off) }
      return got == len && RawID.hash(buf) == id
    }
  }

  /// Blocking: chunks a file from `from` (a chunk boundary) with the repository's chunker; where each
  /// chunk (by ID) starts.
  static func localBlobs(_ p: BytePath, from: Int64 = 0, tables: ChunkerTables) throws -> [RawID: Int64] {
    let fd = try Sys.open(p, O_RDONLY | O_NOFOLLOW)
    defer { Sys.close(fd) }
    var out: [RawID: Int64] = [:]
    // Room for the largest chunk twice over, or the whole file if smaller (many small files get compared).
    let size = Int(try Sys.fstat(fd).size - from)
    var buf = [UInt8](repeating: 0, count: max(4096, min(16 << 20, size + 1)))
    var start = 0  // unconsumed data begins here in buf
    var end = 0
    var scanned = 0
    var fileOffset: Int64 = from  // file offset of buf[start]
    var readOffset: Int64 = from
    var eof = false
    while true {
      if !eof {
        if start > 0 && end == buf.count {
          buf.withUnsafeMutableBytes { b in
            b.baseAddress!.copyMemory(from: b.baseAddress! + start, byteCount: end - start)
          }
          end -= start
          start = 0
        }
        let got = try buf.withUnsafeMutableBytes {
          try Sys.pread(fd, UnsafeMutableRawBufferPointer(rebasing: $0[end..<$0.count]), offset: readOffset)
        }
        readOffset += Int64(got)
        end += got
        if got == 0 { eof = true }
      }
      while start + scanned < end {
        let cut = buf.withUnsafeBytes { b in
          Chunker.cut(in: UnsafeRawBufferPointer(rebasing: b[start..<end]), scanned: scanned, tables: tables)
        }
        guard let len = cut else {
          scanned = end - start
          break
        }
        let id = buf.withUnsafeBytes { RawID.hash(UnsafeRawBufferPointer(rebasing: $0[start..<(start + len)])) }
        if out[id] == nil { out[id] = fileOffset }
        start += len
        fileOffset += Int64(len)
        scanned = 0
      }
      if eof {
        if end > start {
          let id = buf.withUnsafeBytes { RawID.hash(UnsafeRawBufferPointer(rebasing: $0[start..<end])) }
          if out[id] == nil { out[id] = fileOffset }
        }
        return out
      }
      if start == 0 && end == buf.count && scanned == end {
        // Cannot happen (a chunk is at most 8 MiB, the buffer 16 MiB), but never spin.
        throw TidemarkError(.general, "\(p): chunker made no progress")
      }
    }
  }

  public func run(tree: BlobID) async throws -> RestoreStats {
    var items: [Item] = []
    var known: [[[UInt8]]: Set<[UInt8]>] = [:]
    // Every tree below, loaded several at a time first (the walk below goes one by one), unless
    // filters or a single entry mean only part of it is needed.
    var loaded: [BlobID: Tree] = [:]
    if options.only == nil && options.includes.isEmpty {
      let trees = Mutex<[BlobID: Tree]>([:])
      try await walkTrees(repo, roots: [tree]) { id, t in trees.withLock { $0[id] = t } }
      loaded = trees.withLock { $0 }
    }
    try await plan(tree: tree, prefix: [], into: &items, names: &known, loaded: loaded)
    let target = options.target
    let dry = options.dryRun
    if !dry { try await Blocking.run { try Sys.mkdirAll(target, 0o700) } }

    // 1. Deletions first (they free space), each directory of the snapshot that exists on disk:
    //    what the snapshot does not have goes, unless filters exclude it. Also our own temp files
    //    left by an interrupted restore, with or without `delete`. Only real directories reached
    //    through real directories are listed: where a symlink stands for a directory of the snapshot,
    //    what it points to is none of our business (step 2 replaces the link). All listings in one hop.
    var dirs: [[[UInt8]]] = options.only == nil ? [[]] : []
    for item in items where item.node.type == .dir { dirs.append(item.components) }
    let (real, listings) = try await Blocking.run { [dirs] in
      // Parents come before their children (`plan` is depth first, pre-order).
      var real: Set<[[UInt8]]> = [[]]
      var listings: [([[UInt8]], [[UInt8]])] = []
      for comps in dirs {
        if !comps.isEmpty {
          guard real.contains(Array(comps.dropLast())), let st = try? Sys.lstat(self.path(comps)), st.isDirectory
          else { continue }
          real.insert(comps)
        }
        listings.append((comps, (try? Sys.readDirectory(self.path(comps))) ?? []))
      }
      return (real, listings)
    }
    for (comps, local) in listings {
      let p = path(comps)
      let keep = known[comps] ?? []
      for name in local.sorted(by: { $0.lexicographicallyPrecedes($1) }) where !keep.contains(name) {
        let c = comps + [name]
        let ours = name.starts(with: Restore.tempPrefix)
        if !ours {
          guard options.delete else { continue }
          let isDir = (try? Sys.lstat(p.appending(name)))?.isDirectory ?? false
          let (take, descend) = selected(c, isDir: isDir)
          guard take || (descend && options.includes.isEmpty) else { continue }
          note("*deleting  ", c, dir: isDir, action: "deleted")
        }
        // Counted as listed: one per removed name (a directory counts once, whatever it held).
        if !ours { state.withLock { $0.entriesDeleted += 1 } }
        if dry { continue }
        do {
          _ = try await Blocking.run { try Sys.removeTree(p.appending(name)) }
        } catch {
          fail("\(p.appending(name)): cannot delete: \(error)")
        }
      }
    }

    // 2. Directories (private until their metadata is applied at the end). A file or link in the
    //    way is replaced, never followed. The target itself first, when it stands for a directory.
    if let root = options.rootNode, let st = try? await Blocking.run({ try Sys.lstat(target) }), st.isDirectory {
      let c = (try? await Blocking.run { self.metadataChanges(target, st, root) }) ?? []
      if !c.isEmpty { note(c.code(".", "d"), [], dir: true, action: "updated") }
    }
    // nil: the directory is to be made (nothing, or something else, stands there).
    let looked: [(Int, Changes?)] = try await Blocking.run { [items] in
      items.indices.filter { items[$0].node.type == .dir }.map { k in
        let p = self.path(items[k].components)
        guard real.contains(items[k].components), let st = try? Sys.lstat(p), st.isDirectory else { return (k, nil) }
        return (k, self.metadataChanges(p, st, items[k].node))
      }
    }
    var made: [BytePath] = []
    for (k, c) in looked {
      if let c {
        if !c.isEmpty { note(c.code(".", "d"), items[k].components, dir: true, action: "updated") }
      } else {
        note("cd+++++++++", items[k].components, dir: true, action: "created")
        made.append(path(items[k].components))
      }
    }
    if !dry && !made.isEmpty { try await Blocking.run { [made] in for p in made { try Restore.ensureDirectory(p) } } }

    // 3. Files: decide each against the disk, then write what differs. New files are written to a
    //    temp file sized on creation and renamed into place when complete.
    var jobs: [FileJob] = []
    var fetchMask: [ObjectIdentifier: [Bool]] = [:]
    var hardlinks: [(Item, BytePath)] = []
    var firstLink: [String: BytePath] = [:]
    var others: [Item] = []
    var keeps: [(Item, Changes)] = []
    let decided = try await decideFiles(items, real: real)
    for (k, item) in items.enumerated() {
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
        state.withLock {
          $0.totalFiles += 1
          $0.totalBytes += Int64(n.size)
        }
        let decision: FileDecision
        switch decided[k] {
        case .success(let d): decision = d
        case .failure(let error):
          fail("\(p): \(error)")
          continue
        }
        var mode = FileMode.fresh
        var mask: [Bool]? = nil
        switch decision {
        case .skip:
          state.withLock { $0.filesUnchanged += 1 }
          continue
        case .keep(let c):
          state.withLock {
            $0.filesUnchanged += 1
            $0.bytesReused += Int64(n.size)
          }
          if !c.isEmpty {
            note(c.code(".", "f"), item.components, size: Int64(n.size), action: "updated")
            keeps.append((item, c))
          }
          continue
        case .blockedByDirectory:
          fail("\(p): a directory stands where the snapshot has a file; add --delete to replace it")
          continue
        case .create:
          note(">f+++++++++", item.components, size: Int64(n.size), action: "created")
        case .replaceDirectory:
          note(">f+++++++++", item.components, size: Int64(n.size), action: "created")
          if !dry {
            do {
              _ = try await Blocking.run { try Sys.removeTree(p) }
            } catch {
              fail("\(p): cannot remove the directory in the way: \(error)")
              continue
            }
          }
        case .update(let c, let m, let fetch, let reused):
          note(c.code(">", "f"), item.components, size: Int64(n.size), action: "updated")
          mode = m
          mask = fetch
          state.withLock { $0.bytesReused += reused }
        }
        if case .update = decision {
          state.withLock { $0.filesUpdated += 1 }
        } else {
          state.withLock { $0.filesCreated += 1 }
        }
        var tmp = p.bytes
        tmp.removeLast(item.components.last!.count)
        tmp +=
          Restore.tempPrefix + Array("\(UInt32.random(in: 0...UInt32.max))-".utf8) + item.components.last!.prefix(100)
        let fetches = mask.map { $0.filter { $0 }.count } ?? (n.content ?? []).count
        let job = FileJob(
          item: item, path: p, temp: BytePath(bytes: tmp), mode: mode, sparse: options.sparse, blobs: fetches,
          writeback: writeback)
        if let mask { fetchMask[ObjectIdentifier(job)] = mask }
        jobs.append(job)
      default:
        others.append(item)
      }
    }

    // Specials and hard links are decided (and listed) before anything is written.
    var specials: [Item] = []
    for item in others {
      let p = path(item.components)
      let n = item.node
      let st: FileStat? =
        real.contains(Array(item.components.dropLast())) ? try? await Blocking.run { try Sys.lstat(p) } : nil
      if let st {
        if st.isDirectory && !options.delete {
          fail("\(p): a directory stands where the snapshot has a \(n.type.rawValue); add --delete to replace it")
          continue
        }
        let same: Bool
        switch n.type {
        case .symlink: same = st.isSymlink && (try? Sys.readlink(p)) == n.linkTarget
        case .fifo: same = st.fileType == 0o010000
        case .dev: same = st.fileType == 0o060000 && st.rdev == n.device
        case .chardev: same = st.fileType == 0o020000 && st.rdev == n.device
        default: same = true
        }
        if same {
          let c = (try? await Blocking.run { self.metadataChanges(p, st, n, times: n.type != .symlink) }) ?? []
          if !c.isEmpty && n.type != .symlink {
            note(c.code(".", n.type == .symlink ? "L" : "D"), item.components, action: "updated")
            keeps.append((item, c))
          }
          continue
        }
      }
      if n.type == .socket { continue }
      let x: Character = n.type == .symlink ? "L" : n.type == .fifo ? "S" : "D"
      note("c\(x)+++++++++", item.components, action: "created", link: n.type == .symlink ? n.linkTarget : nil)
      state.withLock { $0.filesCreated += 1 }
      specials.append(item)
    }
    var links: [(Item, BytePath)] = []
    // A file written anew (not patched in place) gets a new inode: its other names must follow.
    var renewed = Set<[UInt8]>()
    for job in jobs {
      if case .inplace = job.mode { continue }
      renewed.insert(job.path.bytes)
    }
    for (item, first) in hardlinks {
      let p = path(item.components)
      let same: Bool =
        renewed.contains(first.bytes) || !real.contains(Array(item.components.dropLast()))
        ? false
        : (try? await Blocking.run {
          guard let a = try? Sys.lstat(p), let b = try? Sys.lstat(first) else { return false }
          return a.isRegular && a.inode == b.inode && a.device == b.device
        }) ?? false
      if same { continue }
      let shown = Array(first.bytes.dropFirst(target.bytes.count + (target.bytes == [47] ? 0 : 1)))
      note("hf+++++++++", item.components, action: "created", link: shown)
      state.withLock { $0.filesCreated += 1 }
      links.append((item, first))
    }

    if dry {
      state.withLock { s in
        for job in jobs {
          let content = job.item.node.content ?? []
          let mask = fetchMask[ObjectIdentifier(job)]
          for (k, id) in content.enumerated() where mask?[k] ?? true {
            s.bytesRestored += Int64(repo.index.lookup(id)?.blob.plainLength ?? 0)
          }
        }
      }
      return stats
    }

    // 4. Content: open files that fetch nothing now; group every blob to fetch by pack.
    var writing: [FileJob] = []
    for job in jobs {
      if job.remaining.withLock({ $0 }) == 0 {
        do {
          try await Blocking.run { try job.create() }
        } catch {
          fail("\(job.path): \(error)")
          job.close()
          continue
        }
        await finishFile(job)
      } else {
        writing.append(job)  // opened on its first write
      }
    }
    struct Target: Sendable {
      let job: FileJob
      let offset: Int64
    }
    var byPack: [PackID: [BlobID: (PackedBlob, [Target])]] = [:]
    for job in writing {
      var off: Int64 = 0
      let mask = fetchMask[ObjectIdentifier(job)]
      for (k, id) in (job.item.node.content ?? []).enumerated() {
        guard let e = repo.index.lookup(id) else {
          fail("\(job.path): data blob \(id.short) is not in the index; file not restored")
          job.failed.withLock { $0 = true }
          break
        }
        if mask?[k] ?? true {
          byPack[e.pack, default: [:]][id, default: (e.blob, [])].1.append(Target(job: job, offset: off))
        }
        off += Int64(e.blob.plainLength)
      }
    }
    let packs = Array(byPack)
    // Files rebuilt from large unchanged ranges of the old one: start those copies now, beside the
    // fetching, rather than when their first fetched blob arrives (a write waits for its file's copy).
    let large = writing.filter { job in
      guard case .rebuild(_, let copies) = job.mode else { return false }
      return copies.reduce(0) { $0 + $1.count } >= Restore.writebackPiece
    }
    async let copied: Void = forEachConcurrently(large, limit: 1) { job in
      _ = try? await Blocking.run { try job.create() }  // on failure, the first write tries again and reports
    }
    try await forEachConcurrently(packs, limit: Restore.packLimit) { (pack, blobs) in
      await self.restorePack(pack, blobs.values.map { ($0.0, $0.1.map { ($0.job, $0.offset) }) })
    }
    try await copied

    // 5. Links and special files, then hard links to completed files, then metadata of what stayed.
    for item in specials { await makeSpecial(item) }
    for (item, first) in links {
      let p = path(item.components)
      do {
        try await Blocking.run {
          let tmp = Restore.tempPath(p, item.components.last!)
          _ = try first.withCString { a in
            try tmp.withCString { b in try check("link", p.description) { link(a, b) } }
          }
          do {
            try Sys.rename(tmp, p)
          } catch {
            try? Sys.unlink(tmp)
            throw error
          }
        }
        state.withLock { $0.filesRestored += 1 }
      } catch {
        fail("\(p): \(error)")
      }
    }
    for (item, _) in keeps {
      let p = path(item.components)
      let n = item.node
      try? await Blocking.run { self.applyMetadata(p, n) }
    }

    // 6. Directory metadata, deepest first, so restoring contents does not disturb their times.
    for item in items.reversed() where item.node.type == .dir {
      let p = path(item.components)
      let n = item.node
      try? await Blocking.run { self.applyMetadata(p, n) }
    }
    if let root = options.rootNode { try? await Blocking.run { self.applyMetadata(target, root) } }

    // 7. Verification: re-read what was written and hash it blob by blob.
    if options.verify {
      for job in jobs where !job.failed.withLock({ $0 }) {
        do {
          let n = try await Blocking.run { try self.verifyFile(job.path, job.item.node) }
          state.withLock { $0.bytesVerified += n }
        } catch {
          fail("\(job.path): verification failed: \(error)")
        }
      }
    }
    return stats
  }

  static func tempPath(_ p: BytePath, _ name: [UInt8]) -> BytePath {
    var tmp = p.bytes
    tmp.removeLast(name.count)
    tmp += tempPrefix + Array("\(UInt32.random(in: 0...UInt32.max))-".utf8) + name.prefix(100)
    return BytePath(bytes: tmp)
  }

  /// Blocking: reads `p` back and checks every blob of `n` against its ID; returns the bytes checked.
  func verifyFile(_ p: BytePath, _ n: Node) throws -> Int64 {
    let fd = try Sys.open(p, O_RDONLY | O_NOFOLLOW)
    defer { Sys.close(fd) }
    var buf: [UInt8] = []
    var off: Int64 = 0
    for id in n.content ?? [] {
      guard let e = repo.index.lookup(id) else { throw TidemarkError.corrupt("blob \(id.short) is not in the index") }
      let len = Int(e.blob.plainLength)
      buf.resizeReusing(len)
      let got = try buf.withUnsafeMutableBytes { try Sys.pread(fd, $0, offset: off) }
      guard got == len, RawID.hash(buf) == id.raw else {
        throw TidemarkError.corrupt("bytes \(off)..<\(off + Int64(len)) differ from blob \(id.short)")
      }
      off += Int64(len)
    }
    guard Int64(try Sys.fstat(fd).size) == off else { throw TidemarkError.corrupt("size differs from the snapshot") }
    return off
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
                      guard try job.write(plain, at: off, zero: zero) else { continue }
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
      if case .inplace = job.mode {
        try job.truncateInPlace()
        job.close()
      } else {
        job.close()
        if let st = try? Sys.lstat(job.path), st.isDirectory {
          throw SystemError(EISDIR, "replace", job.path.description)
        }
        // Atomic: whoever looks at the path sees the old file or the new one, never a mix.
        try Sys.rename(job.temp, job.path)
      }
      applyMetadata(job.path, job.item.node)
      state.withLock { $0.filesRestored += 1 }
    } catch {
      if job.close() { try? Sys.unlink(job.temp) }
      fail("\(job.path): \(error)")
    }
  }

  func makeSpecial(_ item: Item) async {
    let p = path(item.components)
    let n = item.node
    do {
      let delete = options.delete
      let removed: Int = try await Blocking.run {
        var removed = 0
        if let st = try? Sys.lstat(p), st.isDirectory {
          guard delete else { throw SystemError(EISDIR, "replace", p.description) }
          removed = try Sys.removeTree(p)
        }
        // Made under a temporary name and renamed over whatever stands at the path (atomic).
        let tmp = Restore.tempPath(p, item.components.last!)
        switch n.type {
        case .symlink:
          _ = try BytePath(bytes: n.linkTarget).withCString { t in
            try tmp.withCString { c in try check("symlink", p.description) { symlink(t, c) } }
          }
        case .fifo:
          _ = try tmp.withCString { c in try check("mkfifo", p.description) { mkfifo(c, 0o600) } }
        case .dev, .chardev:
          let kind: UInt32 = n.type == .dev ? 0o060000 : 0o020000
          _ = try tmp.withCString { c in
            try check("mknod", p.description) { mknod(c, mode_t(kind | 0o600), dev_t(n.device)) }
          }
        case .socket:
          return removed  // sockets are not restorable; restic skips them too
        default:
          return removed
        }
        do {
          try Sys.rename(tmp, p)
        } catch {
          try? Sys.unlink(tmp)
          throw error
        }
        self.applyMetadata(p, n)
        return removed
      }
      _ = removed
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
