// What the CPU-bound stages of a backup cost on this machine, on one core: content-defined chunking, SHA-256 of
// each chunk, zstd at the repository's level, sealing (AES-256-CTR and Poly1305), and for every 16 MiB of sealed
// blobs the pack's SHA-256 (its name) and its hand-over to `packSink` (the caller times the write), each timed on
// its own over the data it is fed; and, once, opening a key made with `tidemark init`'s scrypt parameters. The
// format asks for all of it: no backup into a restic repository avoids any of these. `tidemark debug
// stage-costs` feeds it files; scripts/bench.sh turns the sum into a corpus's floor (the work spread over every
// core, or the cold read if that takes longer).
import Foundation
import TidemarkZstd

public final class StageProbe {
  public struct Costs: Sendable {
    public var files = 0
    public var chunks = 0
    public var bytes: Int64 = 0
    /// What zstd made of the bytes (blobs that do not shrink count at their size, as they are stored).
    public var storedBytes: Int64 = 0
    public var chunk: Duration = .zero
    public var hash: Duration = .zero
    public var compress: Duration = .zero
    public var seal: Duration = .zero
    /// SHA-256 of each pack's bytes.
    public var packHash: Duration = .zero
    /// CPU time (all threads) of deriving one key with `KeyFile.defaultParams`, as opening a repository does.
    public var keyOpen: Duration = .zero
  }

  public private(set) var costs = Costs()
  let tables: ChunkerTables
  let compression: Compression
  let key = MasterKey.random()
  let compressors = ZstdCompressorPool()
  var out: [UInt8] = []
  var pack: [UInt8] = []
  /// Called with each pack's bytes (16 MiB, the last one less) after its hash.
  let packSink: (UnsafeRawBufferPointer) throws -> Void

  public init(
    polynomial: Polynomial = .randomIrreducible(), compression: Compression = .auto,
    packSink: @escaping (UnsafeRawBufferPointer) throws -> Void = { _ in }
  ) {
    tables = ChunkerTables(polynomial: polynomial)
    self.compression = compression
    self.packSink = packSink
    pack.reserveCapacity(BlobSaver.targetPackSize + Chunker.maxSize + 64)
  }

  /// Times one key derivation with the parameters `tidemark init` gives a new key, in CPU seconds of the whole
  /// process (it runs on two threads when it can).
  public func measureKeyOpen() throws {
    let t0 = StageProbe.processCPU()
    _ = try KeyFile.scrypt(
      Array("stage-costs".utf8), [UInt8](repeating: 7, count: 64), KeyFile.defaultParams.n,
      KeyFile.defaultParams.r, KeyFile.defaultParams.p)
    costs.keyOpen += StageProbe.processCPU() - t0
  }

  /// Hashes and hands over the blobs sealed since the last pack. Call once after the last `feed`.
  public func finish() throws {
    guard !pack.isEmpty else { return }
    let t0 = ContinuousClock.now
    _ = RawID.hash(pack)
    costs.packHash += ContinuousClock.now - t0
    try pack.withUnsafeBytes { try packSink($0) }
    pack.removeAll(keepingCapacity: true)
  }

  static func processCPU() -> Duration {
    var ts = timespec()
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
    return .seconds(ts.tv_sec) + .nanoseconds(ts.tv_nsec)
  }

  /// One file's content, whole: chunked as a backup chunks it, then each chunk hashed, compressed and sealed.
  public func feed(file data: UnsafeRawBufferPointer) throws {
    costs.files += 1
    costs.bytes += Int64(data.count)
    var start = 0
    let clock = ContinuousClock()
    while start < data.count {
      var end = data.count
      let t0 = clock.now
      // The backup's own boundary search, over the chunk held contiguous in memory.
      if let cut = Chunker.cut(in: UnsafeRawBufferPointer(rebasing: data[start...]), scanned: 0, tables: tables) {
        end = start + cut
      }
      costs.chunk += clock.now - t0
      try blob(UnsafeRawBufferPointer(rebasing: data[start..<end]))
      start = end
    }
    if data.isEmpty { try blob(data) }
  }

  private func blob(_ b: UnsafeRawBufferPointer) throws {
    let clock = ContinuousClock()
    costs.chunks += 1
    var t0 = clock.now
    _ = RawID.hash(b)
    costs.hash += clock.now - t0
    t0 = clock.now
    var length = b.count
    if compression != .off && b.count > 0 {
      let z = try compressors.compress(b, level: compression.level(forSize: b.count), into: &out, at: 16, tailroom: 16)
      if z < b.count { length = z }
    } else {
      out.growCount(to: b.count + 32)
    }
    costs.compress += clock.now - t0
    costs.storedBytes += Int64(length)
    t0 = clock.now
    try out.withUnsafeMutableBytes {
      try key.sealInPlace(region: UnsafeMutableRawBufferPointer(rebasing: $0[0..<(length + 32)]))
    }
    costs.seal += clock.now - t0
    pack += out[0..<(length + 32)]
    if pack.count >= BlobSaver.targetPackSize { try finish() }
  }
}
