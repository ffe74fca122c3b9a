// One file being written: where its content goes (a temp file beside the path, or the file itself when
// patched in place), how many blobs it still waits for, and its descriptor. Concurrency contract: every
// method blocks and may be called from any pack writer's thread; the descriptor's lock makes a
// failure elsewhere unable to close it under a write.
import Foundation
import Synchronization
import TidemarkCore
import TidemarkSystem

extension Restore {
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
    /// The end of the furthest write into a new file (changed only under `fd`'s lock). A new file is not
    /// sized up front: most are written whole by one write, and `finishSize` extends the others (a
    /// trailing all-zero blob left as a hole) before the rename.
    let extent = Atomic<Int64>(0)
    /// Where writeback of large copied ranges is started (see `open`).
    let writeback: DispatchQueue
    /// Set when nothing stood at the path when the restore looked: the new file may then be written unnamed
    /// (O_TMPFILE) and linked at the path once complete. Nobody sees it before, no temp name is made or
    /// renamed, and an interrupted restore leaves nothing behind. (A file replacing another goes through a named
    /// temp file and a rename, which replaces atomically.)
    let unnamedFiles: UnnamedFiles?
    /// Whether the open descriptor is an unnamed file (set under `fd`'s lock, before anything is written).
    let isUnnamed = Atomic<Bool>(false)

    /// Blocking: opens (and prepares) the file unless that happened already.
    func create() throws {
      try fd.withLock { fd in
        if fd == -1 { fd = try open() }
      }
    }

    private func open() throws -> Int32 {
      if case .inplace = mode { return try Sys.open(path, O_WRONLY | O_NOFOLLOW) }
      if case .fresh = mode, let unnamedFiles {
        let dir = path.parent
        // Any failure (no unnamed files on this filesystem, a missing directory) falls through to the named
        // temp file, whose open reports what is wrong.
        if unnamedFiles.available(in: dir), let f = try? Sys.openUnnamed(in: dir, mode: 0o600) {
          isUnnamed.store(true, ordering: .relaxed)
          return f
        }
      }
      let f = try Sys.open(temp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600)
      do {
        if case .rebuild(let old, let copies) = mode, !copies.isEmpty {
          // Sized first: the copies land anywhere in it.
          if ftruncate(f, off_t(item.node.size)) != 0 { throw SystemError(errno, "ftruncate", temp.description) }
          extent.store(Int64(item.node.size), ordering: .relaxed)
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
        // In a new file an all-zero blob left unwritten reads as zeros (a hole; `finishSize` covers
        // one at the end).
        let hole: Bool
        if case .inplace = mode { hole = false } else { hole = zero && sparse }
        if !hole {
          try Sys.pwrite(fd, data, offset: offset)
          let end = offset + Int64(data.count)
          if end > extent.load(ordering: .relaxed) { extent.store(end, ordering: .relaxed) }
        }
        return true
      }
    }

    /// Extends a new file to its size when its last write ended short of it (before `close`).
    func finishSize() throws {
      if case .inplace = mode { return }
      try fd.withLock { fd in
        let size = Int64(item.node.size)
        if fd >= 0 && extent.load(ordering: .relaxed) < size && ftruncate(fd, off_t(size)) != 0 {
          throw SystemError(errno, "ftruncate", temp.description)
        }
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

    /// Blocking: runs `body` with the open descriptor (not after a failure closed it); returns whether it ran.
    func withOpenDescriptor(_ body: (Int32) -> Void) -> Bool {
      fd.withLock { fd in
        guard fd >= 0 else { return false }
        body(fd)
        return true
      }
    }

    /// Blocking: names the complete unnamed file at its path (before `close`). Something that appeared at the
    /// path since the restore looked is replaced as by a named temp file (a directory stays: EISDIR).
    func linkIntoPlace() throws {
      try fd.withLock { fd in
        guard fd >= 0 else { throw SystemError(EBADF, "link", path.description) }
        do {
          try Sys.linkUnnamed(fd, to: path)
        } catch let e as SystemError where e.errno == EEXIST {
          try Sys.linkUnnamed(fd, to: temp)
          try Restore.replace(path, with: temp)
        }
      }
    }

    /// Closes the descriptor; returns whether a named temp file had been created.
    @discardableResult
    func close() -> Bool {
      fd.withLock { fd in
        var created = fd >= 0
        if case .inplace = mode { created = false }
        if isUnnamed.load(ordering: .relaxed) { created = false }
        if fd >= 0 { Sys.close(fd) }
        fd = -2
        return created
      }
    }

    init(
      item: Item, path: BytePath, temp: BytePath, mode: FileMode, sparse: Bool, blobs: Int, writeback: DispatchQueue,
      unnamedFiles: UnnamedFiles?
    ) {
      self.writeback = writeback
      self.unnamedFiles = unnamedFiles
      self.item = item
      self.path = path
      self.temp = temp
      self.mode = mode
      self.sparse = sparse
      remaining = Mutex(blobs)
    }
  }

  /// Whether a restore's new files can be written unnamed and linked into place (`Sys.canLinkUnnamed`), tried
  /// once, in the directory of the first new file.
  final class UnnamedFiles: Sendable {
    private let decided = Mutex<Bool?>(nil)
    private let probeName: [UInt8]

    init(probeName: [UInt8]) { self.probeName = probeName }

    /// Blocking (the first call makes and removes a file in `dir`).
    func available(in dir: BytePath) -> Bool {
      decided.withLock { d in
        if let d { return d }
        let yes = Sys.canLinkUnnamed(in: dir, probeName: probeName)
        d = yes
        return yes
      }
    }
  }

  /// Blocking: renames the complete temp file `temp` over `p`, atomically: whoever looks at the path sees the
  /// old file or the new one, never a mix. A directory that appeared in the way since the plan makes the rename
  /// fail (EISDIR); it is left alone. The temp file is gone either way.
  static func replace(_ p: BytePath, with temp: BytePath) throws {
    do {
      try Sys.rename(temp, p)
    } catch let e as SystemError {
      try? Sys.unlink(temp)
      if e.errno == EISDIR { throw SystemError(EISDIR, "replace", p.description) }
      throw e
    }
  }

  /// A temp name beside `p` (whose last component is `name`): this restore's random tag and a counter,
  /// unique within the restore and unlikely to meet another's; created with O_EXCL all the same.
  func tempPath(_ p: BytePath, _ name: [UInt8]) -> BytePath {
    var tmp = p.bytes
    tmp.removeLast(name.count)
    let n = tempCounter.add(1, ordering: .relaxed).newValue
    tmp += Restore.tempPrefix + tempTag
    tmp.appendDecimal(n)
    tmp.append(45)  // "-"
    tmp += name.prefix(100)
    return BytePath(bytes: tmp)
  }
}
