// One-shot commands (backup, restore, prune, replicate --once, …) under SIGINT and SIGTERM: the signal cancels
// the command's task tree; every lock it holds is released as its scope unwinds (see RepositoryLock and
// HeldLocks), and the command ends with exit code 130. If the work has not ended `grace` after the signal (a
// blocking read that cannot notice cancellation), or a second signal comes, the locks still held are released
// and the process exits 130 at once.
import Foundation
import ServiceLifecycle
import Synchronization
import TidemarkCore
import UnixSignals

public enum Interruptible {
  public static func run(
    grace: Duration = .seconds(10), notice: @escaping @Sendable () -> Void = {},
    _ body: @escaping @Sendable () async throws -> Void
  ) async throws {
    let held = HeldLocks()
    let interrupted = Atomic(false)
    let work = Task { try await HeldLocks.$current.withValue(held) { try await body() } }
    let watcher = Task {
      var signals = 0
      for await _ in await UnixSignalsSequence(trapping: .sigint, .sigterm) {
        signals += 1
        interrupted.store(true, ordering: .relaxed)
        if signals == 1 {
          notice()
          work.cancel()
          Task {
            try? await Task.sleep(for: grace)
            await held.releaseAll()
            exit(130)
          }
        } else {
          await held.releaseAll()
          exit(130)
        }
      }
    }
    defer { watcher.cancel() }
    do {
      try await work.value
      if interrupted.load(ordering: .relaxed) { throw TidemarkError(.interrupted, "interrupted") }
    } catch {
      if interrupted.load(ordering: .relaxed) {
        await held.releaseAll()
        throw TidemarkError(.interrupted, "interrupted")
      }
      throw error
    }
  }
}
