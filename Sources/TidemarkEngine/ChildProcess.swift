// Child processes for the whole engine (hooks, alert commands, drill verify commands, password commands, database
// and command sources), all through swift-subprocess: `ChildProcess.shell`/`run` run a child to its end and keep the
// last lines of its output; `ChildStream` starts a producer whose standard output is a pipe the caller reads.
//
// Concurrency contract: nothing here blocks a thread of the cooperative pool. swift-subprocess spawns, learns of
// exits (pidfd + epoll on its own thread) and reads pipes (epoll) without blocking; every wait is an `await`. All
// types are Sendable; a ChildStream may be finished or cancelled from any task. Each child runs in a process group
// of its own so that a timeout or a cancellation reaches what it started too (as timeout(1) does).
//
// Never: Foundation.Process, waitpid or waitUntilExit; a child left running after its call has returned or thrown
// (timeout, cancellation and a dropped ChildStream all terminate it: SIGTERM to its group, SIGKILL after the grace
// period); buffering a child's output without a bound.
internal import Subprocess
import Synchronization
import TidemarkSystem

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// How a child ended, and what it said last.
public struct ChildResult: Sendable, Equatable {
  public enum Termination: Sendable, Hashable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)

    /// `exit 3`, `signal 9`: for messages such as "hook failed (exit 3)".
    public var description: String {
      switch self {
      case .exited(let code): return "exit \(code)"
      case .signaled(let signal): return "signal \(signal)"
      }
    }
  }

  public var pid: Int32
  public var termination: Termination
  /// The child outlived its timeout and was terminated.
  public var timedOut: Bool
  /// The last non-empty lines of its output, trimmed, oldest first: standard output and standard error combined, or
  /// standard error alone when standard output is captured or streamed.
  public var tail: [String]
  /// All of standard output, for the `captureStdout` forms only.
  public var stdout: [UInt8]

  public init(
    pid: Int32, termination: Termination, timedOut: Bool = false, tail: [String] = [], stdout: [UInt8] = []
  ) {
    self.pid = pid
    self.termination = termination
    self.timedOut = timedOut
    self.tail = tail
    self.stdout = stdout
  }

  /// Exited with 0 and in time.
  public var succeeded: Bool { termination == .exited(0) && !timedOut }

  /// The tail on one line (`a / b / c`, at most 400 characters): what error messages quote.
  public var tailSummary: String { String(tail.joined(separator: " / ").suffix(400)) }
}

/// A child that could not be run, or whose output broke a limit.
public struct ChildProcessError: Error, Sendable, CustomStringConvertible {
  public enum Kind: Sendable, Hashable {
    /// Not started: no such executable, no permission, no resources.
    case cannotRun
    /// Standard output went over the `captureStdout` limit; the child was terminated.
    case outputTooLarge
    /// Started, but reading from or writing to it failed.
    case failed
  }

  public var kind: Kind
  public var message: String

  public init(_ kind: Kind, _ message: String) {
    self.kind = kind
    self.message = message
  }

  public var description: String { message }
}

/// Runs child processes to their end. Every form terminates the child when `timeout` passes (reported as
/// `timedOut`) and when the calling task is cancelled (then it throws CancellationError once the child is gone).
public enum ChildProcess {
  /// From SIGTERM to SIGKILL: long enough for a hook to clean up, short enough not to hold a cycle.
  public static let defaultGrace: Duration = .seconds(5)

  /// `/bin/sh -c command`. `environment` is added to the inherited one; `input`, when given, is its standard input
  /// (else /dev/null); the result keeps the last `outputTail` lines of standard output and error combined.
  public static func shell(
    _ command: String, environment: [String: String] = [:], input: [UInt8]? = nil, timeout: Duration? = nil,
    outputTail: Int = 3, grace: Duration = defaultGrace
  ) async throws -> ChildResult {
    try await execute(
      "/bin/sh", ["-c", command], environment, input, timeout, grace, .combinedTail(lines: outputTail))
  }

  /// `/bin/sh -c command` whose whole standard output is wanted (a password command): up to `captureStdout` bytes
  /// in `stdout`, more throws `outputTooLarge`; the result's tail is standard error's.
  public static func shell(
    _ command: String, environment: [String: String] = [:], input: [UInt8]? = nil, timeout: Duration? = nil,
    captureStdout limit: Int, errorTail: Int = 3, grace: Duration = defaultGrace
  ) async throws -> ChildResult {
    try await execute(
      "/bin/sh", ["-c", command], environment, input, timeout, grace, .stdout(limit: limit, errorTail: errorTail))
  }

