// hooks.before, hooks.after and hooks.on-failure: shell commands around a cycle. A before or after hook that
// fails fails the cycle; on-failure hooks run after a failed cycle and their own failure is only reported.
import Foundation
import TidemarkCore

public enum Hooks {
  /// How long one hook may run before it is stopped (and counts as failed).
  public static let timeout: Duration = .seconds(3600)

  public static func run(_ commands: [String], phase: String) async throws {
    for c in commands {
      let r = try await ChildProcess.shell(c, timeout: timeout)
      guard r.succeeded else {
        let how: String
        switch r.termination {
        case _ where r.timedOut: how = "was stopped after \(timeout.components.seconds) s"
        case .signaled(let sig): how = "was killed by signal \(sig)"
        case .exited(let code): how = "failed with exit code \(code)"
        }
        throw TidemarkError(.general, "\(phase) hook `\(c)` \(how)" + (r.tail.isEmpty ? "" : ": \(r.tailSummary)"))
      }
    }
  }
}
