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

  /// Takes `b` back. It must be moved in (`give(consume b)`) by a caller that keeps no other reference to it:
  /// the next `take` writes into it, and a buffer still referenced elsewhere would be copied (fresh pages,
  /// a fault for each).
  public func give(_ b: consuming [UInt8]) {
    guard b.capacity <= largest else { return }
    // Moved into the pool under the lock: a reference left in this frame until it returns would keep the
    // buffer shared while a thread that was waiting for the lock takes it.
    var moving: [UInt8]? = consume b
    free.withLock { f in
      if f.count < keep { f.append(moving.take()!) }
    }
  }
}
