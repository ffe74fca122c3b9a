import ArgumentParser
import Foundation
import TidemarkCore
import TidemarkEngine
import TidemarkMount
import TidemarkOperations
import TidemarkSystem

struct Backup: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Back up files and directories into a new snapshot.",
    discussion: """
      Unchanged files (same size, mtime, ctime and inode as in the parent snapshot) are not read again. \
      The parent is the latest snapshot of the same host and paths unless --parent or --force says otherwise.
      Files that cannot be read are reported, left out, and make the exit code 3; the snapshot is still saved.
      """)
  @OptionGroup var global: GlobalOptions
  @Option(name: [.customShort("H"), .long], help: "Hostname to record (default: this machine's).") var host: String?
  @Option(help: "Tag the snapshot (repeatable, or comma-separated).") var tag: [String] = []
  @Option(name: [.customShort("e"), .long], help: "Exclude paths matching this pattern (repeatable).") var exclude:
    [String] = []
  @Option(help: "Read exclude patterns from this file, one per line (repeatable).") var excludeFile: [String] = []
  @Flag(help: "Back up standard input as a file.") var stdin = false
  @Option(help: "File name for --stdin.") var stdinFilename = "stdin"
  @Option(help: "Use this snapshot as parent instead of the latest matching one.") var parent: String?
  @Flag(help: "Read every file, ignoring the parent snapshot.") var force = false
  @Flag(name: [.customShort("n"), .long], help: "Do everything except writing to the repository.") var dryRun = false
  @Option(help: "Record this time instead of now (\"2006-01-02 15:04:05\").") var time: String?
  @Argument(help: "Files and directories to back up.") var paths: [String] = []

  func validate() throws {
    if !stdin && paths.isEmpty { throw ValidationError("nothing to back up: give at least one path, or --stdin") }
    if stdin && !paths.isEmpty { throw ValidationError("--stdin takes no paths") }
  }

  func run() async throws {
    let repo = try await global.open()
    var opts = try BackupOptions(
      paths: paths, host: host, tags: tag, excludes: exclude, excludeFiles: excludeFile, time: time)
    opts.force = force
    opts.dryRun = dryRun
    opts.programVersion = "tidemark \(Tidemark.version)"
    if stdin { opts.stdinFilename = stdinFilename }
    if let parent { opts.parent = try await repo.findSnapshot(parent).id }

    let result = try await global.withLock(
      repo, exclusive: false, overlap: true, prepare: { try await repo.loadIndex() }
    ) {
      let backup = TidemarkOperations.Backup(repository: repo, options: opts)
      let ticker = startProgress(backup)
      defer { ticker?.cancel() }
      return try await backup.run()
    }
    report(result)
    if !result.stats.errors.isEmpty {
      throw TidemarkError(
        .incompleteBackup,
        "\(result.stats.errors.count) source file\(result.stats.errors.count == 1 ? "" : "s") could not be read; snapshot \(result.snapshotID?.short ?? "-") is incomplete",
        hint: "fix the permissions or exclude them (see the errors above)")
    }
  }

  func startProgress(_ b: TidemarkOperations.Backup) -> Task<Void, Never>? {
    let tty = global.progressEnabled
    let json = global.json
    guard tty || json else { return nil }
    let start = ContinuousClock.now
    return Task {
      var printedErrors = 0
      while !Task.isCancelled {
        try? await Task.sleep(for: .milliseconds(tty ? 250 : 1000))
        if Task.isCancelled { break }
        let s = b.stats
        let el = ContinuousClock.now - start
        let secs = el.inSeconds
        let pct = s.totalBytes > 0 ? min(1.0, Double(s.bytesDone) / Double(s.totalBytes)) : 0
        if json {
          Out.line(s.statusJSON(seconds: Int(secs), percent: pct))
        } else {
          while printedErrors < s.errors.count {
            Out.errRaw("\r\u{1b}[Kerror: \(s.errors[printedErrors])\n")
            printedErrors += 1
          }
          let rate = secs > 0 ? Double(s.bytesDone) / secs : 0
          let eta =
            rate > 0 && s.totalBytes > s.bytesDone
            ? " ETA \(Out.duration(Double(s.totalBytes - s.bytesDone) / rate))" : ""
          Out.errRaw(
            "\r\u{1b}[K[\(Out.duration(secs))] \(String(format: "%.1f", pct * 100))%  \(s.filesDone) files \(Out.bytes(s.bytesDone)), total \(s.totalFiles) files \(Out.bytes(s.totalBytes)), \(Out.bytes(Int64(rate)))/s, \(s.errors.count) errors\(eta)"
          )
        }
      }
      if tty { Out.errRaw("\r\u{1b}[K") }
    }
  }

  func report(_ r: BackupResult) {
    let s = r.stats
    if global.json { return r.summaryJSON.forEach(Out.line) }
    for e in s.errors { Out.err("error: \(e)") }
    if global.quiet { return }
    if let p = r.parent { Out.line("using parent snapshot \(p.short)") }
    Out.line("")
    Out.line(
      String(format: "Files:       %5d new, %5d changed, %5d unmodified", s.filesNew, s.filesChanged, s.filesUnmodified)
    )
    Out.line(
      String(format: "Dirs:        %5d new, %5d changed, %5d unmodified", s.dirsNew, s.dirsChanged, s.dirsUnmodified))
    Out.line(
      "Added to the repository: \(Out.bytes(Int64(r.saver.bytesAdded))) (\(Out.bytes(Int64(r.saver.bytesStored))) stored)"
    )
    Out.line("")
    Out.line("processed \(s.filesDone) files, \(Out.bytes(s.totalBytes)) in \(Out.duration(r.duration))")
    if let id = r.snapshotID {
      Out.line("snapshot \(id.short) saved")
    } else {
      Out.line("dry run: no snapshot saved")
    }
  }
}

