// Bounding work in flight (and so memory) in async code.
import Synchronization

/// A counting semaphore for async code: bounds work in flight (and so memory).
public final class AsyncSemaphore: Sendable {
  private struct State {
    var permits: Int
    var waiters: [CheckedContinuation<Void, Never>] = []
  }
  private let state: Mutex<State>

  public init(_ permits: Int) { state = Mutex(State(permits: permits)) }

  public func acquire() async {
    await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
      let ready = state.withLock { s -> Bool in
        if s.permits > 0 {
          s.permits -= 1
          return true
        }
        s.waiters.append(c)
        return false
      }
      if ready { c.resume() }
    }
  }

  /// Takes a permit if one is free now; never waits.
  public func tryAcquire() -> Bool {
    state.withLock { s in
      guard s.permits > 0 else { return false }
      s.permits -= 1
      return true
    }
  }

  public func release() {
    let w = state.withLock { s -> CheckedContinuation<Void, Never>? in
      if !s.waiters.isEmpty { return s.waiters.removeFirst() }
      s.permits += 1
      return nil
    }
    w?.resume()
  }
}
