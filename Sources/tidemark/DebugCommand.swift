import ArgumentParser
import Foundation
import TidemarkCore
import TidemarkSystem

/// Tools for measuring and diagnosing; not part of the everyday interface.
struct DebugCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "debug", abstract: "Measuring and diagnosing tools.", shouldDisplay: false,
    subcommands: [StageCosts.self])

  struct StageCosts: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "stage-costs",
      abstract: "What a backup's CPU-bound stages cost on one core of this machine, over the given files.",
      discussion: """
        Reads every regular file under PATH (from the page cache when it is warm), then chunks, hashes, \
        compresses and seals it as a backup does, timing each stage on its own on one core. Prints one JSON \
        object: files, chunks, bytes, stored_bytes and the seconds of read, chunk, hash, compress and seal. \
        scripts/bench.sh divides their sum by the cores to get a corpus's floor.
        """)
    @Option(help: "Compression: auto (default), off or max.") var compression: String = "auto"
    @Argument(help: "Files or directories.") var paths: [String]

    func run() async throws {
      guard let comp = Compression(rawValue: compression) else {
        throw TidemarkError(.usage, "unknown compression \(compression)", hint: "use auto, off or max")
      }
      let probe = StageProbe(compression: comp)
      let clock = ContinuousClock()
      var read = Duration.zero
      var stack = paths.map { BytePath($0) }
      // The read is timed as a backup reads: 2 MiB at a time into one reused buffer (copies from the page cache).
      // The stages then get the whole file from a second, untimed read into a buffer grown to the largest file.
      let block = UnsafeMutableRawBufferPointer.allocate(byteCount: 2 << 20, alignment: 64)
      defer { block.deallocate() }
      var whole = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 64)
      defer { whole.deallocate() }
      func readAll(_ fd: Int32, into b: UnsafeMutableRawBufferPointer, limit: Int, wrap: Bool) throws -> Int {
        var n = 0
        while n < limit {
          let at = wrap ? 0 : n
          let k = try Sys.pread(
            fd, UnsafeMutableRawBufferPointer(rebasing: b[at..<min(b.count, at + limit - n)]), offset: Int64(n))
          if k == 0 { break }
          n += k
        }
        return n
      }
      while let p = stack.popLast() {
        let st = try Sys.lstat(p)
        if st.isDirectory {
          for name in try Sys.readDirectory(p).reversed() { stack.append(p.appending(name)) }
        } else if st.isRegular {
          let size = Int(st.size)
          let t0 = clock.now
          let fd = try Sys.open(p, O_RDONLY)
          defer { Sys.close(fd) }
          _ = try readAll(fd, into: block, limit: size, wrap: true)
          read += clock.now - t0
          if size > whole.count {
            whole.deallocate()
            whole = .allocate(byteCount: size, alignment: 64)
          }
          let n = try readAll(fd, into: whole, limit: size, wrap: false)
          try probe.feed(file: UnsafeRawBufferPointer(rebasing: whole[0..<n]))
        }
      }
      let c = probe.costs
      func s(_ d: Duration) -> String { String(format: "%.3f", d.inSeconds) }
      Out.line(
        "{\"files\":\(c.files),\"chunks\":\(c.chunks),\"bytes\":\(c.bytes),\"stored_bytes\":\(c.storedBytes),\"read_seconds\":\(s(read)),\"chunk_seconds\":\(s(c.chunk)),\"hash_seconds\":\(s(c.hash)),\"compress_seconds\":\(s(c.compress)),\"seal_seconds\":\(s(c.seal))}"
      )
    }
  }
}