struct RestoreCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "restore",
    abstract: "Make a directory equal a snapshot (or a path inside it), writing only what differs.",
    discussion: """
      The argument is one of:
        SNAPSHOT          an ID, a unique prefix or `latest`
        SNAPSHOT:PATH     only that directory or file of the snapshot
        PATH-IN-A-MOUNT   a directory or file inside a `tidemark mount`, e.g.
                          /mnt/backup/hosts/web1/latest/srv/www

      Where to: --target DIR restores under DIR; --in-place (and a mount path \
      without --target) restores to the original absolute location: SNAPSHOT \
      alone restores each of the snapshot's paths to its place (a backup of \
      /srv/www and /etc/nginx puts back those two directories and nothing above them). A mount path \
      is read from the repository directly, not through the mount, with the \
      mount's key when it shares it (run as root or as the mount's user): no \
      password needed.

      Existing files are compared first (--overwrite). With the default if-changed \
      an equal size and mtime means unchanged; otherwise the file is hashed at the \
      snapshot's blob offsets (and, if its size changed, the rest chunked and \
      hashed), the blobs it still holds are reused from it, and only the others \
      are fetched from the repository (each pack once). A changed file is built beside \
      the old one and renamed over it (atomic), or with --inplace patched where it \
      differs. Owner (as root), mode, times and xattrs follow; directories last.

      Nothing is deleted without --delete, which removes what the snapshot does \
      not have, inside the restored tree only (with --in-place and no PATH: inside \
      the snapshot's paths). --delete on / needs --no-preserve-root as well. Nothing is written outside the \
      target: symlinks on the way are replaced, never followed.

      --dry-run lists the changes like `rsync -i` and changes nothing; -v lists \
      them as they are made: >f new or changed file, .f metadata only, \
      cd new directory, cL new symlink, hf hard link, *deleting removal.
      """)
  @OptionGroup var global: GlobalOptions
  @Option(name: [.customShort("t"), .long], help: "Directory to restore into.") var target: String?
  @Flag(name: .customLong("in-place"), help: "Restore to the snapshot's original absolute paths.") var inPlace = false
  @Option(help: "When to replace an existing file: always, if-changed (default), if-newer, never.")
  var overwrite: String = "if-changed"
  @Flag(help: "Delete files and directories the snapshot does not have (inside the restored tree only).")
  var delete = false
  @Flag(
    name: .customLong("no-preserve-root"),
    help: "Allow --delete on / (a snapshot of the whole system restored in place); refused without it.")
  var noPreserveRoot = false
  var preserveRoot: Bool { !noPreserveRoot }
  @Flag(help: "Read back what was written and check it against the snapshot.") var verify = false
  @Flag(
    inversion: .prefixedNo,
    help: "Leave all-zero blocks of new files as holes (default; --no-sparse writes the zeros).")
  var sparse = true
  @Flag(help: "Patch changed files in place instead of building a new copy (for files too big to copy).")
  var inplace = false
  @Option(name: [.customShort("i"), .long], help: "Restore only paths matching this pattern (repeatable).") var include:
    [String] = []
  @Option(name: [.customShort("e"), .long], help: "Do not restore paths matching this pattern (repeatable).")
  var exclude: [String] = []
  @Option(name: [.customShort("H"), .long], help: "With `latest`: only this host.") var host: String?
  @Option(help: "With `latest`: only snapshots with this path.") var path: [String] = []
  @Flag(name: [.customShort("n"), .long], help: "List what would change; change nothing.") var dryRun = false
  @Argument(help: "SNAPSHOT[:PATH] or a path inside a tidemark mount") var snapshot: String

  func run() async throws {
    let policy = try OverwritePolicy(parsing: overwrite)
    if target != nil && inPlace { throw TidemarkError(.usage, "--target and --in-place exclude each other") }
    var global = self.global
    let fromMount = try MountStatus.resolve(snapshot)
    if let m = fromMount, global.repo == nil { global.repo = m.repository }
    guard fromMount != nil || target != nil || inPlace else {
      throw TidemarkError(.usage, "where to? give --target DIR or --in-place")
    }
    let (ref, sub) = try RestoreSelection.parse(snapshot, path: fromMount?.path)
    // From a mount: its key, if it shares it (no second key derivation); otherwise the password.
    var shared: Repository? = nil
    if let m = fromMount, let socket = m.keySocket {
      shared = try? await global.open(keyFrom: socket, pid: m.pid)
    }
    let repo: Repository
    if let shared { repo = shared } else { repo = try await global.open() }
    let snap = try await repo.findSnapshot(fromMount?.snapshot ?? ref, host: host, paths: path)

    let start = ContinuousClock.now
    let json = global.json
    let quiet = global.quiet
    let list = dryRun || global.verbose > 0
    // Restoring writes nothing to the repository: it may start while its lock is confirmed.
    let (stats, destinations) = try await global.withLock(
      repo, exclusive: false, overlap: true, prepare: { try await repo.loadIndex() }
    ) {
      // In place without PATH: each of the snapshot's paths to its own place (--delete acts inside them only).
      let selections =
        inPlace && sub.isEmpty && fromMount == nil
        ? try await RestoreSelection.eachPath(repo, snap)
        : [
          try await RestoreSelection.resolve(
            repo, snap, path: sub, acceptAbsoluteForRelative: fromMount == nil,
            target: target.map { BytePath($0).absolute() })
        ]
      var options: [RestoreOptions] = []
      for sel in selections {
        var opts = RestoreOptions(target: sel.destination)
        (opts.includes, opts.excludes) = (include.map(PathPattern.init), exclude.map(PathPattern.init))
        (opts.dryRun, opts.overwrite, opts.delete) = (dryRun, policy, delete)
        (opts.verify, opts.sparse, opts.inplace) = (verify, sparse, inplace)
        try sel.configure(&opts, preserveRoot: preserveRoot)
        if list && !quiet {
          // Several paths restored in place: each change named by its absolute path, not relative to its own.
          let prefix = selections.count > 1 ? sel.destination.bytes + (sel.destination.bytes == [47] ? [] : [47]) : []
          opts.itemize = { change in
            var c = change
            if c.path == Array("./".utf8) && !prefix.isEmpty { c.path = prefix } else { c.path = prefix + c.path }
            let path = BytePath.display(c.path)
            if json {
              Out.line(c.json)
            } else {
              let link = c.linkTarget.map { (c.code.hasPrefix("h") ? " => " : " -> ") + BytePath.display($0) } ?? ""
              Out.line("\(c.code) \(path)\(link)")
            }
          }
        }
        options.append(opts)
      }
      var total = RestoreStats()
      for (sel, opts) in zip(selections, options) {
        if !quiet && !json {
          Out.err(
            "\(dryRun ? "would restore" : "restoring") <Snapshot \(snap.id!.short) of [\(snap.paths.joined(separator: " "))] at \(Out.time(snap.time)) by \(snap.username)@\(snap.hostname)>\(sel.path.isEmpty ? "" : ":" + BytePath.display(RestoreSelection.joined(sel.path))) to \(sel.destination)"
          )
        }
        total.add(try await Restore(repository: repo, options: opts).run(tree: sel.tree))
      }
      return (total, selections.map(\.destination))
    }
    let d = ContinuousClock.now - start
    let secs = d.inSeconds
    for e in stats.errors { Out.err("error: \(e)") }
    if json {
      Out.line(
        stats.summaryJSON(
          dryRun: dryRun, target: destinations.first ?? BytePath(bytes: [47]), seconds: secs, targets: destinations))
    } else if !quiet {
      let verb = dryRun ? "would change" : "done"
      Out.err(
        "\(verb): \(stats.filesCreated) files created, \(stats.filesUpdated) updated, \(stats.filesUnchanged) unchanged, \(stats.entriesDeleted) deleted; \(Out.bytes(stats.bytesRestored)) \(dryRun ? "to fetch" : "fetched") from the repository, \(Out.bytes(stats.bytesReused)) reused locally\(verify ? ", \(Out.bytes(stats.bytesVerified)) verified" : "") in \(Out.duration(secs))"
      )
    }
    if !stats.errors.isEmpty {
      throw TidemarkError(
        .general,
        "\(stats.errors.count) error\(stats.errors.count == 1 ? "" : "s") during restore; the paths named above were not restored",
        hint: "run `tidemark check --read-data` if the repository may be damaged")
    }
  }
}

