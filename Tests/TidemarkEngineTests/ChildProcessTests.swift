// ChildProcess and ChildStream against real processes (/bin/sh, sleep, head): exit status and output tail,
// environment, standard input, timeouts, cancellation, a streamed 5 MB and concurrent children.
// Concurrency contract: the tests await children like the engine does; the one blocking read (of a stream's pipe)
// runs on a thread of its own, never on the cooperative pool.
// Never: a child left running after a test (every test waits for its children or checks they are gone).
import Foundation
import Testing
import TidemarkEngine

@Suite struct ChildProcessTests {
  @Test func exitStatusAndOutputTail() async throws {
    let r = try await ChildProcess.shell("echo one; echo two >&2; echo '  three  '; echo; echo four; exit 7")
    #expect(r.termination == .exited(7))
    #expect(!r.succeeded && !r.timedOut)
    #expect(r.tail == ["two", "three", "four"])
    #expect(r.tailSummary == "two / three / four")
    let ok = try await ChildProcess.shell("true")
    #expect(ok.succeeded && ok.tail.isEmpty)
  }

  @Test func environmentIsAddedToTheInheritedOne() async throws {
    let r = try await ChildProcess.shell(
      "echo \"$TIDEMARK_TEST_A\"; test -n \"$PATH\" && echo path", environment: ["TIDEMARK_TEST_A": "a b"])
    #expect(r.succeeded)
    #expect(r.tail == ["a b", "path"])
  }

  @Test func standardInputIsDelivered() async throws {
    let input = [UInt8](repeating: UInt8(ascii: "x"), count: 300_000) + Array("\nlast line\n".utf8)
    let r = try await ChildProcess.shell("wc -c; echo end", input: input)
    #expect(r.succeeded)
    #expect(r.tail == ["\(input.count)", "end"])
    // A child that ignores its input must not take this process down (no pipe, so no SIGPIPE).
    let ignoring = try await ChildProcess.shell("exit 0", input: [UInt8](repeating: 0, count: 4 << 20))
    #expect(ignoring.succeeded)
  }

