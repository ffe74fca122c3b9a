// Shell commands the engine runs (hooks, alert commands, drill verify commands, password commands): `/bin/sh -c`,
// with extra environment, optional standard input, an optional timeout, and the last lines of their output.
// Waiting never blocks a thread of the cooperative pool.
import Foundation

enum Shell {
  struct Result: Sendable {
    /// The exit status, or the signal's number when `signalled`.
    var status: Int32
    var signalled = false
    var timedOut = false
    /// Standard output (up to 1 MiB), when asked for.
    var stdout: [UInt8] = []
    /// The last lines of the combined output (or of standard error when standard output was captured).
    var tail: String = ""
    var ok: Bool { status == 0 && !signalled && !timedOut }
  }

  static func run(
    _ command: String, environment: [String: String] = [:], input: [UInt8]? = nil, timeout: Duration? = nil,
    captureStdout: Bool = false, tailLines: Int = 3
  ) async throws -> Result {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/sh")
    p.arguments = ["-c", command]
    p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    let outFile = NSTemporaryDirectory() + "tidemark-sh-\(UUID().uuidString)"
    FileManager.default.createFile(atPath: outFile, contents: nil)
    defer { unlink(outFile) }
    let errFile = outFile + ".err"
    FileManager.default.createFile(atPath: errFile, contents: nil)
    defer { unlink(errFile) }
    let out = try FileHandle(forWritingTo: URL(fileURLWithPath: outFile))
    let err = captureStdout ? try FileHandle(forWritingTo: URL(fileURLWithPath: errFile)) : out
    defer {
      try? out.close()
      if captureStdout { try? err.close() }
    }
    p.standardOutput = out
    p.standardError = err
    let pipe = input.map { _ in Pipe() }
    p.standardInput = pipe ?? FileHandle.nullDevice
    let exited = AsyncStream<Void>.makeStream()
    p.terminationHandler = { _ in
      exited.continuation.yield()
      exited.continuation.finish()
    }
    try p.run()
    if let pipe, let input {
      // The child may not read it all (it may exit first): a broken pipe is not an error here.
      let w = pipe.fileHandleForWriting
      signal(SIGPIPE, SIG_IGN)
      try? w.write(contentsOf: Data(input))
      try? w.close()
    }
    var timedOut = false
    await withTaskCancellationHandler {
      await withTaskGroup(of: Bool.self) { g in
        g.addTask {
          for await _ in exited.stream {}
          return false
        }
        if let timeout {
          g.addTask {
            try? await Task.sleep(for: timeout)
            return !Task.isCancelled
          }
        }
        if let first = await g.next(), first {
          // The timeout won: stop the child, then wait for its exit (the other task still reads the stream).
          timedOut = true
          p.terminate()
          _ = await g.next()
        } else {
          g.cancelAll()
        }
      }
    } onCancel: {
      p.terminate()
    }
    var r = Result(status: p.terminationStatus)
    r.signalled = p.terminationReason == .uncaughtSignal
    r.timedOut = timedOut
    let outBytes = Array((FileManager.default.contents(atPath: outFile) ?? Data()).prefix(1 << 20))
    let tailSource = captureStdout ? Array(FileManager.default.contents(atPath: errFile) ?? Data()) : outBytes
    if captureStdout { r.stdout = outBytes }
    r.tail = String(decoding: tailSource, as: UTF8.self).split(separator: "\n").suffix(tailLines).joined(
      separator: " / ")
    return r
  }
}