  /// An executable (an absolute path: no PATH search here) with its arguments; otherwise as `shell`.
  public static func run(
    _ executable: String, arguments: [String] = [], environment: [String: String] = [:], input: [UInt8]? = nil,
    timeout: Duration? = nil, outputTail: Int = 3, grace: Duration = defaultGrace
  ) async throws -> ChildResult {
    try await execute(executable, arguments, environment, input, timeout, grace, .combinedTail(lines: outputTail))
  }

  /// An executable with its arguments whose whole standard output is wanted; otherwise as `shell(captureStdout:)`.
  public static func run(
    _ executable: String, arguments: [String] = [], environment: [String: String] = [:], input: [UInt8]? = nil,
    timeout: Duration? = nil, captureStdout limit: Int, errorTail: Int = 3, grace: Duration = defaultGrace
  ) async throws -> ChildResult {
    try await execute(
      executable, arguments, environment, input, timeout, grace, .stdout(limit: limit, errorTail: errorTail))
  }

  /// The last `count` non-empty lines of `bytes`, trimmed (the same reading for pipes and stderr files).
  public static func lastLines(_ bytes: some Collection<UInt8>, count: Int) -> [String] {
    guard count > 0 else { return [] }
    var lines: [String] = []
    for line in bytes.split(separator: 10).reversed() {
      let text = String(decoding: line, as: UTF8.self).trimmingWhitespace()
      if text.isEmpty { continue }
      lines.append(text)
      if lines.count == count { break }
    }
    return lines.reversed()
  }

  // MARK: Internals

  fileprivate enum Capture {
    case combinedTail(lines: Int)
    case stdout(limit: Int, errorTail: Int)
  }

  /// What the body of a run hands back: output kept, and whether the timer fired.
  private struct Collected: Sendable {
    var tail: [UInt8] = []
    var stdout: [UInt8] = []
    var timedOut = false
  }

  /// The teardown for timeouts, cancellation and dropped streams: the whole group, SIGKILL after `grace`.
  fileprivate static func teardown(_ grace: Duration) -> [TeardownStep] {
    [.gracefulShutDown(toProcessGroup: true, allowedDurationToNextStep: grace)]
  }

  fileprivate static func configuration(
    _ executable: String, _ arguments: [String], _ environment: [String: String], grace: Duration
  ) -> Configuration {
    var options = PlatformOptions()
    // A group of its own (pgid = its pid): teardown signals reach the grandchildren a shell starts.
    options.processGroupID = 0
    options.teardownSequence = teardown(grace)
    var added: [Environment.Key: String?] = [:]
    for (k, v) in environment { added[Environment.Key(stringLiteral: k)] = v }
    return Configuration(
      executable: .path(.init(stringLiteral: executable)), arguments: Arguments(arguments),
      environment: added.isEmpty ? .inherit : .inherit.updating(added), platformOptions: options)
  }

  private static func execute(
    _ executable: String, _ arguments: [String], _ environment: [String: String], _ input: [UInt8]?,
    _ timeout: Duration?, _ grace: Duration, _ capture: Capture
  ) async throws -> ChildResult {
    let config = configuration(executable, arguments, environment, grace: grace)
    let (pid, status, collected): (Int32, TerminationStatus, Collected)
    do {
      if let input {
        // From an in-memory file, not a pipe: a child that exits without reading it all would make a pipe write
        // raise SIGPIPE in this process (swift-subprocess does not ignore it), and a file never blocks the writer.
        let fd: Int32
        do { fd = try Sys.memoryFile("tidemark-child-input", input) } catch {
          throw ChildProcessError(.cannotRun, "cannot run \(executable): its input: \(error)")
        }
        let stdin = FileDescriptorInput.fileDescriptor(.init(rawValue: fd), closeAfterSpawningProcess: true)
        (pid, status, collected) = try await collect(config, stdin, timeout, grace, capture)
      } else {
        (pid, status, collected) = try await collect(config, .none, timeout, grace, capture)
      }
    } catch let e as SubprocessError {
      // A read cut short by the teardown of a cancelled run is the cancellation, not a failure of the child.
      try Task.checkCancellation()
      throw ChildProcessError(e.notStarted ? .cannotRun : .failed, "cannot run \(executable): \(e)")
    }
    // The child is gone (swift-subprocess reaps it before returning); a cancelled caller hears of it now.
    try Task.checkCancellation()
    let tailLines: Int
    switch capture {
    case .combinedTail(let lines): tailLines = lines
    case .stdout(_, let errorTail): tailLines = errorTail
    }
    return ChildResult(
      pid: pid, termination: status.childTermination, timedOut: collected.timedOut,
      tail: lastLines(collected.tail, count: tailLines), stdout: collected.stdout)
  }

