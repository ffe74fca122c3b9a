// Cycles run in-process through the engine library (no binary): state per configuration, prune only when its
// schedule (on an injected clock) says so, and index files that stay bounded over hundreds of cycles on both
// sides.
import Foundation
import Synchronization
import Testing
import TidemarkBackends
import TidemarkCore
import TidemarkEngine
import TidemarkOperations
import TidemarkSystem

/// A clock the test sets.
final class SetClock: WallClock {
  let t: Mutex<Double>
  init(_ start: Double) { t = Mutex(start) }
  func now() -> Double { t.withLock { $0 } }
  func set(_ v: Double) { t.withLock { $0 = v } }
}

struct EngineFixture {
  let dir: String
  let config: EngineConfig
  let clock = SetClock(1_800_000_000)

  init(_ name: String, extra: String = "") throws {
    dir = "/tmp/tidemark-engine-\(name)-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: dir + "/src", withIntermediateDirectories: true)
    config = try EngineConfig.parse(
      """
      repository: \(dir)/dc
      state-dir: \(dir)/state
      sources:
        - path: \(dir)/src
      targets:
        - name: dr
          repository: \(dir)/dr
      retention:
        keep-last: 3
      \(extra)
      """, file: dir + "/c.yaml")
  }

  func initialize() async throws {
    _ = try await Repository.initialize(
      backend: LocalBackend(path: BytePath(dir + "/dc")), password: Array("pw".utf8), kdf: (1024, 8, 1))
  }

  func cycle() -> Cycle {
    var c = Cycle(
      config: config, access: RepositoryAccess(location: dir + "/dc") { Array("pw".utf8) },
      stateDir: StateDirectory.of(config), logger: EngineLog.silent)
    c.clock = clock
    return c
  }

  func write(_ name: String, _ bytes: Int) throws {
    try Data((0..<bytes).map { _ in UInt8.random(in: 0...255) }).write(to: URL(fileURLWithPath: dir + "/src/" + name))
  }

  func count(_ repo: String, _ kind: String) -> Int {
    ((try? FileManager.default.contentsOfDirectory(atPath: dir + "/" + repo + "/" + kind)) ?? []).count
  }

  func remove() { try? FileManager.default.removeItem(atPath: dir) }
}

@Suite(.serialized) struct EngineCycleTests {
  @Test func stateIsKeptInTheConfigurationsOwnDirectory() async throws {
    let f = try EngineFixture("state")
    defer { f.remove() }
    try await f.initialize()
    try f.write("a", 1000)
    let keys = KeyCache()
    var c = f.cycle()
    c.keys = keys
    try await c.run()
    let state = StateDirectory.of(f.config).loadState()
    #expect(StateDirectory.of(f.config).path == f.dir + "/state")
    #expect(state.cycles == 1 && state.lastCycleSuccess)
    #expect(state.targets.map(\.name) == ["dr"])
    #expect(state.targets.first?.newestSnapshot == state.lastSnapshot)
    // Without `state-dir`, the directory is named after the configuration file.
    let other = try EngineConfig.parse("repository: /x\n", file: "/etc/tidemark/replica.yaml")
    #expect(StateDirectory.of(other, environment: [:]).path == "/var/lib/tidemark/replica")
  }

  @Test func pruneRunsOnlyWhenItsScheduleIsDue() async throws {
    let f = try EngineFixture("prune-schedule", extra: "prune:\n  schedule: 1h\n  max-unused: 0%")
    defer { f.remove() }
    try await f.initialize()
    let start = f.clock.now()
    for round in 0..<6 {
      try? FileManager.default.removeItem(atPath: f.dir + "/src/f\(round - 1)")
      try f.write("f\(round)", 300_000)
      f.clock.set(start + Double(round) * 900)  // every 15 minutes: prune at 0 and 3600 s
      try await f.cycle().run()
    }
    let state = StateDirectory.of(f.config).loadState()
    #expect(state.lastPrune == start + 3600, "\(String(describing: state.lastPrune))")
    #expect(state.prunedBytesTotal > 0)
    #expect(state.targets.first?.lastPruneFreedBytes != nil)
  }

  @Test func aTargetSomeoneHoldsALockOnIsPrunedAtTheNextCycle() async throws {
    let f = try EngineFixture("prune-locked", extra: "prune:\n  schedule: 1h")
    defer { f.remove() }
    try await f.initialize()
    let t0 = f.clock.now()
    try f.write("a", 1000)
    try await f.cycle().run()  // the first cycle prunes every side
    // An hour later prune is due, but someone (a mount, a restore) holds a lock on the DR repository.
    let dr = try await Repository.open(backend: LocalBackend(path: BytePath(f.dir + "/dr")), password: Array("pw".utf8))
    let held = try await RepositoryLock.acquire(dr, exclusive: false)
    f.clock.set(t0 + 3600)
    try f.write("b", 1000)
    try await f.cycle().run()
    var state = StateDirectory.of(f.config).loadState()
    #expect(state.lastPrune == t0 + 3600)
    #expect(state.targets.first?.lastPrune == t0, "the locked target was not pruned")
    await held.release()
    // Fifteen minutes later the DC's prune is not due, the skipped target's is.
    f.clock.set(t0 + 4500)
    try await f.cycle().run()
    state = StateDirectory.of(f.config).loadState()
    #expect(state.lastPrune == t0 + 3600)
    #expect(state.targets.first?.lastPrune == t0 + 4500)
  }

  @Test func indexFilesStayBoundedOverThreeHundredCycles() async throws {
    let f = try EngineFixture("index-bound", extra: "prune:\n  schedule: off\n  max-index-files: 16")
    defer { f.remove() }
    try await f.initialize()
    let keys = KeyCache()
    var most = (dc: 0, dr: 0)
    for round in 0..<300 {
      try f.write("f\(round % 7)", 2000)
      var c = f.cycle()
      c.keys = keys
      f.clock.set(1_800_000_000 + Double(round) * 300)
      try await c.run()
      most = (max(most.dc, f.count("dc", "index")), max(most.dr, f.count("dr", "index")))
    }
    // The bound: max-index-files, plus the cycle's own new file before the next consolidation.
    #expect(most.dc <= 17 && most.dr <= 17, "index files at most: \(most)")
    let dc = try await Repository.open(backend: LocalBackend(path: BytePath(f.dir + "/dc")), password: Array("pw".utf8))
    let dr = try await Repository.open(backend: LocalBackend(path: BytePath(f.dir + "/dr")), password: Array("pw".utf8))
    #expect(try await dc.listSnapshots().count == 3)
    #expect(
      Set(try await dr.listSnapshots().compactMap(\.id)).isSuperset(of: try await dc.listSnapshots().compactMap(\.id)))
    for repo in [dc, dr] {
      let report = try await Check.run(repo, options: CheckOptions())
      #expect(report.errors.isEmpty, "\(report.errors)")
    }
  }
}
