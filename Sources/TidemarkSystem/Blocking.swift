// Blocking calls on dedicated threads. Concurrency contract: a blocking syscall must never run on
// Swift's cooperative pool (it would starve every other task); callers hop here with `Blocking.run`.
import Dispatch
import Synchronization

/// Runs blocking calls on dedicated threads, never on the cooperative pool.
public enum Blocking {
  private static let queues: [DispatchQueue] = (0..<16).map { DispatchQueue(label: "tidemark.blocking.\($0)") }
  /// Calls queued or running on each queue. Each queue is serial: a call sent to a busy one waits for the
  /// calls before it, however long they take (a batch of small files, a pack read), so a call goes to an idle
  /// queue whenever one is idle, and otherwise to the least busy.
  private static let load = Mutex(Load())

  private struct Load {
    var pending = [Int](repeating: 0, count: 16)
    var start = 0

    mutating func pick() -> Int {
      var best = start
      for k in 0..<16 {
        let i = (start + k) & 15
        if pending[i] == 0 {
          best = i
          break
        }
        if pending[i] < pending[best] { best = i }
      }
      start = (best + 1) & 15
      pending[best] += 1
      return best
    }
  }

  public static func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    let i = load.withLock { $0.pick() }
    let call = OneCall(body)
    return try await withCheckedThrowingContinuation { c in
      queues[i].async {
        let r = call.run()
        load.withLock { $0.pending[i] -= 1 }
        c.resume(with: r)
      }
    }
  }

  /// A call that lets go of its closure (and whatever the closure captured) before its caller resumes. The
  /// dispatch block is released only after it returns, which is after the resume, so a buffer the closure
  /// captured would otherwise still be shared when the caller reuses it (and `removeAll(keepingCapacity:)`
  /// would then give it fresh, unfaulted pages of the same size every time).
  private final class OneCall<T>: @unchecked Sendable {
    private var body: (() throws -> T)?
    init(_ body: @escaping () throws -> T) { self.body = body }
    func run() -> Result<T, Error> {
      let body = self.body.take()!
      return Result { try body() }
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
