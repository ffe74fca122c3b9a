// Blocking.run: what a call hands back to its caller, and when it lets go of what its closure captured.
import Testing
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

  @Test func errorsComeBackToTheCaller() async {
    struct Failure: Error {}
    await #expect(throws: Failure.self) { try await Blocking.run { throw Failure() } }
  }
}
