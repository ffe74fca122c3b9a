// The lock around a blob saver's state: exclusive under many more threads than cores.
import Dispatch
import Testing
import TidemarkCore

@Suite struct SleepingMutexTests {
  @Test func manyThreadsCountingUnderItLoseNothing() {
    let counter = SleepingMutex((total: 0, inside: 0, overlaps: 0))
    DispatchQueue.concurrentPerform(iterations: 16) { _ in
      for _ in 0..<20_000 {
        counter.withLock { c in
          c.inside += 1
          if c.inside > 1 { c.overlaps += 1 }
          c.total += 1
          c.inside -= 1
        }
      }
    }
    let c = counter.withLock { $0 }
    #expect(c.total == 16 * 20_000)
    #expect(c.overlaps == 0)
  }

  @Test func aThrowingBodyReleasesTheLock() {
    struct Failure: Error {}
    let m = SleepingMutex(1)
    #expect(throws: Failure.self) { try m.withLock { _ in throw Failure() } }
    #expect(m.withLock { $0 } == 1)
  }
}
