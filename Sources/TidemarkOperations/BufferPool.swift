// Reusable byte buffers, shared by the threads of one restore.
import Synchronization

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
