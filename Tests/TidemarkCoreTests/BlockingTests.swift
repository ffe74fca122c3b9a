// Blocking.run: what a call hands back to its caller, and when it lets go of what its closure captured.
import Synchronization
import Testing
import TidemarkCore
import TidemarkSystem

@Suite struct BlockingTests {
  final class Buffer: @unchecked Sendable {
    var bytes = [UInt8](repeating: 1, count: 4096)
  }

  /// A buffer captured by a blocking call is the caller's alone as soon as the call returns, so reusing it
  /// (as the backup reuses its pack buffers after writing one) neither copies it nor allocates a fresh one.
  @Test func aCallLetsGoOfWhatItCapturedBeforeItsCallerGoesOn() async throws {
    var shared = 0
    for _ in 0..<500 {
      var buffer = Buffer()
      let sum = try await Blocking.run { [buffer] in buffer.bytes.reduce(0) { $0 + Int($1) } }
      #expect(sum == 4096)
      if !isKnownUniquelyReferenced(&buffer) { shared += 1 }
    }
    #expect(shared == 0, "still shared after \(shared) of 500 calls")
  }

  /// Where `b`'s storage is once it may be written (a shared buffer is copied first).
  @Sendable static func address(_ b: inout [UInt8]) -> UInt {
    b.withUnsafeMutableBufferPointer { UInt(bitPattern: $0.baseAddress) }
  }

  final class Count: Sendable {
    let value = Mutex(0)
  }

  /// A buffer moved to a blocking thread and back, and into a pool and out again by another task, is referenced once
  /// at every step: writing into it never copies it (which would put it on fresh pages, a fault for each). Two tasks
  /// pass two buffers around as a restore passes its pack buffers, so a reference left behind at any hand-over would
  /// be seen by the other task.
  @Test func aBufferMovedThroughCallsAndAPoolIsNeverCopied() async throws {
    let pool = BufferPool(keep: 2)
    for _ in 0..<2 { pool.give([UInt8](repeating: 0, count: 1 << 16)) }
    let copies = Count()
    try await withThrowingTaskGroup(of: Void.self) { group in
      for _ in 0..<2 {
        group.addTask {
          for _ in 0..<400 {
            var b = pool.take()
            guard !b.isEmpty else { continue }
            let before = b.withUnsafeBufferPointer { UInt(bitPattern: $0.baseAddress) }
            var (back, there) = try await Blocking.run(moving: consume b) { (b: inout [UInt8]) -> UInt in
              b[0] &+= 1
              return BlockingTests.address(&b)
            }
            let here = BlockingTests.address(&back)
            if there != before || here != before { copies.value.withLock { $0 += 1 } }
            pool.give(consume back)
          }
        }
      }
      try await group.waitForAll()
    }
    #expect(copies.value.withLock { $0 } == 0, "copied \(copies.value.withLock { $0 }) times")
  }

  @Test func errorsComeBackToTheCaller() async {
    struct Failure: Error {}
    await #expect(throws: Failure.self) { try await Blocking.run { throw Failure() } }
  }
}
