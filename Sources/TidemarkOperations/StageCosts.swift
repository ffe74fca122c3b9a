// What a backup's CPU-bound stages cost on one core over a set of files (`tidemark debug stage-costs`): the
// walk (every directory listed, every entry's lstat and extended attributes), the reads timed as a backup reads,
// then each file's content through `StageProbe` (chunk, SHA-256, zstd, seal, each pack's SHA-256 and its write
// into the page cache of a scratch file), and one key derivation.
import Foundation
import TidemarkCore
import TidemarkSystem

public enum StageCosts {
  /// The stages' costs over every regular file under `paths`, the time the walk over them and their reads took, and
  /// the time the packs' writes took: into the page cache of an unlinked file in `scratch` (no fsync: the disk's own
  /// time is I/O, which the floor overlaps), truncated after each pack so that the page cache does not grow.
  public static func measure(paths: [BytePath], compression: Compression, scratch: BytePath) throws -> (
    StageProbe.Costs, walk: Duration, read: Duration, write: Duration
  ) {
    let clock = ContinuousClock()
    let sinkPath = scratch.appending(Array("stage-costs-\(getpid()).tmp".utf8))
    let sink = try Sys.open(sinkPath, O_RDWR | O_CREAT | O_EXCL, 0o600)
    defer { Sys.close(sink) }
    try? Sys.unlink(sinkPath)
    var write = Duration.zero
    let probe = StageProbe(compression: compression) { bytes in
      let t0 = clock.now
      try Sys.pwrite(sink, bytes, offset: 0)
      write += clock.now - t0
      _ = ftruncate(sink, 0)
    }
    try probe.measureKeyOpen()
    // The walk every backup makes whatever the files hold (restic's too): each directory listed, each entry
    // lstat'ed and its extended attributes listed, by name relative to the open directory as a backup does.
    let w0 = clock.now
    var dirs = paths.filter { (try? Sys.lstat($0))?.isDirectory ?? false }
    while let d = dirs.popLast() {
      dirs += try Sys.readDirectory(d) { fd, name, st -> BytePath? in
        let p = d.appending(name)
        _ = try? Sys.extendedAttributes(at: fd, name, path: p)
        return st.isDirectory ? p : nil
      }
    }
    let walk = clock.now - w0
    var read = Duration.zero
    var stack = paths
    // The read is timed as a backup reads: 2 MiB at a time into one reused buffer (copies from the page cache).
    // The stages then get the whole file from a second, untimed read into a buffer grown to the largest file.
    let block = UnsafeMutableRawBufferPointer.allocate(byteCount: 2 << 20, alignment: 64)
    defer { block.deallocate() }
    var whole = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 64)
    defer { whole.deallocate() }
    func readAll(_ fd: Int32, into b: UnsafeMutableRawBufferPointer, limit: Int, wrap: Bool) throws -> Int {
      var n = 0
      while n < limit {
        let at = wrap ? 0 : n
        let k = try Sys.pread(
          fd, UnsafeMutableRawBufferPointer(rebasing: b[at..<min(b.count, at + limit - n)]), offset: Int64(n))
        if k == 0 { break }
        n += k
      }
      return n
    }
    // A file with several names, too large to batch, is read once per backup (the others take its content).
    var readOnce = Set<[UInt64]>()
    while let p = stack.popLast() {
      let st = try Sys.lstat(p)
      if st.isDirectory {
        for name in try Sys.readDirectory(p).reversed() { stack.append(p.appending(name)) }
      } else if st.isRegular {
        if st.links > 1 && st.size >= Int64(Chunker.minSize) && !readOnce.insert([st.device, st.inode]).inserted {
          continue
        }
        let size = Int(st.size)
        let t0 = clock.now
        let fd = try Sys.open(p, O_RDONLY)
        defer { Sys.close(fd) }
        _ = try readAll(fd, into: block, limit: size, wrap: true)
        read += clock.now - t0
        if size > whole.count {
          whole.deallocate()
          whole = .allocate(byteCount: size, alignment: 64)
        }
        let n = try readAll(fd, into: whole, limit: size, wrap: false)
        try probe.feed(file: UnsafeRawBufferPointer(rebasing: whole[0..<n]))
      }
    }
    try probe.finish()
    return (probe.costs, walk, read, write)
  }
}