struct KeyCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "key", abstract: "Manage the repository's keys (passwords).",
    subcommands: [List.self, Add.self, Remove.self, Passwd.self])

  struct List: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List keys; * marks the one in use.")
    @OptionGroup var global: GlobalOptions
    func run() async throws {
      let repo = try await global.open()
      let rows = try await repo.keyFiles()
      if global.json { return Out.line(Listing.keysJSON(rows, current: repo.keyID?.hex)) }
      printTable(
        header: [" ID", "User", "Host", "Created"],
        rows: rows.map { name, k in
          [(name == repo.keyID?.hex ? "*" : " ") + String(name.prefix(8)), k.username, k.hostname, Out.time(k.created)]
        })
    }
  }

  static func newPassword(_ file: String?) throws -> [UInt8] {
    if let file { return GlobalOptions.trimmed(try Sys.readFile(BytePath(file))) }
    if let v = GlobalOptions.env("NEW_PASSWORD") { return Array(v.utf8) }
    if isatty(0) == 1, let p = getpass("enter new password: ") {
      let a = String(cString: p)
      guard let b = getpass("enter password again: "), String(cString: b) == a else {
        throw TidemarkError(.usage, "passwords do not match")
      }
      return Array(a.utf8)
    }
    throw TidemarkError(.usage, "no new password given", hint: "use --new-password-file")
  }

  struct Add: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Add a key (a new password for the same repository).")
    @OptionGroup var global: GlobalOptions
    @Option(help: "Read the new password from this file.") var newPasswordFile: String?
    @Option(help: "Username to record.") var user: String?
    @Option(help: "Hostname to record.") var host: String?
    func run() async throws {
      let repo = try await global.open()
      let id = try await global.withLock(repo, exclusive: false) {
        try await repo.addKey(
          password: try KeyCommand.newPassword(newPasswordFile), username: user, hostname: host)
      }
      if !global.quiet { Out.line("saved new key with ID \(id)") }
    }
  }

  struct Remove: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Remove a key (not the one in use).")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Key ID (a unique prefix is enough).") var id: String
    func run() async throws {
      let repo = try await global.open()
      let name = try await repo.removableKey(id)
      try await global.withLock(repo, exclusive: true) { try await repo.backend.remove(Handle(.key, name)) }
      if !global.quiet { Out.line("removed key \(name)") }
    }
  }

  struct Passwd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Change the password: add a new key, remove the old one.")
    @OptionGroup var global: GlobalOptions
    @Option(help: "Read the new password from this file.") var newPasswordFile: String?
    func run() async throws {
      let repo = try await global.open()
      try await global.withLock(repo, exclusive: true) {
        let id = try await repo.changePassword(to: try KeyCommand.newPassword(newPasswordFile))
        if !global.quiet { Out.line("saved new key as \(id)") }
      }
    }
  }
}
