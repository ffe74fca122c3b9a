import ArgumentParser
import Foundation
import TidemarkCore
import TidemarkOperations
import TidemarkSystem

/// Tools for measuring and diagnosing; not part of the everyday interface.
struct DebugCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "debug", abstract: "Measuring and diagnosing tools.", shouldDisplay: false,
    subcommands: [StageCostsCommand.self])

  struct StageCostsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "stage-costs",
      abstract: "What a backup's CPU-bound stages cost on one core of this machine, over the given files.",
      discussion: """
        Walks PATH as a backup does (lists every directory, lstats every entry and lists its extended \
        attributes), reads every regular file under it (from the page cache when it is warm), then chunks, hashes, \
        compresses and seals it as a backup does, hashes each 16 MiB pack of sealed blobs and writes it into the \
        page cache of a scratch file (no fsync), timing each stage on its own on one core; and derives one key \
        with the scrypt parameters of `tidemark init`. Prints one JSON object: files, chunks, bytes, \
        stored_bytes and the seconds of walk, read, chunk, hash, compress, seal, pack_hash, write and key_open (CPU \
        seconds). scripts/bench.sh divides their sum by the cores to get a corpus's floor.
        """)
    @Option(help: "Compression: auto (default), off or max.") var compression: String = "auto"
    @Option(help: "Directory for the scratch file the packs are written to (default: $TMPDIR or /tmp).")
    var scratch: String = ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp"
    @Argument(help: "Files or directories.") var paths: [String]

    func run() async throws {
      guard let comp = Compression(rawValue: compression) else {
        throw TidemarkError(.usage, "unknown compression \(compression)", hint: "use auto, off or max")
      }
      let (c, walk, read, write) = try StageCosts.measure(
        paths: paths.map { BytePath($0) }, compression: comp, scratch: BytePath(scratch))
      func s(_ d: Duration) -> String { String(format: "%.3f", d.inSeconds) }
      Out.line(
        "{\"files\":\(c.files),\"chunks\":\(c.chunks),\"bytes\":\(c.bytes),\"stored_bytes\":\(c.storedBytes),\"walk_seconds\":\(s(walk)),\"read_seconds\":\(s(read)),\"chunk_seconds\":\(s(c.chunk)),\"hash_seconds\":\(s(c.hash)),\"compress_seconds\":\(s(c.compress)),\"seal_seconds\":\(s(c.seal)),\"pack_hash_seconds\":\(s(c.packHash)),\"write_seconds\":\(s(write)),\"key_open_seconds\":\(s(c.keyOpen))}"
      )
    }
  }
}
