// `replicate`: wiring and output; the work is in TidemarkOperations (Replica.swift).
import ArgumentParser
import Foundation
import TidemarkBackends
import TidemarkCore
import TidemarkEngine
import TidemarkOperations

struct ReplicateCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "replicate",
    abstract: "Copy the repository to a disaster-recovery replica, verbatim.",
    discussion: """
      A replica shares the repository's config and master key (with a key file of its own), so stored files \
      are copied as they are: packs the replica lacks (each checked against its SHA-256 name), then index \
      files whose packs are all there, then snapshot files once every index file is there. The replica is \
      consistent at every moment; an interrupted run is finished by the next one, which copies only what is \
      still missing. When --to holds no repository, it is created as a replica first.

      The replica's password is the repository's unless --to-password-file or --to-password-command \
      (env: TIDEMARK_TO_PASSWORD_FILE, TIDEMARK_TO_PASSWORD_COMMAND, TIDEMARK_TO_PASSWORD) gives another. \
      -o options apply to whichever of the two repositories they fit (sftp.* to sftp:, s3.* to s3:, rest.* to rest:). \
      --limit-upload caps the rate at which the replica is written. Takes shared locks on both repositories. \
      A damaged pack of the repository is not copied, nothing \
      that needs it is published on the replica, and the command exits 1 naming it.
      """)
  @OptionGroup var global: GlobalOptions
  @Option(
    help: ArgumentHelp(
      "The replica: a directory, local:/path, sftp:…, s3:… or rest:… (created when it holds no repository).",
      valueName: "repository"))
  var to: String?
  @Flag(
    help:
      "Run one replication cycle from the configuration (--config, TIDEMARK_CONFIG or /etc/tidemark/tidemark.yaml): hooks, backup, replicate to every target, retention, state."
  )
  var once = false
  @Flag(
    name: .customLong("no-scheduled"),
    help: "With --once: skip the drill and rolling check that drill.schedule / drill.check-budget make due.")
  var noScheduled = false
  @Option(help: "Read the replica's password from this file (default: the repository's password).")
  var toPasswordFile: String?
  @Option(help: "Run this shell command and use its output as the replica's password.")
  var toPasswordCommand: String?

  func run() async throws {
    guard let to else {
      guard once else {
        throw TidemarkError(.usage, "nothing to do", hint: "give --to REPOSITORY, or --once to run a configured cycle")
      }
      var g = global
      if g.config == nil && ProcessInfo.processInfo.environment["TIDEMARK_CONFIG"] == nil {
        g.config = EngineConfig.defaultPath
      }
      guard let config = try g.engineConfig() else { return }
      let cycle = try g.cycle(config, logger: EngineLog.console(quiet: g.quiet || g.json))
      try await cycle.runOnce(scheduled: !noScheduled)
      return
    }
    let sourceLocation = try global.repositoryLocation()
    let (sourceOptions, targetOptions) = try BackendLocation.splitOptions(
      global.option, source: sourceLocation, target: to)
    let password = try await global.password()
    let source = try await Repository.open(
      backend: try global.backend(at: sourceLocation, options: sourceOptions), password: password,
      compression: try global.compressionMode)
    let targetBackend = try global.backend(at: to, options: targetOptions)
    let targetPassword =
      try await PasswordSource(file: toPasswordFile, command: toPasswordCommand).lookup(envPrefix: "TO_") ?? password
    let created = !(try await targetBackend.exists(.config))
    let target = try await Replica.create(
      source: source, target: targetBackend, password: targetPassword)
    if created && !global.quiet && !global.json {
      Out.line("created replica \(target.config.id.prefix(10)) at \(targetBackend.location)")
    }

    let verbose = global.verbose > 0 && !global.quiet && !global.json
    let notes = !global.quiet && !global.json
    let progress: @Sendable (ReplicaEvent) -> Void = { e in
      switch e {
      case .planned(let packs, let bytes, let indexFiles, let snapshots):
        if verbose {
          Out.line(
            "to copy: \(packs) packs (\(Out.bytes(Int64(bytes)))), \(indexFiles) index files, \(snapshots) snapshots")
        }
      case .copied(let h, let bytes):
        if verbose { Out.line("copied \(h) (\(Out.bytes(Int64(bytes))))") }
      case .note(let s):
        if notes { Out.line("note: \(s)") }
      }
    }
    let stats: ReplicaStats
    do {
      stats = try await Replica.sync(
        source: source, target: target, lockRetry: try global.lockRetry, progress: progress)
    } catch let e as ReplicaError {
      summary(e.stats, created: created, target: targetBackend.location, error: e.error)
      throw e.error
    }
    summary(stats, created: created, target: targetBackend.location, error: nil)
  }

  func summary(_ s: ReplicaStats, created: Bool, target: String, error: TidemarkError?) {
    if global.json {
      Out.raw(s.json(created: created, target: target, error: error?.message))
      return
    }
    guard !global.quiet else { return }
    Out.line(
      "copied \(s.packsCopied) packs (\(Out.bytes(Int64(s.packBytes)))), \(s.indexFilesCopied) index files, "
        + "\(s.snapshotsCopied) snapshots to \(target) in \(Out.duration(s.seconds))")
    Out.line(
      "already there: \(s.packsPresent) packs, \(s.indexFilesPresent) index files"
        + (s.indexFilesCovered > 0 ? " (\(s.indexFilesCovered) more covered by its index)" : "")
        + ", \(s.snapshotsPresent) snapshots")
    if s.packsSkipped + s.indexFilesSkipped + s.snapshotsSkipped > 0 {
      Out.line(
        "not copied: \(s.packsSkipped) packs, \(s.indexFilesSkipped) index files, \(s.snapshotsSkipped) snapshots")
    }
  }
}
