// tidemark's command line: argument parsing, wiring, output and exit codes. Nothing else lives here.
import ArgumentParser
import Foundation
import TidemarkCore
import TidemarkCrypto
import TidemarkDaemon
import TidemarkEngine
import TidemarkSystem

@main
struct Tidemark: AsyncParsableCommand {
  static let version = TidemarkVersion.string

  static let configuration = CommandConfiguration(
    commandName: "tidemark",
    abstract: "Encrypted, deduplicated backups on restic's repository format, built for disaster recovery.",
    discussion: """
      tidemark reads and writes restic repositories (format version 2): what tidemark stores, restic \
      can check and restore, and the other way round.

      Exit codes:
        0    success
        1    error (the message says what and what to do)
        3    backup incomplete: some source files could not be read (the snapshot was written)
        10   no repository at the given location
        11   the repository is locked by another process
        12   wrong password
        130  interrupted
      """,
    version: version,
    subcommands: [
      Init.self, Backup.self, Snapshots.self, Ls.self, Cat.self, RestoreCommand.self, KeyCommand.self,
      Unlock.self, Forget.self, PruneCommand.self, CheckCommand.self, StatsCommand.self, DiffCommand.self,
      FindCommand.self, MountCommand.self, CopyCommand.self, ReplicateCommand.self, StatusCommand.self,
      DaemonCommand.self, ScheduleCommand.self, FailoverCommand.self, PromoteCommand.self, DemoteCommand.self,
      RoleCommand.self, DrillCommand.self, ServeCommand.self, TripwireCommand.self,
      VersionCommand.self, DebugCommand.self,
    ])

  /// Parses, runs, and maps any error to one line on stderr and restic's exit codes.
  static func main() async {
    CryptoLibrary.initialize()
    if ProcessInfo.processInfo.environment["TIDEMARK_NO_MALLOC_TUNING"] == nil { Sys.tuneMalloc() }
    do {
      var command = try parseAsRoot(hoistingGlobalOptions(Array(CommandLine.arguments.dropFirst())))
      if let c = command as? AsyncParsableCommand {
        // The daemon, the mount and the server handle their own signals; every other command is cancelled by
        // one and releases its locks (exit code 130).
        if c is DaemonCommand || c is MountCommand || c is ServeCommand {
          var c = c
          try await c.run()
        } else {
          let box = CommandBox(c)
          try await Interruptible.run(notice: { Out.errRaw("\nsignal received, cleaning up\n") }) {
            try await box.run()
          }
        }
      } else {
        try command.run()
      }
    } catch {
      exit(withCode: report(error))
    }
  }

  /// restic accepts global options before the verb (`tidemark -r REPO backup …`); ArgumentParser wants
  /// them after it. Moves leading options behind the (sub)command path. ArgumentParser's own root options stay
  /// where they are: `--generate-completion-script fish` names a shell, not a command, and the completion
  /// scripts call `tidemark ---completion SUBCOMMAND -- WORDS` at every Tab.
  static func hoistingGlobalOptions(_ args: [String]) -> [String] {
    let parserOwn = ["--generate-completion-script", "---completion", "--experimental-dump-help"]
    if let first = args.first, parserOwn.contains(where: { first == $0 || first.hasPrefix($0 + "=") }) {
      return args
    }
    let takesValue: Set<String> = [
      "-r", "--repo", "--password-file", "--password-command", "--config", "--compression", "--retry-lock", "-o",
      "--option",
      "--limit-upload", "--limit-download", "--cacert",
    ]
    var leading: [String] = []
    var i = 0
    while i < args.count, args[i].hasPrefix("-") {
      leading.append(args[i])
      if takesValue.contains(args[i]), i + 1 < args.count {
        leading.append(args[i + 1])
        i += 1
      }
      i += 1
    }
    guard !leading.isEmpty, i < args.count else { return args }
    var path = [args[i]]
    i += 1
    if path[0] == "key", i < args.count, ["list", "add", "remove", "passwd"].contains(args[i]) {
      path.append(args[i])
      i += 1
    }
    return path + leading + Array(args[i...])
  }

  static func exit(withCode code: Int32) -> Never {
    Foundation.exit(code)
  }

  /// The one place errors become exit codes.
  static func report(_ error: Error) -> Int32 {
    switch error {
    case let e as TidemarkError:
      Out.errRaw("tidemark: \(e.description)\n")
      return ExitCodes.code(for: e.kind)
    case let e as SystemError:
      Out.errRaw("tidemark: \(e.description)\n")
      return 1
    case let e as FileRetained:
      Out.errRaw("tidemark: \(e.description); the storage refuses to delete it before then (S3 Object Lock)\n")
      return 1
    case is CancellationError:
      Out.errRaw("tidemark: interrupted\n")
      return 130
    default:
      let code = Tidemark.exitCode(for: error)
      let msg = Tidemark.fullMessage(for: error)
      if code == .success {
        if !msg.isEmpty { Out.line(msg) }
        return 0
      }
      if error is ExitCode { return code.rawValue }
      // Argument errors: the parser's message and usage, but restic's exit code 1.
      Out.errRaw(msg + "\n")
      return 1
    }
  }
}

/// Hands a parsed command to the interruptible task that runs it (commands are parsed values, run once).
final class CommandBox: @unchecked Sendable {
  private var command: AsyncParsableCommand
  init(_ c: AsyncParsableCommand) { command = c }
  func run() async throws { try await command.run() }
}

enum ExitCodes {
  static func code(for kind: TidemarkError.Kind) -> Int32 {
    switch kind {
    case .general, .usage, .corrupt, .notFound, .alreadyExists, .unavailable: return 1
    case .incompleteBackup: return 3
    case .repositoryNotFound: return 10
    case .locked: return 11
    case .wrongPassword: return 12
    case .interrupted: return 130
    }
  }
}

struct VersionCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "version", abstract: "Print version information.")
  @Flag(help: "Print as JSON.") var json = false
  func run() {
    let fuse = FUSEVersion.string
    let ssh = SSHVersion.string
    let openssl = OpenSSLVersion.string
    let zstd = ZstdVersion.string
    if json {
      Out.line(
        "{\"version\":\"\(Tidemark.version)\",\"go_arch\":\"amd64\",\"go_os\":\"linux\",\"libfuse\":\"\(fuse)\","
          + "\"libssh2\":\"\(ssh)\",\"openssl\":\"\(openssl)\",\"zstd\":\"\(zstd)\"}"
      )
    } else {
      Out.line(
        "tidemark \(Tidemark.version) on linux (libfuse \(fuse), libssh2 \(ssh), OpenSSL \(openssl), zstd \(zstd))")
    }
  }
}
