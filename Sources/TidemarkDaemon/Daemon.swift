// TidemarkDaemon: the engine's long-running side. A daemon is a ServiceGroup of services (the cycle scheduler,
// the metrics endpoint); SIGTERM and SIGINT start a graceful shutdown (the running cycle finishes, then the daemon
// stops), SIGHUP reloads the configuration before the next cycle, SIGUSR1 runs a cycle now. Signals come from
// swift-service-lifecycle's UnixSignalsSequence; nothing here resets a signal handler for the whole process.
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import TidemarkCore
import TidemarkEngine
import TidemarkSystem
import UnixSignals

/// Unix seconds now, and sleeping until a moment: injected so that the scheduler is tested without waiting.
public protocol EngineClock: WallClock {
  func sleep(until: Double) async throws
}

public struct SystemEngineClock: EngineClock {
  public init() {}
  public func now() -> Double { Date().timeIntervalSince1970 }
  public func sleep(until t: Double) async throws {
    let d = t - now()
    if d > 0 { try await Task.sleep(for: .nanoseconds(Int64(d * 1e9))) }
  }
}

/// When cycles run: on multiples of the interval (5m: at :00, :05, …); a cycle that overruns skips the ticks it
/// covered.
public enum Ticks {
  /// The first tick strictly after `now`.
  public static func next(after now: Double, interval: Double) -> Double {
    (now / interval).rounded(.down) * interval + interval
  }

  /// How many ticks after `tick` a cycle that ended at `end` covered (skipped, not queued).
  public static func missed(tick: Double, end: Double, interval: Double) -> Int {
    max(0, Int(((end - tick) / interval).rounded(.down)))
  }
}

/// What wakes the scheduler before its next tick.
public enum DaemonEvent: Sendable, Equatable {
  /// `changed`: the change journal saw the first change since the last backup (continuous cycles).
  case runNow, reload, stop, changed
}

/// A mailbox of events with one waiter (the scheduler).
public final class DaemonControl: Sendable {
  private struct State {
    var events: [DaemonEvent] = []
    var waiter: CheckedContinuation<Void, Never>? = nil
  }
  private let state = Mutex(State())

  public init() {}

  public func post(_ e: DaemonEvent) {
    let w = state.withLock { s -> CheckedContinuation<Void, Never>? in
      s.events.append(e)
      defer { s.waiter = nil }
      return s.waiter
    }
    w?.resume()
  }

  /// Returns when an event is pending (at once if one is) or the task is cancelled.
  func wait() async {
    await withTaskCancellationHandler {
      await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
        let now = state.withLock { s -> Bool in
          if !s.events.isEmpty || Task.isCancelled { return true }
          s.waiter = c
          return false
        }
        if now { c.resume() }
      }
    } onCancel: {
      state.withLock { s -> CheckedContinuation<Void, Never>? in
        defer { s.waiter = nil }
        return s.waiter
      }?.resume()
    }
  }

  func take() -> [DaemonEvent] {
    state.withLock { s in
      defer { s.events = [] }
      return s.events
    }
  }

  var stopping: Bool { state.withLock { $0.events.contains(.stop) } }
  var hasEvents: Bool { state.withLock { !$0.events.isEmpty } }
}

/// The scheduler: one cycle per tick, one at a time.
public struct Scheduler: Service {
  public var interval: @Sendable () -> Double
  public let clock: any EngineClock
  public let control: DaemonControl
  public let logger: Logger
  /// Runs one cycle (and what is due after it: drills, the rolling check).
  public let runCycle: @Sendable () async -> Void
  /// Reloads the configuration (SIGHUP); a failure keeps the old one.
  public let reload: @Sendable () async -> Void
  /// Counts ticks an overrunning cycle skipped.
  public let skipped: @Sendable (Int) -> Void
  /// Traps SIGHUP and SIGUSR1 (off in tests, which post events themselves).
  public var trapSignals = true
  /// Continuous cycles: seconds from the first recorded change (a `changed` event) to the cycle that backs it up;
  /// nil: `changed` events are ignored and cycles run on the ticks only.
  public var continuous: @Sendable () -> Double? = { nil }

  public init(
    interval: @escaping @Sendable () -> Double, clock: any EngineClock, control: DaemonControl, logger: Logger,
    runCycle: @escaping @Sendable () async -> Void, reload: @escaping @Sendable () async -> Void,
    skipped: @escaping @Sendable (Int) -> Void
  ) {
    self.interval = interval
    self.clock = clock
    self.control = control
    self.logger = logger
    self.runCycle = runCycle
    self.reload = reload
    self.skipped = skipped
  }

  public func run() async throws {
    let control = self.control
    let signals: Task<Void, Never>? =
      trapSignals
      ? Task {
        for await sig in await UnixSignalsSequence(trapping: .sighup, .sigusr1) {
          control.post(sig == .sighup ? .reload : .runNow)
        }
      } : nil
    defer { signals?.cancel() }
    try await withGracefulShutdownHandler {
      try await loop()
    } onGracefulShutdown: {
      control.post(.stop)
    }
  }

  func loop() async throws {
    // When a change the journal recorded is due to be backed up (continuous cycles).
    var changeDue: Double? = nil
    while true {
      let interval = self.interval()
      let next = Ticks.next(after: clock.now(), interval: interval)
      let wake = min(next, changeDue ?? next)
      var early = false
      if !control.hasEvents {
        await withTaskGroup(of: Void.self) { g in
          g.addTask { [clock] in try? await clock.sleep(until: wake) }
          g.addTask { [control] in await control.wait() }
          await g.next()
          g.cancelAll()
        }
      }
      let events = control.take()
      if events.contains(.stop) { break }
      if events.contains(.reload) { await reload() }
      if events.contains(.changed), changeDue == nil, let debounce = continuous() {
        changeDue = clock.now() + debounce
      }
      let changed = changeDue.map { clock.now() >= $0 } ?? false
      early = events.contains(.runNow) || changed
      if !early && clock.now() < next { continue }  // a reload alone: wait for the tick
      changeDue = nil
      await runCycle()
      // Idle until the next tick: give the cycle's buffers back.
      Sys.releaseFreeMemory()
      let missed = Ticks.missed(tick: next, end: clock.now(), interval: interval)
      if missed > 0 && !early {
        skipped(missed)
        logger.warning("the cycle overran; skipped \(missed) tick\(missed == 1 ? "" : "s")")
      }
      if control.stopping { break }
    }
  }
}
