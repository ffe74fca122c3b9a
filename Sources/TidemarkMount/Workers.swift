// CPU-bound work of the mount (decrypting, decompressing and verifying blobs) on threads of its own, one per core.
//
// Concurrency contract: jobs never run on Swift's cooperative pool, whose few threads answer FUSE requests that
// miss the cache and load trees, nor on the blocking threads (`Blocking`), which wait on disk and network. Jobs
// start in the order they were submitted (a sequential reader's blobs are submitted in file order, so the one it
// needs first is decoded first); at most `width` run at once. No drain loop stays on a thread when there is nothing to do.
// Jobs must not block.
import Dispatch
import Foundation
import Synchronization

final class Workers: Sendable {
  private struct State {
    /// Waiting jobs from `head` on; a taken job's slot is cleared at once (it may hold a pack's bytes).
    var jobs: [(@Sendable () -> Void)?] = []
    var head = 0
    /// Queues with no drain loop on them.
    var idle: [Int]
  }
  private let queues: [DispatchQueue]
  private let state: Mutex<State>

  /// Jobs that may run at once.
  var width: Int { queues.count }

  init(width: Int = ProcessInfo.processInfo.activeProcessorCount) {
    let n = max(1, width)
    queues = (0..<n).map { DispatchQueue(label: "tidemark.mount.decode.\($0)") }
    state = Mutex(State(idle: Array((0..<n).reversed())))
  }

  /// Runs `job` on a worker thread as soon as one is free.
  func submit(_ job: @escaping @Sendable () -> Void) {
    let start: Int? = state.withLock { s in
      s.jobs.append(job)
      return s.idle.popLast()
    }
    if let q = start { queues[q].async { self.drain(q) } }
  }

  /// Runs jobs until none is left, then gives queue `q` back.
  private func drain(_ q: Int) {
    while true {
      let job: (@Sendable () -> Void)? = state.withLock { s in
        guard s.head < s.jobs.count else {
          s.jobs.removeAll(keepingCapacity: true)
          s.head = 0
          s.idle.append(q)
          return nil
        }
        let j = s.jobs[s.head]
        s.jobs[s.head] = nil
        s.head += 1
        if s.head >= 1024 && s.head * 2 >= s.jobs.count {
          s.jobs.removeFirst(s.head)
          s.head = 0
        }
        return j
      }
      guard let job else { return }
      job()
    }
  }
}