  private static func collect<Input: InputProtocol>(
    _ config: Configuration, _ input: Input, _ timeout: Duration?, _ grace: Duration, _ capture: Capture
  ) async throws -> (Int32, TerminationStatus, Collected) {
    switch capture {
    case .combinedTail:
      let r = try await Subprocess.run(config, input: input, output: .sequence, error: .combinedWithOutput) {
        execution in
        try await withThrowingTaskGroup(of: Bool.self) { group in
          if let timeout { group.addTask { await expire(execution, after: timeout, grace: grace) } }
          var tail = TailBuffer()
          for try await buffer in execution.standardOutput { buffer.withUnsafeBytes { tail.append($0) } }
          group.cancelAll()
          var c = Collected(tail: tail.bytes)
          for try await fired in group where fired { c.timedOut = true }
          return c
        }
      }
      return (r.processIdentifier.value, r.terminationStatus, r.closureResult)
    case .stdout(let limit, _):
      let r = try await Subprocess.run(config, input: input, output: .sequence, error: .sequence) { execution in
        try await withThrowingTaskGroup(of: Part.self) { group in
          group.addTask {
            var tail = TailBuffer()
            for try await buffer in execution.standardError { buffer.withUnsafeBytes { tail.append($0) } }
            return .errorTail(tail.bytes)
          }
          if let timeout { group.addTask { .expired(await expire(execution, after: timeout, grace: grace)) } }
          var c = Collected()
          for try await buffer in execution.standardOutput {
            guard c.stdout.count + buffer.count <= limit else {
              // Terminated before throwing: the standard error reader ends only when the child is gone.
              await execution.teardown(using: teardown(grace))
              throw ChildProcessError(.outputTooLarge, "standard output is over \(limit) bytes; the child was stopped")
            }
            buffer.withUnsafeBytes { c.stdout.append(contentsOf: $0) }
          }
          for try await part in group {
            switch part {
            case .errorTail(let bytes):
              c.tail = bytes
              group.cancelAll()  // standard error is done: the timer is no longer needed
            case .expired(let fired): c.timedOut = c.timedOut || fired
            }
          }
          return c
        }
      }
      return (r.processIdentifier.value, r.terminationStatus, r.closureResult)
    }
  }

  private enum Part: Sendable {
    case errorTail([UInt8])
    case expired(Bool)
  }

  /// The timer of a run: true when it fired and the child was terminated, false when cancelled first.
  private static func expire<I, O, E>(
    _ execution: Execution<I, O, E>, after timeout: Duration, grace: Duration
  ) async -> Bool {
    do { try await Task.sleep(for: timeout) } catch { return false }
    await execution.teardown(using: teardown(grace))
    return true
  }
}

/// The end of a child's output, bounded: only the last lines are ever reported, so earlier bytes are dropped.
private struct TailBuffer {
  static let keep = 16 * 1024
  var bytes: [UInt8] = []

  mutating func append(_ chunk: UnsafeRawBufferPointer) {
    bytes.append(contentsOf: chunk)
    // Trimmed in batches: removing from the front on every chunk would copy the buffer each time.
    if bytes.count > 2 * Self.keep { bytes.removeFirst(bytes.count - Self.keep) }
  }
}

/// A child whose standard output goes into a pipe that the caller reads from `fd` (with its own blocking reads, on
/// its own thread: this type never reads it). Start it, read `fd` to its end, then `finish()`; or `cancel()`.
public final class ChildStream: Sendable {
  /// Where the child's standard error goes.
  public enum StandardError: Sendable, Hashable {
    /// The caller's own standard error.
    case inherit
    /// A new file (mode 0600, replacing any file of that name), removed by `finish()`/`cancel()`; its last lines
    /// become the result's tail.
    case file(String)
    case discard
  }

  /// The read end of the child's standard output (close-on-exec). Owned here: closed by `finish()`, `cancel()` or
  /// when the stream goes away.
  public let fd: Int32
  public let pid: Int32
  private let task: Task<ChildResult, any Error>
  private let errorFile: (path: String, fd: Int32)?
  private let errorTail: Int
  private let descriptorsOpen = Mutex(true)

  private init(
    fd: Int32, pid: Int32, task: Task<ChildResult, any Error>, errorFile: (String, Int32)?, errorTail: Int
  ) {
    self.fd = fd
    self.pid = pid
    self.task = task
    self.errorFile = errorFile
    self.errorTail = errorTail
  }

  deinit {
    // Dropped without finish() or cancel(): nobody will read the rest, so the child is stopped.
    task.cancel()
    closeDescriptors()
  }

