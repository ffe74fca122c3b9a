// Reusable byte buffers, shared by the threads of one backup or restore.
import Synchronization

/// Reusable byte buffers: hot loops hand them back instead of freeing them, so their pages stay mapped.
public final class BufferPool: Sendable {
  private let free = Mutex<[[UInt8]]>([])
  private let keep: Int
  private let largest: Int

  /// Keeps at most `keep` buffers, none larger than `largest` bytes: a rare large buffer is freed rather
  /// than held for the rest of the run.
  public init(keep: Int, largest: Int = .max) {
    self.keep = keep
    self.largest = largest
  }

  public func take() -> [UInt8] { free.withLock { $0.popLast() } ?? [] }

  public func give(_ b: consuming [UInt8]) {
    let b = consume b
    guard b.capacity <= largest else { return }
    free.withLock { f in
      if f.count < keep { f.append(b) }
    }
  }
}
