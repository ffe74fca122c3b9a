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
    await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
      queues[i].async {
        call.run()
        load.withLock { $0.pending[i] -= 1 }
        c.resume()
      }
    }
    return try call.take().get()
  }

  /// A call that lets go of its closure (and whatever the closure captured) before its caller resumes, and keeps
  /// its result until the caller takes it out. The dispatch block is released only after it returns, which is
  /// after the resume: a buffer the closure captured, or one in a result handed to the continuation, would
  /// otherwise still be shared when the caller goes on, and the next thread to write into it (a pooled buffer
  /// handed on) would copy it, onto fresh pages.
  private final class OneCall<T>: @unchecked Sendable {
    private var body: (() throws -> T)?
    private var result: Result<T, Error>?
    init(_ body: @escaping () throws -> T) { self.body = body }
    /// On the blocking thread, before the resume.
    func run() {
      let body = self.body.take()!
      result = Result { try body() }
    }
    /// In the caller, after the resume: moves the result out.
    func take() -> Result<T, Error> { result.take()! }
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

/// Hands a value to exactly one other thread, moved (see `Blocking.run(moving:)`): `take` is called once, by the
/// thread the box was handed to, so the value is never referenced twice and a buffer in it is not copied on write.
public final class MoveBox<V>: @unchecked Sendable {
  private var value: V?
  public init(_ v: consuming V) { value = consume v }
  public func take() -> V {
    defer { value = nil }
    return value.take()!
  }
}
