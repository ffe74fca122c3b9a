// Writing content: each needed pack is fetched once, in ranged reads, and its blobs decrypted and
// written to every file that needs them in one blocking hop; a file complete is renamed into place.
import Foundation
import Synchronization
import TidemarkCore
import TidemarkSystem

extension Restore {
  /// The queued files' content, sorted out before anything is written: the files that fetch nothing, those
  /// that do, and the runs of blobs to read for them.
  struct ContentPlan: Sendable {
    var ready: [FileJob] = []
    var writing: [FileJob] = []
    var runs: [(PackID, [(PackedBlob, [(FileJob, Int64)])])] = []
  }

  /// Groups every blob to fetch by pack, so each pack is read once and its blobs fanned out to every file that
  /// needs them. Looks at nothing on disk (it runs while the directories are being made).
  func planContent(_ run: RunContext) -> ContentPlan {
    var plan = ContentPlan()
    for job in run.jobs {
      if job.remaining.withLock({ $0 }) == 0 {
        plan.ready.append(job)
      } else {
        plan.writing.append(job)  // opened on its first write
      }
    }
    // Every blob to write, by pack; a blob several files need (or one file at several offsets) is listed once
    // per place and merged below, so it is decrypted once.
    var byPack: [PackID: [(blob: PackedBlob, job: FileJob, offset: Int64)]] = [:]
    for job in plan.writing {
      var off: Int64 = 0
      let mask = run.fetchMask[ObjectIdentifier(job)]
      for (k, id) in (job.item.node.content ?? []).enumerated() {
        guard let e = repo.index.lookup(id) else {
          fail("\(job.path): data blob \(id.short) is not in the index; file not restored")
          job.failed.withLock { $0 = true }
          break
        }
        if mask?[k] ?? true { byPack[e.pack, default: []].append((e.blob, job, off)) }
        off += Int64(e.blob.plainLength)
      }
    }
    // The workers take runs of blobs, not whole packs, so a pack of thousands of small files is written on every
    // core rather than by one worker at the end; and the runs are interleaved across packs, so workers running at
    // once mostly write files of different directories (a pack holds the files of a few directories, in the order
    // they were backed up) rather than queue on one directory's lock to create and rename files in it.
    let perPack = byPack.map { (pack, wanted) in
      var blobs: [(PackedBlob, [(FileJob, Int64)])] = []
      for w in wanted.sorted(by: { $0.blob.offset < $1.blob.offset }) {
        if let last = blobs.last, last.0.offset == w.blob.offset {
          blobs[blobs.count - 1].1.append((w.job, w.offset))
        } else {
          blobs.append((w.blob, [(w.job, w.offset)]))
        }
      }
      return Restore.runs(blobs).map { (pack, $0) }
    }
    byPack = [:]
    plan.runs.reserveCapacity(perPack.reduce(0) { $0 + $1.count })
    for k in 0..<(perPack.map(\.count).max() ?? 0) {
      for p in perPack where k < p.count { plan.runs.append(p[k]) }
    }
    return plan
  }

  /// Writes the files of `plan` (their directories made): those that fetch nothing are completed at once, then
  /// the runs of blobs are read and written, `packLimit` at a time.
  func writeContent(_ plan: ContentPlan) async throws {
    // Empty files (and files whose every blob the old file holds): shared among the cores, one hop per share.
    let cores = Restore.packLimit
    try await forEachConcurrently(Restore.shares(plan.ready, among: cores), limit: cores) { share in
      try await Blocking.run {
        for job in share {
          do {
            try job.create()
          } catch {
            self.fail("\(job.path): \(error)")
            job.close()
            continue
          }
          self.finishFileNow(job)
        }
      }
    }
    let writing = plan.writing
    let runs = plan.runs
    // Files rebuilt from large unchanged ranges of the old one: start those copies now, beside the
    // fetching, rather than when their first fetched blob arrives (a write waits for its file's copy).
    let large = writing.filter { job in
      guard case .rebuild(_, let copies) = job.mode else { return false }
      return copies.reduce(0) { $0 + $1.count } >= Restore.writebackPiece
    }
    async let copied: Void = forEachConcurrently(large, limit: 1) { job in
      _ = try? await Blocking.run { try job.create() }  // on failure, the first write tries again and reports
    }
    try await forEachConcurrently(runs, limit: Restore.packLimit) { (pack, run) in
      await self.restoreRun(pack, run)
    }
    try await copied
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

  /// A pack's blobs cut into runs to read at once: sorted by offset, each run spanning at most 4 MiB (a larger
  /// blob is a run of its own), so the buffers in flight stay small; the page cache serves the reads either way.
  static func runs<T>(_ blobs: [(PackedBlob, T)]) -> [[(PackedBlob, T)]] {
    var runs: [[(PackedBlob, T)]] = []
    var run: [(PackedBlob, T)] = []
    for blob in blobs.sorted(by: { $0.0.offset < $1.0.offset }) {
      if let first = run.first, blob.0.offset + blob.0.length - first.0.offset > 4 << 20 {
        runs.append(run)
        run = []
      }
      run.append(blob)
    }
    if !run.isEmpty { runs.append(run) }
    return runs
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
    let packPool = self.packBuffers
    // The buffers go back to their pools from the blocking thread, moved: one still referenced anywhere (a
    // result on its way back, say) would be copied by the next thread to write into it.
    let box = MoveBox(consume data)
    guard
      let outcome = try? await Blocking.run({ () -> Outcome in
        var data = box.take()
        var out = Outcome()
        var scratch = scratchPool.take()
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
        scratchPool.give(consume scratch)
        packPool.give(consume data)
        return out
      })
    else { return }
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

  /// Blocking: moves a complete file into place and applies its metadata (on the thread that wrote its last
  /// bytes, in the same hop).
  func finishFileNow(_ job: FileJob) {
    do {
      // Metadata through the descriptor, before the rename: the path is not looked up four more times (a
      // rename keeps owner, mode and times).
      var applied = false
      if case .inplace = job.mode {
        try job.truncateInPlace()
        applied = job.withOpenDescriptor { applyMetadata(fd: $0, job.path, job.item.node) }
        job.close()
      } else {
        try job.finishSize()
        applied = job.withOpenDescriptor { applyMetadata(fd: $0, job.path, job.item.node) }
        if job.isUnnamed.load(ordering: .relaxed) {
          defer { job.close() }
          try job.linkIntoPlace()
        } else {
          job.close()
          try Restore.replace(job.path, with: job.temp)
        }
      }
      if !applied { applyMetadata(job.path, job.item.node) }
      state.withLock { $0.filesRestored += 1 }
    } catch {
      if job.close() { try? Sys.unlink(job.temp) }
      fail("\(job.path): \(error)")
    }
  }
}
