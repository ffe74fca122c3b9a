// Shell commands the engine runs (hooks, alert commands, drill verify commands, password commands): `/bin/sh -c`,
// with extra environment, optional standard input, an optional timeout, and the last lines of their output.
// Runs through ChildProcess (swift-subprocess): waiting never blocks a thread of the cooperative pool, and a
// timeout or a cancelled task stops the command and what it started.
import Foundation

enum Shell {
  struct Result: Sendable {
    /// The exit status, or the signal's number when `signalled`.
    var status: Int32
    var signalled = false
    var timedOut = false
    /// Standard output (up to 1 MiB), when asked for.
    var stdout: [UInt8] = []
    /// The last lines of the combined output (or of standard error when standard output was captured).
    var tail: String = ""
    var ok: Bool { status == 0 && !signalled && !timedOut }
  }

  static func run(
    _ command: String, environment: [String: String] = [:], input: [UInt8]? = nil, timeout: Duration? = nil,
    captureStdout: Bool = false, tailLines: Int = 3
  ) async throws -> Result {
    let c: ChildResult
    if captureStdout {
      c = try await ChildProcess.shell(
        command, environment: environment, input: input, timeout: timeout, captureStdout: 1 << 20,
        errorTail: tailLines)
    } else {
      c = try await ChildProcess.shell(
        command, environment: environment, input: input, timeout: timeout, outputTail: tailLines)
    }
    var r: Result
    switch c.termination {
    case .exited(let code): r = Result(status: code)
    case .signaled(let sig): r = Result(status: sig, signalled: true)
    }
    r.timedOut = c.timedOut
    r.stdout = c.stdout
    r.tail = c.tailSummary
    return r
  }
}
