// Small files travel in batches. A file shorter than the chunker's minimum size is one blob; storing it
// costs microseconds of CPU, so a task and two thread hops per file would cost as much as the work. The
// walk collects such files (across directories, in walk order) and hands each full batch to one task,
// which opens, reads, hashes, compresses and seals all of them on one blocking thread, reusing one read
// buffer and one sealing buffer, then stores the packs that filled. A directory's tree waits on the batch
// that holds its files.
import Synchronization
import TidemarkCore
import TidemarkSystem

#if canImport(Glibc)
  import Glibc
#endif

/// A value that several tasks wait for, set once.
final class Promise<T: Sendable>: Sendable {
  private enum State {
    case waiting([CheckedContinuation<T, Error>])
    case done(Result<T, Error>)
  }
  private let state = Mutex(State.waiting([]))

  func fulfil(_ result: Result<T, Error>) {
    let waiters = state.withLock { s -> [CheckedContinuation<T, Error>] in
      guard case .waiting(let w) = s else { return [] }
      s = .done(result)
      return w
    }
    for w in waiters { w.resume(with: result) }
  }

  var value: T {
    get async throws {
      try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, Error>) in
        let done = state.withLock { s -> Result<T, Error>? in
          switch s {
          case .done(let r): return r
          case .waiting(var w):
            w.append(c)
            s = .waiting(w)
            return nil
          }
        }
        if let done { c.resume(with: done) }
      }
    }
  }
}

/// Files waiting for their batch to fill.
struct SmallFileBatch: Sendable {
  struct Item: Sendable {
    var path: BytePath
    var node: Node
    var isNew: Bool
    /// The file's directory, still open: the file is opened by its name there.
    var directory: OpenDirectory?
  }
  /// A batch holds at most this many files or bytes: enough to make the hops rare, few enough that a
  /// cold read still keeps several batches (and so several reads) in flight.
  static let maxFiles = 64
  static let maxBytes = 2 << 20

  var items: [Item] = []
  var bytes = 0
  var promise = Promise<[Node?]>()

  var isFull: Bool { items.count >= SmallFileBatch.maxFiles || bytes >= SmallFileBatch.maxBytes }
}

extension Backup {
  /// Does this file go into a batch? Files that fit in one chunk do.
  static func batches(_ node: Node) -> Bool { node.size < UInt64(Chunker.minSize) }

  /// Adds a file (its content not yet stored) to the current batch; starts the batch when it is full.
  func batched(path: BytePath, node: Node, isNew: Bool, in dir: OpenDirectory? = nil) async -> PendingNode {
    let (promise, index, full) = batch.withLock { b -> (Promise<[Node?]>, Int, SmallFileBatch?) in
      b.items.append(SmallFileBatch.Item(path: path, node: node, isNew: isNew, directory: dir))
      b.bytes += Int(node.size)
      let r = (b.promise, b.items.count - 1)
      guard b.isFull else { return (r.0, r.1, nil) }
      let full = b
      b = SmallFileBatch()
      return (r.0, r.1, full)
    }
    if let full { await start(full) }
    return .batched(promise, index)
  }

  /// Starts the batch being filled, however few files it holds. The walk calls this when it ends.
  func flushBatch() async {
    let b = batch.withLock { b -> SmallFileBatch? in
      guard !b.items.isEmpty else { return nil }
      let full = b
      b = SmallFileBatch()
      return full
    }
    if let b { await start(b) }
  }

  /// Fails the batch being filled (the walk failed): nothing waits on it forever.
  func abandonBatch(_ error: Error) {
    let b = batch.withLock { b -> SmallFileBatch in
      let old = b
      b = SmallFileBatch()
      return old
    }
    b.promise.fulfil(.failure(error))
  }

  private func start(_ b: SmallFileBatch) async {
    await filePermits.acquire()
    Task {
      defer { self.filePermits.release() }
      do {
        b.promise.fulfil(.success(try await self.store(b.items)))
      } catch {
        b.promise.fulfil(.failure(error))
      }
    }
  }

