// Comparing a file of the snapshot with the one on disk: which blobs it still holds (at their offsets,
// or moved, found by chunking it as the backup did) and so what must be fetched or copied. Every
// function here but `decideFiles` blocks.
import Foundation
import Synchronization
import TidemarkCore
import TidemarkSystem

extension Restore {
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
}
