// Blocking calls on dedicated threads. Concurrency contract: a blocking syscall must never run on
// Swift's cooperative pool (it would starve every other task); callers hop here with `Blocking.run`.
import Dispatch
import Synchronization

/// Runs blocking calls on dedicated threads, never on the cooperative pool.
public enum Blocking {
  private static let queues: [DispatchQueue] = (0..<16).map { DispatchQueue(label: "tidemark.blocking.\($0)") }
  private static let next = Atomic<Int>(0)

  public static func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    let i = next.add(1, ordering: .relaxed).oldValue
    let q = queues[i & 15]
    return try await withCheckedThrowingContinuation { c in
      q.async { c.resume(with: Result { try body() }) }
    }
  }

  /// Moves `value` to the blocking thread, lets `body` mutate it there, and moves it back with the
  /// result, never holding two references (so a buffer is not copied on write). The value is lost
  /// if `body` throws.
  public static func run<V: Sendable, T: Sendable>(
    moving value: consuming V, _ body: @escaping @Sendable (inout V) throws -> T
  ) async throws -> (V, T) {
    let box = MoveBox(consume value)
    return try await run {
      var v = box.take()
      let r = try body(&v)
      return (v, r)
    }
  }
}

/// Hands a value to exactly one other thread (see `Blocking.run(moving:)`).
private final class MoveBox<V>: @unchecked Sendable {
  private var value: V?
  init(_ v: consuming V) { value = consume v }
  func take() -> V {
    defer { value = nil }
    return value.take()!
  }
}
