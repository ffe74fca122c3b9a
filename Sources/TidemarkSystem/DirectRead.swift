// Large reads of files the page cache does not hold, straight from the disk (O_DIRECT).
//
// Why: reading a cold pack range through the page cache costs the kernel a page-cache insertion per
// page, read-ahead bookkeeping and a copy to user space; for the mount's 4 MiB window loads that was a
// fifth of its CPU time. A direct read lets the device write into a reused page-aligned buffer; one copy
// out of it (warm memory, user space) is cheaper. Data the page cache already holds is read through it
// as before (`cachestat`), and any file system that refuses O_DIRECT gets an ordinary read.
internal import CPosix
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// Reads ranges of at least `minimum` bytes with O_DIRECT when the page cache holds none of them, through
/// a small pool of page-aligned buffers. Thread-safe.
public final class DirectReader: Sendable {
  /// Direct I/O needs offsets, lengths and addresses aligned to the device's logical block; 4 KiB
  /// suits every device.
  static let alignment = 4096
  /// Size of each aligned buffer (a range longer than this is read in pieces).
  static let piece = 4 << 20
  /// Buffers kept for reuse: as many as a mount's windows in flight, so that none faults its pages in afresh.
  static let pooled = 8
  /// Smaller ranges are read through the page cache (where neighbouring reads may find them).
  public let minimum: Int
  private let pool = Mutex<[AlignedBuffer]>([])

  public init(minimum: Int = 128 << 10) { self.minimum = minimum }

  /// Fills `out` from `offset` of `fd` (a regular file opened for reading; its status flags are
  /// changed). Returns the bytes read (fewer only at end of file), or nil when this read should go
  /// through the page cache instead: the range is small or cached, or the file system refuses O_DIRECT.
  public func read(_ fd: Int32, into out: UnsafeMutableRawBufferPointer, offset: Int64) throws -> Int? {
    guard out.count >= minimum, offset >= 0 else { return nil }
    let cached = cposix_cached_pages(fd, UInt64(offset), UInt64(out.count))
    if cached > 0 { return nil }  // some or all of it is in memory: the page cache is faster there
    let flags = fcntl(fd, F_GETFL)
    guard flags >= 0, fcntl(fd, F_SETFL, flags | CPOSIX_O_DIRECT) == 0 else { return nil }
    let buffer = pool.withLock { $0.popLast() } ?? AlignedBuffer(size: Self.piece, alignment: Self.alignment)
    defer { recycle(buffer) }
    let a = Int64(Self.alignment)
    let end = offset + Int64(out.count)
    var pos = offset  // next byte to deliver
    while pos < end {
      let from = pos & ~(a - 1)
      let want = min((end - from + a - 1) & ~(a - 1), Int64(Self.piece))
      let n = Glibc.pread(fd, buffer.base, Int(want), off_t(from))
      if n < 0 {
        if errno == EINTR { continue }
        // EINVAL on the first piece: this file system (or file) takes no direct I/O.
        if errno == EINVAL && pos == offset { return nil }
        throw SystemError(errno, "read", "")
      }
      let got = from + Int64(n)
      if got <= pos { break }  // end of file
      let upto = min(got, end)
      (out.baseAddress! + Int(pos - offset)).copyMemory(
        from: buffer.base + Int(pos - from), byteCount: Int(upto - pos))
      pos = upto
    }
    return Int(pos - offset)
  }
}

extension DirectReader {
  /// A range read by `readOwned`: `count` bytes at `start`, inside a page-aligned buffer that `free` hands back
  /// (to the reader's pool, where later reads reuse it without faulting its pages in again).
  public struct Owned: @unchecked Sendable {
    // The buffer is handed over whole: whoever takes this value frees it, once.
    public let start: UnsafeRawPointer
    public let count: Int
    private let buffer: AlignedBuffer
    private let reader: DirectReader

    fileprivate init(buffer: AlignedBuffer, reader: DirectReader, lead: Int, count: Int) {
      self.buffer = buffer
      self.reader = reader
      start = UnsafeRawPointer(buffer.base + lead)
      self.count = count
    }

    public func free() { reader.recycle(buffer) }
  }

  /// Like `read`, but into a page-aligned buffer that it hands over, so that the bytes the disk wrote are used
  /// where they landed instead of being copied out. Nil when the range should be read through the page cache
  /// (small, cached, or refused by the file system).
  public func readOwned(_ fd: Int32, offset: Int64, count: Int) throws -> Owned? {
    guard count >= minimum, offset >= 0 else { return nil }
    if cposix_cached_pages(fd, UInt64(offset), UInt64(count)) > 0 { return nil }
    let flags = fcntl(fd, F_GETFL)
    guard flags >= 0, fcntl(fd, F_SETFL, flags | CPOSIX_O_DIRECT) == 0 else { return nil }
    let a = Int64(Self.alignment)
    let from = offset & ~(a - 1)
    let span = Int((offset + Int64(count) - from + a - 1) & ~(a - 1))
    let buffer =
      span <= Self.piece
      ? pool.withLock { $0.popLast() } ?? AlignedBuffer(size: Self.piece, alignment: Self.alignment)
      : AlignedBuffer(size: span, alignment: Self.alignment)
    var got = 0
    while got < span {
      let n = Glibc.pread(fd, buffer.base + got, span - got, off_t(from + Int64(got)))
      if n < 0 {
        if errno == EINTR { continue }
        let e = errno
        recycle(buffer)
        // EINVAL at once: this file system (or file) takes no direct I/O.
        if e == EINVAL && got == 0 { return nil }
        throw SystemError(e, "read", "")
      }
      got += n
      // Short: the end of the file (a direct read goes on only from an aligned offset).
      if n == 0 || got % Self.alignment != 0 { break }
    }
    let lead = Int(offset - from)
    return Owned(buffer: buffer, reader: self, lead: lead, count: max(0, min(count, got - lead)))
  }

  /// Keeps a buffer of the usual size for the next read (a few at most); a larger one is freed.
  fileprivate func recycle(_ buffer: AlignedBuffer) {
    guard buffer.size == Self.piece else { return }
    pool.withLock { if $0.count < Self.pooled { $0.append(buffer) } }
  }
}

/// One page-aligned allocation, freed with its owner.
final class AlignedBuffer: @unchecked Sendable {
  // Used by one reader at a time (taken from the pool, given back after).
  let base: UnsafeMutableRawPointer
  let size: Int

  init(size: Int, alignment: Int) {
    base = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: alignment)
    self.size = size
  }
  deinit { base.deallocate() }
}
