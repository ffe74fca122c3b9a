// `tidemark daemon` as a ServiceGroup: the scheduler and, with `metrics.listen`, the metrics endpoint. One daemon
// per configuration (the daemon lock in its state directory); the repository key is derived once and kept in
// memory (KeyCache) until a reload.
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import TidemarkCore
import TidemarkEngine
import UnixSignals

public struct Daemon: Sendable {
  /// The configuration file, read again on SIGHUP.
  public var configPath: String
  /// The cycle for a configuration (the command line knows how to reach its repository).
  public var makeCycle: @Sendable (EngineConfig) throws -> Cycle
  public var logger: Logger
  public var clock: any EngineClock = SystemEngineClock()

  public init(configPath: String, logger: Logger, makeCycle: @escaping @Sendable (EngineConfig) throws -> Cycle) {
    self.configPath = configPath
    self.logger = logger
    self.makeCycle = makeCycle
  }

  public func run() async throws {
    let first = try makeCycle(try EngineConfig.load(configPath))
    let stateDir = first.stateDir
    try stateDir.prepare()
    let lock = try stateDir.lockDaemon()
    defer { lock.release() }
    var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
    if let listen = first.config.metrics.listen {
      let endpoint = try MetricsEndpoint(listen: listen, logger: logger) {
        stateDir.metricsText(now: Date().timeIntervalSince1970)
      } health: {
        let s = stateDir.loadState()
        let ok = s.cycles == 0 || s.lastCycleSuccess
        return (ok, "{\"ok\":\(ok),\"cycles\":\(s.cycles)}\n")
      }
      services.append(.init(service: endpoint))
    }
    let current = Mutex(first)
    let logger = self.logger
    let control = DaemonControl()
    // The change journal over the path sources, made again when a reload changes them.
    let journal = Mutex<SourceJournal?>(nil)
    @Sendable func startJournal(_ config: EngineConfig) {
      journal.withLock { j in
        let paths = config.sourcePaths
        if j?.paths == paths && config.journal { return }
        j?.close()
        j = nil
        guard config.journal, !paths.isEmpty else { return }
        let made = SourceJournal(paths: paths, quiet: Daemon.quietPaths(config, stateDir: stateDir)) {
          control.post(.changed)
        }
        if let why = made.unavailable {
          logger.warning("change journal unavailable: \(why); every cycle walks the sources in full")
        } else {
          logger.info("change journal: watching \(paths.joined(separator: ", "))")
        }
        j = made
      }
    }
    startJournal(first.config)
    defer { journal.withLock { $0?.close() } }
    let keys = KeyCache()
    let indexes = IndexCache()
    let configPath = self.configPath
    let makeCycle = self.makeCycle
    var scheduler = Scheduler(
      interval: { current.withLock { $0.config.interval.inSeconds } }, clock: clock, control: control,
      logger: logger,
      runCycle: {
        var cycle = current.withLock { $0 }
        cycle.keys = keys
        cycle.indexCache = indexes
        cycle.journal = journal.withLock { $0 }
        do {
          try await cycle.run()
        } catch {
          logger.error("\(error)")
        }
        // A drill when its schedule says so, and the day's share of the rolling data check.
        if !control.stopping { await Drill(cycle: cycle).scheduled() }
      },
      reload: {
        do {
          let c = try makeCycle(try EngineConfig.load(configPath))
          current.withLock { $0 = c }
          startJournal(c.config)
          indexes.clear()
          keys.clear()
          logger.info("configuration reloaded")
        } catch {
          logger.error("keeping the old configuration: \(error)")
        }
      },
      skipped: { n in
        var st = stateDir.loadState()
        st.cyclesSkipped += n
        try? stateDir.save(st)
      })
    scheduler.continuous = { current.withLock { $0.config.continuous?.inSeconds } }
    services.insert(.init(service: scheduler, successTerminationBehavior: .gracefullyShutdownGroup), at: 0)
    let group = ServiceGroup(
      configuration: .init(
        services: services, gracefulShutdownSignals: [.sigterm, .sigint], cancellationSignals: [],
        logger: Logger(label: "tidemark.lifecycle") { _ in SwiftLogNoOpLogHandler() }))
    logger.info("tidemark daemon: every \(first.config.interval), state in \(stateDir.path)")
    try await group.run()
    logger.info("tidemark daemon: stopped")
  }

  /// Where the daemon writes itself: changes there start no cycle.
  static func quietPaths(_ config: EngineConfig, stateDir: StateDirectory) -> [String] {
    var out = [stateDir.path]
    // A local repository (a path, or `local:` and a path): the backup's own writes.
    var repo = config.repository
    if repo.hasPrefix("local:") { repo.removeFirst(6) }
    if repo.hasPrefix("/") { out.append(repo) }
    return out
  }
}
