// The daemon's scheduler with an injected clock: cycles on interval ticks, overruns skip ticks (counted), a
// reload waits for the next tick, "run now" runs at once, a change runs one after the debounce when cycles are
// continuous, and a stop ends the loop after the running cycle.
import Foundation
import Logging
import Synchronization
import Testing
import TidemarkDaemon
import TidemarkEngine

/// A clock that jumps: sleeping moves it to the moment slept until.
final class JumpingClock: EngineClock {
  let t: Mutex<Double>
  init(_ start: Double) { t = Mutex(start) }
  func now() -> Double { t.withLock { $0 } }
  func advance(_ d: Double) { t.withLock { $0 += d } }
  func sleep(until u: Double) async throws {
    try Task.checkCancellation()
    t.withLock { $0 = max($0, u) }
    await Task.yield()
  }
}

@Suite struct SchedulerTests {
  @Test func ticksAreAlignedAndOverrunsSkipTicks() {
    #expect(Ticks.next(after: 1000, interval: 300) == 1200)
    #expect(Ticks.next(after: 1200, interval: 300) == 1500)
    #expect(Ticks.missed(tick: 1200, end: 1250, interval: 300) == 0)
    #expect(Ticks.missed(tick: 1200, end: 1900, interval: 300) == 2)
  }

  @Test func theSchedulerRunsCyclesOnTicksAndCountsSkippedOnes() async throws {
    let clock = JumpingClock(1000)
    let control = DaemonControl()
    let starts = Mutex<[Double]>([])
    let skipped = Mutex(0)
    let durations: [Double] = [10, 700, 10, 10]
    let scheduler = Scheduler(
      interval: { 300 }, clock: clock, control: control, logger: EngineLog.silent,
      runCycle: {
        let n = starts.withLock { s in
          s.append(clock.now())
          return s.count
        }
        clock.advance(durations[n - 1])
        if n == durations.count { control.post(.stop) }
      }, reload: {}, skipped: { n in skipped.withLock { $0 += n } })
    var s = scheduler
    s.trapSignals = false
    try await s.run()
    // 1200 (10 s), 1500 (700 s: covers 1800 and 2100), 2400, 2700.
    #expect(starts.withLock { $0 } == [1200, 1500, 2400, 2700])
    #expect(skipped.withLock { $0 } == 2)
  }

  @Test func reloadWaitsForTheTickAndRunNowRunsAtOnce() async throws {
    let clock = JumpingClock(1000)
    let control = DaemonControl()
    let starts = Mutex<[Double]>([])
    let reloads = Mutex(0)
    control.post(.reload)
    let scheduler = Scheduler(
      interval: { 300 }, clock: clock, control: control, logger: EngineLog.silent,
      runCycle: {
        let n = starts.withLock { s in
          s.append(clock.now())
          return s.count
        }
        clock.advance(5)
        if n == 1 { control.post(.runNow) }
        if n == 2 { control.post(.stop) }
      }, reload: { reloads.withLock { $0 += 1 } }, skipped: { _ in })
    var s = scheduler
    s.trapSignals = false
    try await s.run()
    // The reload came first and ran no cycle; the first cycle waited for 1200; "run now" ran one at 1205.
    #expect(reloads.withLock { $0 } == 1)
    #expect(starts.withLock { $0 } == [1200, 1205])
  }

  @Test func aChangeStartsACycleAfterTheDebounceOnlyWhenContinuous() async throws {
    for continuous in [true, false] {
      let clock = JumpingClock(1000)
      let control = DaemonControl()
      let starts = Mutex<[Double]>([])
      control.post(.changed)
      var s = Scheduler(
        interval: { 300 }, clock: clock, control: control, logger: EngineLog.silent,
        runCycle: {
          let n = starts.withLock { s in
            s.append(clock.now())
            return s.count
          }
          clock.advance(2)
          // A change during the cycle: the next cycle comes 5 s after the loop hears of it, not at once.
          if n == 1 { control.post(.changed) }
          if n == 3 { control.post(.stop) }
        }, reload: {}, skipped: { _ in })
      s.trapSignals = false
      if continuous { s.continuous = { 5 } }
      try await s.run()
      // Continuous: 1005 (5 s after the change), 1012 (5 s after the one heard at 1007), then the tick at 1200.
      // Without it, changes wait for the ticks.
      #expect(
        starts.withLock { $0 } == (continuous ? [1005, 1012, 1200] : [1200, 1500, 1800]), "continuous: \(continuous)")
    }
  }
}