  /// Starts `executable` (an absolute path) with `arguments`; standard input is /dev/null. Returns once it runs;
  /// throws ChildProcessError(.cannotRun) when it cannot be started.
  public static func start(
    _ executable: String, arguments: [String] = [], environment: [String: String] = [:],
    standardError: StandardError = .inherit, errorTail: Int = 3, grace: Duration = ChildProcess.defaultGrace
  ) async throws -> ChildStream {
    let (readEnd, writeEnd): (Int32, Int32)
    do { (readEnd, writeEnd) = try Sys.pipe() } catch {
      throw ChildProcessError(.cannotRun, "cannot run \(executable): \(error)")
    }
    // The child gets its own copy of the error descriptor (closed after the spawn); this one stays for the tail.
    var errorFile: (String, Int32)? = nil
    let childError: Int32
    switch standardError {
    case .inherit:
      childError = dup(2)
    case .discard:
      childError = open("/dev/null", O_WRONLY | O_CLOEXEC)
    case .file(let path):
      unlink(path)
      let f = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
      if f >= 0 { errorFile = (path, f) }
      childError = f >= 0 ? dup(f) : -1
    }
    guard childError >= 0 else {
      let e = String(cString: strerror(errno))
      close(readEnd)
      close(writeEnd)
      if let (path, f) = errorFile {
        close(f)
        unlink(path)
      }
      throw ChildProcessError(.cannotRun, "cannot run \(executable): standard error: \(e)")
    }
    let config = ChildProcess.configuration(executable, arguments, environment, grace: grace)
    let (started, announce) = AsyncThrowingStream.makeStream(of: Int32.self)
    let task = Task { () async throws -> ChildResult in
      do {
        let r = try await Subprocess.run(
          config, input: .none, output: .fileDescriptor(.init(rawValue: writeEnd), closeAfterSpawningProcess: true),
          error: .fileDescriptor(.init(rawValue: childError), closeAfterSpawningProcess: true)
        ) { execution in
          announce.yield(execution.processIdentifier.value)
          announce.finish()
        }
        // swift-subprocess waits for the exit (without blocking a thread) after the body returns, and reaps it.
        return ChildResult(pid: r.processIdentifier.value, termination: r.terminationStatus.childTermination)
      } catch {
        announce.finish(throwing: error)
        throw error
      }
    }
    do {
      for try await pid in started {
        return ChildStream(fd: readEnd, pid: pid, task: task, errorFile: errorFile, errorTail: errorTail)
      }
      // The stream ended without a pid: this task was cancelled while the child was being started.
      task.cancel()
      _ = await task.result
      throw CancellationError()
    } catch {
      close(readEnd)
      if let (path, f) = errorFile {
        close(f)
        unlink(path)
      }
      if let e = error as? SubprocessError {
        throw ChildProcessError(e.notStarted ? .cannotRun : .failed, "cannot run \(executable): \(e)")
      }
      throw error
    }
  }

  /// After the caller has read `fd` to its end: waits for the exit. The tail is the standard error file's.
  /// Cancelling the calling task terminates the child (then this throws CancellationError).
  public func finish() async throws -> ChildResult {
    let task = self.task
    var result = try await withTaskCancellationHandler {
      try await task.value
    } onCancel: {
      task.cancel()
    }
    result.tail = errorLines()
    closeDescriptors()
    try Task.checkCancellation()
    return result
  }

  /// Stops the child (SIGTERM to its group, SIGKILL after the grace period) and waits until it is gone.
  public func cancel() async {
    // The read end first: a child blocked writing into a full pipe gets EPIPE and need not wait for the signal.
    closeDescriptors()
    task.cancel()
    _ = await task.result
  }

  private func errorLines() -> [String] {
    guard let (_, f) = errorFile else { return [] }
    // Only the end of the file: the tail is all that is ever reported.
    let size = lseek(f, 0, SEEK_END)
    guard size > 0 else { return [] }
    let start = max(0, Int(size) - 16 * 1024)
    var bytes = [UInt8](repeating: 0, count: Int(size) - start)
    let n = bytes.withUnsafeMutableBytes { pread(f, $0.baseAddress, $0.count, off_t(start)) }
    return ChildProcess.lastLines(bytes.prefix(max(0, n)), count: errorTail)
  }

  private func closeDescriptors() {
    guard
      descriptorsOpen.withLock({ was in
        defer { was = false }; return was
      })
    else { return }
    close(fd)
    if let (path, f) = errorFile {
      close(f)
      unlink(path)
    }
  }
}

extension SubprocessError {
  /// Failures of the spawn itself, as opposed to reading from or watching a child that ran.
  fileprivate var notStarted: Bool {
    [.spawnFailed, .executableNotFound, .failedToChangeWorkingDirectory].contains(code)
  }
}

extension TerminationStatus {
  fileprivate var childTermination: ChildResult.Termination {
    switch self {
    case .exited(let code): return .exited(code)
    case .signaled(let signal): return .signaled(signal)
    }
  }
}

extension String {
  fileprivate func trimmingWhitespace() -> String {
    let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\r" }
    guard let first = firstIndex(where: { !isSpace($0) }), let last = lastIndex(where: { !isSpace($0) }) else {
      return ""
    }
    return String(self[first...last])
  }
}
