// A lock for state that many threads take briefly, among them more blocking threads than there are cores.
//
// Why not Synchronization.Mutex: on Linux it spins before it sleeps (up to a thousand pause loops per contended
// acquisition). When more threads than cores contend, the spinners take the time slices the holder needs to
// finish, and everyone waits longer: a backup of 100,000 small files with eight batch threads on two cores spent
// 40% of its samples spinning and three times its usual CPU time. A pthread mutex of the default kind sleeps in the
// kernel at once, which costs a context switch instead.
#if canImport(Glibc)
  import Glibc
#endif

/// Mutual exclusion around `State`, sleeping rather than spinning while another thread holds it.
public final class SleepingMutex<State>: @unchecked Sendable {
  // The pthread mutex must not move: it lives in its own allocation. `state` is touched only under it.
  private let mutex: UnsafeMutablePointer<pthread_mutex_t>
  private var state: State

  public init(_ state: State) {
    mutex = .allocate(capacity: 1)
    mutex.initialize(to: pthread_mutex_t())
    pthread_mutex_init(mutex, nil)
    self.state = state
  }

  deinit {
    pthread_mutex_destroy(mutex)
    mutex.deallocate()
  }

  public func withLock<R>(_ body: (inout State) throws -> R) rethrows -> R {
    pthread_mutex_lock(mutex)
    defer { pthread_mutex_unlock(mutex) }
    return try body(&state)
  }
}
