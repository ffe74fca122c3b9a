// A file written front to back straight to the disk (O_DIRECT), for packs: written once, made durable, and not
// read back soon.
//
// Why: written through the page cache, every pack byte costs the kernel a page-cache page (allocated, copied into,
// marked dirty, accounted), the flusher's writeback, and dropping the page after the pack's fsync; for a backup of
// incompressible data that was an eighth of its CPU time. A direct write lets the device read from a reused
// page-aligned buffer that the writer filled; the copy into it replaces the kernel's copy. The device writes one
// buffer while the caller fills the next, so the write stays off the caller's path. Any file system that refuses
// O_DIRECT gets ordinary writes.
internal import CPosix
import Dispatch
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// Page-aligned buffers kept for `DirectWriter`s, so that a pack's buffers are not faulted in afresh. Thread-safe.
public final class DirectWriteBuffers: Sendable {
  /// Kept for reuse: two writers' worth (one filling and up to two being written each).
  static let pooled = 6
  private let pool = Mutex<[AlignedBuffer]>([])

  public init() {}

  func take() -> AlignedBuffer {
    pool.withLock { $0.popLast() }
      ?? AlignedBuffer(size: DirectWriter.bufferSize, alignment: DirectWriter.alignment)
  }

  func give(_ buffer: AlignedBuffer) {
    pool.withLock { if $0.count < Self.pooled { $0.append(buffer) } }
  }
}

/// Writes one file sequentially from offset 0 with O_DIRECT. `write` is called by one thread at a time; then
/// exactly one of `finish` or `abandon`, which wait for the writes under way: the descriptor must stay open until
/// they return. Blocking.
public final class DirectWriter: @unchecked Sendable {
  /// Offsets, lengths and addresses aligned as for direct reads.
  static var alignment: Int { DirectReader.alignment }
  /// Each write (but the last) is one full buffer.
  static let bufferSize = 1 << 20
  /// Buffers handed to the device and not yet written before `write` waits.
  static let inFlight = 2

  private let fd: Int32
  private let buffers: DirectWriteBuffers
  // Touched only by the thread calling `write`, `finish` or `abandon`.
  private var current: AlignedBuffer
  private var filled = 0
  /// File offset of `current`'s first byte.
  private var offset: Int64 = 0
  private var closed = false
  // Shared with the writes under way.
  private let slots = DispatchSemaphore(value: DirectWriter.inFlight)
  private let pending = DispatchGroup()
  private let state = Mutex<(failure: SystemError?, buffered: Bool)>((nil, false))
  private let queue = DispatchQueue(label: "tidemark.direct-write")

  /// Switches `fd` (a new, empty regular file open for writing) to direct I/O; nil when the file system refuses it.
  public init?(fd: Int32, buffers: DirectWriteBuffers) {
    let flags = fcntl(fd, F_GETFL)
    guard flags >= 0, fcntl(fd, F_SETFL, flags | CPOSIX_O_DIRECT) == 0 else { return nil }
    self.fd = fd
    self.buffers = buffers
    current = buffers.take()
  }

  /// Appends `bytes`. A failed earlier write is reported here (or by `finish`).
  public func write(_ bytes: UnsafeRawBufferPointer) throws {
    var from = 0
    while from < bytes.count {
      let n = min(bytes.count - from, Self.bufferSize - filled)
      (current.base + filled).copyMemory(from: bytes.baseAddress! + from, byteCount: n)
      filled += n
      from += n
      if filled == Self.bufferSize { try handOver() }
    }
  }

  /// Writes what is left, waits for every write, and cuts the file to the bytes written (the last write is padded
  /// to the alignment). Returns the file's length.
  @discardableResult
  public func finish() throws -> Int64 {
    defer { close() }
    let length = offset + Int64(filled)
    if filled > 0 {
      let padded = (filled + Self.alignment - 1) & ~(Self.alignment - 1)
      (current.base + filled).initializeMemory(as: UInt8.self, repeating: 0, count: padded - filled)
      filled = padded
      try handOver()
    }
    close()
    if let failure = state.withLock({ $0.failure }) { throw failure }
    if ftruncate(fd, off_t(length)) != 0 { throw SystemError(errno, "truncate", "") }
    return length
  }

  /// Waits for the writes under way; what was written is left to the caller to remove. Calling it again, or after
  /// `finish`, does nothing.
  public func abandon() { close() }

  private func close() {
    guard !closed else { return }
    closed = true
    pending.wait()
    buffers.give(current)
  }

  /// Hands `current` to the device and takes a fresh buffer.
  private func handOver() throws {
    if let failure = state.withLock({ $0.failure }) { throw failure }
    let (buffer, count, at) = (current, filled, offset)
    slots.wait()
    pending.enter()
    queue.async { [self] in
      defer {
        buffers.give(buffer)
        slots.signal()
        pending.leave()
      }
      if let e = writeOut(buffer.base, count, at: at) { state.withLock { $0.failure = $0.failure ?? e } }
    }
    current = buffers.take()
    offset += Int64(count)
    filled = 0
  }

  /// One buffer's write; a file system that takes the O_DIRECT flag but refuses the first write gets it (and every
  /// later one) through the page cache.
  private func writeOut(_ base: UnsafeMutableRawPointer, _ count: Int, at: Int64) -> SystemError? {
    var done = 0
    while done < count {
      let n = Glibc.pwrite(fd, base + done, count - done, off_t(at + Int64(done)))
      if n >= 0 {
        done += n
        continue
      }
      let e = errno
      if e == EINTR { continue }
      if e == EINVAL && !state.withLock({ $0.buffered }) {
        state.withLock { $0.buffered = true }
        let flags = fcntl(fd, F_GETFL)
        if flags >= 0 && fcntl(fd, F_SETFL, flags & ~CPOSIX_O_DIRECT) == 0 { continue }
      }
      return SystemError(e, "write", "")
    }
    return nil
  }
}
