// The bytes of a stream-like source (command, postgres, sqlite, redis) for a cycle's backup: each is stored as one
// file in a snapshot of its own, read from a file descriptor as `backup --stdin` reads standard input.
// Concurrency contract: every child runs through ChildProcess/ChildStream (swift-subprocess), so starting, waiting
// and stopping are awaits that never block a cooperative thread; the backup reads `fd` on its own blocking path.
// SourceStream is Sendable: finish() or cancel() may come from any task, once.
// Never: a producer left running after cancel(); a dump that ended badly reported as complete; a password on a
// command line.
import Foundation
import Synchronization
import TidemarkCore
import TidemarkOperations
import TidemarkSystem

/// A source that could not even start (a tool missing, a copy that failed): the cycle reports it and goes on.
public struct SourceFailure: Error {
  public var message: String
}

/// One stream-like source being read. `fd` is what the backup reads; after the backup, `finish()` says whether the
/// source produced all of its data (a dump that failed half-way must not be kept).
public final class SourceStream: Sendable {
  public let fd: Int32
  /// How the source is named in messages: `postgres app`, `source command \`…\``.
  public let what: String
  /// The producer, for a source that streams from a child (command, postgres); nil for a finished copy.
  private let child: ChildStream?
  /// The copy's descriptor is ours to close; a child's read end is its ChildStream's.
  private let copyOpen = Mutex(true)

  private init(fd: Int32, what: String, child: ChildStream? = nil) {
    self.fd = fd
    self.what = what
    self.child = child
  }

  deinit { closeCopy() }

  private func closeCopy() {
    guard child == nil,
      copyOpen.withLock({ was in
        defer { was = false }; return was
      })
    else { return }
    close(fd)
  }

  /// Removes what an earlier cycle that died left in `tmp` (copies, stderr files). Only under the cycle lock: the
  /// directory is the cycles' own.
  public static func clean(tmp: String) {
    guard let names = try? FileManager.default.contentsOfDirectory(atPath: tmp) else { return }
    for n in names { unlink(tmp + "/" + n) }
  }

  /// Starts the source. `tmp` is a private directory (0700) in the state directory, for copies and stderr.
  public static func start(_ kind: EngineConfig.SourceKind, tmp: String) async throws -> SourceStream {
    try Sys.mkdirAll(BytePath(tmp), 0o700)
    _ = chmod(tmp, 0o700)
    switch kind {
    case .path:
      preconditionFailure("path sources are backed up together, not streamed")
    case .command(let command, _):
      // Its standard error stays the cycle's (as it always was for commands).
      return try await streaming("/bin/sh", ["-c", command], what: "source command `\(command)`", errFile: nil)
    case .postgres(let p):
      // pg_dump reads the whole database in one repeatable-read transaction: consistent while the service runs.
      // Custom format (-Fc) goes to standard output and straight into the snapshot: no temporary file.
      var args = ["-Fc", "--no-password"]
      if let h = p.host { args += ["--host", h] }
      if let port = p.port { args += ["--port", String(port)] }
      if let u = p.user { args += ["--username", u] }
      args += p.options + ["--dbname=" + p.database]
      // A connection string may hold a password: messages name the stored file instead.
      let what = "postgres \(p.database.contains("=") ? p.filename : p.database)"
      return try await streaming(
        try tool("pg_dump", "postgresql-client", what: what), args, what: what,
        errFile: tmp + "/pg_dump-\(getpid()).err")
    case .sqlite(let s):
      return try await sqlite(s, tmp: tmp)
    case .redis(let r):
      return try await redis(r, tmp: tmp)
    }
  }

  /// After the backup has read `fd` to its end: nil when the source is complete, else what went wrong.
  public func finish() async -> String? {
    defer { closeCopy() }
    guard let child else { return nil }
    let r: ChildResult
    do {
      r = try await child.finish()
    } catch {
      await child.cancel()
      return "\(what): \(error)"
    }
    let err = r.tailSummary
    switch r.termination {
    case .signaled(let signal):
      return "\(what) was killed by signal \(signal)" + (err.isEmpty ? "" : ": \(err)")
    case .exited(let code) where code != 0:
      return "\(what) exited with \(code)" + (err.isEmpty ? "" : ": \(err)")
    case .exited:
      return nil
    }
  }

  /// The backup failed: stop the producer (SIGTERM, SIGKILL after a grace period) and wait until it is gone.
  public func cancel() async {
    closeCopy()
    await child?.cancel()
  }

  // MARK: Producers

  /// A process whose standard output is the stream; its standard error goes to `errFile` (or stays the cycle's).
  private static func streaming(
    _ exe: String, _ args: [String], what: String, errFile: String?, env: [String: String] = [:]
  ) async throws -> SourceStream {
    let child: ChildStream
    do {
      child = try await ChildStream.start(
        exe, arguments: args, environment: env, standardError: errFile.map { .file($0) } ?? .inherit)
    } catch let e as ChildProcessError {
      throw SourceFailure(message: "\(what): \(e.message)")
    }
    return SourceStream(fd: child.fd, what: what, child: child)
  }