  @Test func capturedStandardOutput() async throws {
    let r = try await ChildProcess.shell("printf 'secret\\n'; echo warning >&2", captureStdout: 1024)
    #expect(r.succeeded)
    #expect(r.stdout == Array("secret\n".utf8))
    #expect(r.tail == ["warning"])
    await #expect {
      try await ChildProcess.shell("head -c 1000000 /dev/zero; sleep 30", captureStdout: 1000)
    } throws: { ($0 as? ChildProcessError)?.kind == .outputTooLarge }
  }

  @Test func missingExecutableCannotRun() async throws {
    await #expect {
      try await ChildProcess.run("/nonexistent/tool")
    } throws: { ($0 as? ChildProcessError)?.kind == .cannotRun }
  }

  @Test func timeoutTerminatesTheChildAndItsGroup() async throws {
    let dir = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let clock = ContinuousClock()
    let started = clock.now
    // The shell waits for a background sleep: the timeout must reach that grandchild too.
    let r = try await ChildProcess.shell(
      "sleep 30 & echo $! > \(dir)/pid; wait", timeout: .milliseconds(500))
    // Generous: only "stopped near the timeout, not after the 30 s sleep" matters on a loaded machine.
    #expect(clock.now - started < .seconds(10))
    #expect(r.timedOut && !r.succeeded)
    #expect(r.termination == .signaled(SIGTERM))
    let grandchild = try #require(Int32(try String(contentsOfFile: dir + "/pid", encoding: .utf8).trimmed))
    #expect(await gone(grandchild))
  }

  @Test func cancellingTheTaskKillsTheChild() async throws {
    let dir = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let task = Task {
      try await ChildProcess.shell("echo $$ > \(dir)/pid; sleep 2; touch \(dir)/marker")
    }
    var pid: Int32? = nil
    for _ in 0..<250 where pid == nil {
      try await Task.sleep(for: .milliseconds(20))
      pid = (try? String(contentsOfFile: dir + "/pid", encoding: .utf8)).flatMap { Int32($0.trimmed) }
    }
    let child = try #require(pid)
    task.cancel()
    await #expect(throws: CancellationError.self) { try await task.value }
    #expect(kill(child, 0) != 0)  // already reaped when the call returned
    try await Task.sleep(for: .milliseconds(2500))
    #expect(!FileManager.default.fileExists(atPath: dir + "/marker"))
  }

  @Test func streamDeliversEveryByteAndTheExitStatus() async throws {
    let stream = try await ChildStream.start(
      "/bin/sh", arguments: ["-c", "head -c 5000000 /dev/urandom; exit 3"], standardError: .discard)
    let count = try await readToEnd(stream.fd)
    let r = try await stream.finish()
    #expect(count == 5_000_000)
    #expect(r.termination == .exited(3))
  }

  @Test func streamStandardErrorFileGivesTheTail() async throws {
    let dir = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let stream = try await ChildStream.start(
      "/bin/sh", arguments: ["-c", "echo data; echo first >&2; echo 'dump failed' >&2; exit 1"],
      standardError: .file(dir + "/err"))
    #expect(try await readToEnd(stream.fd) == 5)
    let r = try await stream.finish()
    #expect(r.termination == .exited(1))
    #expect(r.tail == ["first", "dump failed"])
    #expect(!FileManager.default.fileExists(atPath: dir + "/err"))
  }

  @Test func streamCancelStopsTheProducer() async throws {
    let stream = try await ChildStream.start(
      "/bin/sh", arguments: ["-c", "trap '' TERM; while :; do sleep 1; done"], grace: .seconds(1))
    let clock = ContinuousClock()
    let started = clock.now
    // SIGTERM is ignored (by the shell and the sleeps it starts); SIGKILL follows after the grace period.
    await stream.cancel()
    #expect(clock.now - started < .seconds(10))
    #expect(kill(stream.pid, 0) != 0)
  }

  @Test func streamThatCannotStart() async throws {
    await #expect {
      try await ChildStream.start("/nonexistent/pg_dump")
    } throws: { ($0 as? ChildProcessError)?.kind == .cannotRun }
  }

  @Test func concurrentShellsDoNotStarveThePool() async throws {
    // Eight tasks on the cooperative pool (two threads on a two-core machine), each awaiting a one-second child:
    // a blocking wait would serialise them (four seconds or more); awaiting, they take about one.
    let clock = ContinuousClock()
    let started = clock.now
    let results = try await withThrowingTaskGroup(of: ChildResult.self) { group in
      for i in 0..<8 { group.addTask { try await ChildProcess.shell("sleep 1; echo \(i)") } }
      return try await group.reduce(into: []) { $0.append($1) }
    }
    #expect(clock.now - started < .seconds(6))  // one after another: 8 s
    #expect(results.count == 8 && results.allSatisfy(\.succeeded))
    let tails: Set<String> = Set(results.flatMap { $0.tail })
    let expected: Set<String> = Set((0..<8).map { String($0) })
    #expect(tails == expected)
  }
}

/// Reads `fd` to its end on a thread of its own (a blocking read, as the backup does); the byte count.
private func readToEnd(_ fd: Int32) async throws -> Int {
  try await withCheckedThrowingContinuation { (c: CheckedContinuation<Int, any Error>) in
    Thread.detachNewThread {
      var total = 0
      var buffer = [UInt8](repeating: 0, count: 1 << 16)
      while true {
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n < 0 { return c.resume(throwing: POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)) }
        if n == 0 { return c.resume(returning: total) }
        total += n
      }
    }
  }
}

/// The process has exited (a zombie counts: nobody may be reaping orphans in a container); waits up to 2 s.
private func gone(_ pid: Int32) async -> Bool {
  for _ in 0..<100 {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return true }
    // The state follows the command name in parentheses, which may itself hold spaces.
    if let close = stat.lastIndex(of: ")"), stat[stat.index(after: close)...].trimmed.hasPrefix("Z") { return true }
    try? await Task.sleep(for: .milliseconds(20))
  }
  return false
}

private func temporaryDirectory() throws -> String {
  let dir = NSTemporaryDirectory() + "tidemark-child-\(UUID().uuidString)"
  try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
  return dir
}

extension String {
  fileprivate var trimmed: String { trimmingCharacters(in: .whitespacesAndNewlines) }
}

extension Substring {
  fileprivate var trimmed: String { trimmingCharacters(in: .whitespacesAndNewlines) }
}