  /// Stores a batch's files; returns their nodes (nil: the file could not be read, and a warning says why).
  private func store(_ items: [SmallFileBatch.Item]) async throws -> [Node?] {
    let first = items[0].path.description
    state.withLock { _ = $0.currentFiles.insert(first) }
    defer { state.withLock { _ = $0.currentFiles.remove(first) } }
    let saver = self.saver
    let dryRun = options.dryRun
    let pool = batchBuffers
    let read = try await Blocking.run { () throws -> SmallFileBatch.Read in
      var out = SmallFileBatch.Read()
      out.nodes.reserveCapacity(items.count)
      var buffer = pool.take()
      buffer.resizeReusing(Chunker.minSize)
      var scratch = pool.take()
      let stored = Result { () throws -> Void in
        for (i, item) in items.enumerated() {
          var node = item.node
          let n: Int
          do {
            n = try buffer.withUnsafeMutableBytes {
              try Backup.readWhole(
                item.path, at: item.directory.map { ($0, node.name) }, into: $0, expected: Int(node.size))
            }
          } catch let e as SystemError {
            out.errors.append("\(item.path): \(e)")
            out.nodes.append(nil)
            continue
          }
          if n >= Chunker.minSize {
            // The file grew past one chunk since it was listed: it is stored as a large file.
            out.grown.append(i)
            out.nodes.append(nil)
            continue
          }
          node.size = UInt64(n)
          if n == 0 {
            node.content = []
          } else {
            let (id, full) = try buffer.withUnsafeBytes { all -> (BlobID, BlobSaver.FilledPack?) in
              let data = UnsafeRawBufferPointer(rebasing: all[0..<n])
              let id = BlobID(RawID.hash(data))
              if dryRun { return (id, nil) }
              return (id, try saver.saveNow(.data, data, id: id, scratch: &scratch).1)
            }
            node.content = [id]
            if let full { out.packs.append(full) }
          }
          out.bytes += Int64(n)
          if item.isNew { out.new += 1 } else { out.changed += 1 }
          out.nodes.append(node)
        }
      }
      // Moved back into the pool (see `BufferPool.give`).
      pool.give(consume buffer)
      pool.give(consume scratch)
      try stored.get()
      return out
    }
    for p in read.packs { try await saver.store(p) }
    await saver.throttle()
    var nodes = read.nodes
    state.withLock {
      $0.errors += read.errors
      $0.filesNew += read.new
      $0.filesChanged += read.changed
      $0.filesDone += read.new + read.changed
      $0.bytesDone += read.bytes
    }
    for i in read.grown {
      let item = items[i]
      if let node = try await self.read(path: item.path, node: item.node, isNew: item.isNew) { nodes[i] = node }
    }
    return nodes
  }

  /// Opens a file (by its name in its directory, when that is still open) and reads it from the start into
  /// `buffer`: all of it, or `buffer.count` bytes when it is at least that long. One read suffices when the file
  /// still has the size it was listed with.
  static func readWhole(
    _ path: BytePath, at entry: (directory: OpenDirectory, name: [UInt8])? = nil,
    into buffer: UnsafeMutableRawBufferPointer, expected: Int
  ) throws -> Int {
    func open(_ flags: Int32) throws -> Int32 {
      guard let entry else { return try Sys.open(path, flags) }
      return try Sys.openat(entry.directory.fd, entry.name, flags)
    }
    let fd: Int32
    do {
      fd = try open(O_RDONLY | Sys.oNoAtime | O_NOFOLLOW | O_NONBLOCK)
    } catch let e as SystemError where e.errno == EPERM {
      fd = try open(O_RDONLY | O_NOFOLLOW | O_NONBLOCK)
    }
    defer { Sys.close(fd) }
    let want = min(buffer.count, expected + 1)
    var done = try Sys.preadOnce(fd, UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]), offset: 0)
    if done == expected && expected < buffer.count { return done }
    while done < buffer.count {
      let k = try Sys.preadOnce(fd, UnsafeMutableRawBufferPointer(rebasing: buffer[done...]), offset: Int64(done))
      if k == 0 { break }
      done += k
    }
    return done
  }
}

extension SmallFileBatch {
  /// What the blocking pass over a batch produced.
  struct Read: Sendable {
    var nodes: [Node?] = []
    var packs: [BlobSaver.FilledPack] = []
    /// Files that outgrew one chunk since they were listed.
    var grown: [Int] = []
    var errors: [String] = []
    var bytes: Int64 = 0
    var new = 0
    var changed = 0
  }
}