  /// Runs a tool to its end; throws its exit code and the end of its output when it fails.
  private static func run(_ exe: String, _ args: [String], what: String, env: [String: String] = [:]) async throws {
    let r: ChildResult
    do {
      r = try await ChildProcess.run(exe, arguments: args, environment: env)
    } catch let e as ChildProcessError {
      throw SourceFailure(message: "\(what): \(e.message)")
    }
    guard r.succeeded else {
      let err = r.tailSummary
      throw SourceFailure(
        message: "\(what): \(URL(fileURLWithPath: exe).lastPathComponent) failed (\(r.termination))"
          + (err.isEmpty ? "" : ": \(err)"))
    }
  }

  /// A finished copy in the private directory, opened and unlinked at once: it goes away with the descriptor
  /// whatever happens next.
  private static func openAndUnlink(_ path: String, what: String) throws -> SourceStream {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    let e = errno
    unlink(path)
    guard fd >= 0 else { throw SourceFailure(message: "\(what): cannot open \(path): \(String(cString: strerror(e)))") }
    return SourceStream(fd: fd, what: what)
  }

  /// SQLite: the live file is never read directly (a plain copy taken during a write can be torn). `VACUUM INTO`
  /// writes a consistent copy from one read transaction: with the default rollback journal, writers wait (their busy
  /// timeout) until it is done; in WAL mode they are not held up at all. The online backup API (`.backup`) would
  /// restart its copy after every write from another connection, and so might never finish under steady writes.
  private static func sqlite(_ s: EngineConfig.SQLiteSource, tmp: String) async throws -> SourceStream {
    let what = "sqlite \(s.path)"
    // sqlite3 would create an empty database where none is, and that would be backed up as if all were well.
    var st = stat()
    guard stat(s.path, &st) == 0 else {
      throw SourceFailure(message: "\(what): \(String(cString: strerror(errno)))")
    }
    guard st.st_mode & S_IFMT == S_IFREG else { throw SourceFailure(message: "\(what): not a regular file") }
    let exe = try tool("sqlite3", "sqlite3", what: what)
    let copy = tmp + "/sqlite-\(getpid())-\(s.filename)"
    unlink(copy)  // VACUUM INTO needs a new (or empty) file
    defer { unlink(copy) }
    try await run(
      exe,
      [
        "-bail", "-batch", "-cmd", ".timeout 30000", s.path,
        "VACUUM INTO '\(copy.replacingOccurrences(of: "'", with: "''"))'",
      ],
      what: what)
    return try openAndUnlink(copy, what: what)
  }

  /// Redis: `redis-cli --rdb FILE` rather than BGSAVE and waiting for LASTSAVE to change. --rdb asks the server for
  /// a full resynchronisation, as a new replica would: the server forks and produces a fresh point-in-time RDB
  /// (consistent, like BGSAVE) and sends it over the connection. So it works for a remote server or a socket
  /// without access to the server's `dir`, and it cannot pick up a dump.rdb that another BGSAVE (or a
  /// `CONFIG SET dir`) is replacing at the same moment. The RDB goes to a private file first, not to standard
  /// output: with diskless replication, `--rdb -` leaves the 40-byte end marker at the end of the stream, which only
  /// a file can be truncated to drop. It needs the SYNC command (ACL users: +sync or +@admin).
  private static func redis(_ r: EngineConfig.RedisSource, tmp: String) async throws -> SourceStream {
    let what = "redis \(r.address)"
    let exe = try tool("redis-cli", "redis-tools", what: what)
    var env: [String: String] = [:]
    if let f = r.passwordFile {
      guard let data = FileManager.default.contents(atPath: f) else {
        throw SourceFailure(message: "\(what): cannot read the password file \(f)")
      }
      // The password goes in the environment, never on the command line (where ps shows it).
      env["REDISCLI_AUTH"] = String(
        String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).first ?? ""
      ).trimmingCharacters(in: CharacterSet(charactersIn: "\r"))
    }
    let e = r.endpoint
    var args = e.socket.map { ["-s", $0] } ?? ["-h", e.host, "-p", String(e.port)]
    let copy = tmp + "/redis-\(getpid())-\(r.filename)"
    unlink(copy)
    defer { unlink(copy) }
    args += ["--rdb", copy]
    try await run(exe, args, what: what, env: env)
    return try openAndUnlink(copy, what: what)
  }

  /// The executable's path on PATH.
  private static func tool(_ name: String, _ package: String, what: String) throws -> String {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
    for dir in path.split(separator: ":") where !dir.isEmpty {
      let p = dir + "/" + name
      if access(p, X_OK) == 0 { return p }
    }
    throw SourceFailure(message: "\(what): \(name) is not installed (not on PATH); install \(package)")
  }

}
