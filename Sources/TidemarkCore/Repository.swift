// Repository: an opened (keyed) restic repository over any Backend.
// Concurrency: all methods are safe to call concurrently; the index is internally locked.
// Never: name a concrete backend; write a file that is not content-addressed, except `config`.
import Foundation
import Synchronization
import TidemarkCrypto
import TidemarkZstd

public enum Compression: String, Sendable {
  case auto, off, max

  var level: Int32 {
    switch self {
    case .auto: return 2
    case .max: return 19
    case .off: return 0
    }
  }

  /// Blobs up to this size compress at level 1 under `auto`.
  static let smallBlob = 32 << 10

  /// The zstd level for a blob of `size` bytes. Under `auto`, a small blob (a small file, a tree) takes
  /// level 1: on inputs of a few KiB zstd's level 1 and 2 make the same frames to within half a percent
  /// (the window is the input either way), and level 1 makes them about 1.5x as fast. Larger blobs take
  /// level 2, which leaves compressible data (logs, databases) about 12% smaller than level 1 does.
  public func level(forSize size: Int) -> Int32 {
    self == .auto && size <= Compression.smallBlob ? 1 : level
  }
}

public final class Repository: Sendable {
  public let backend: any Backend
  public let key: MasterKey
  public let keyID: KeyID?
  public let config: Config
  public let index = MasterIndex()
  /// Every write but a lock file's passes here first (see `RepositoryLock.acquire(overlap:)`).
  public let writeGate = WriteGate()
  public let chunkerTables: ChunkerTables
  public let compression: Compression
  /// zstd contexts reused across blobs (a fresh one per blob costs a `cpuid` trap in a VM).
  let decompressors = ZstdDecompressorPool()

  init(backend: any Backend, key: MasterKey, keyID: KeyID?, config: Config, compression: Compression) {
    self.backend = backend
    self.key = key
    self.keyID = keyID
    self.config = config
    self.compression = config.version >= 2 ? compression : .off
    self.chunkerTables = ChunkerTables(polynomial: config.chunkerPolynomial)
  }

  static func notFound(_ backend: any Backend) -> TidemarkError {
    TidemarkError(
      .repositoryNotFound, "no repository at \(backend.location) (config file not found)",
      hint: "check --repo / TIDEMARK_REPOSITORY, or create one with `tidemark init`")
  }

  /// Opens the repository: finds a key the password opens, then decrypts the config.
  public static func open(backend: any Backend, password: [UInt8], compression: Compression = .auto) async throws
    -> Repository
  {
    let configSealed: [UInt8]
    do {
      configSealed = try await backend.load(.config)
    } catch is BackendNotFound {
      throw notFound(backend)
    }
    let keys = try await backend.list(.key)
    var tried = 0
    for k in keys.sorted(by: { $0.name < $1.name }) {
      if tried >= 20 { break }
      tried += 1
      guard let kf = try? KeyFile(json: try await loadVerified(backend, Handle(.key, k.name))) else { continue }
      guard let master = try kf.open(password: password) else { continue }
      guard let plain = try master.open(configSealed) else {
        throw TidemarkError.corrupt("the config file fails authentication under key \(k.name.prefix(8))")
      }
      let config = try Config(json: try decodeUnpacked(plain))
      return Repository(
        backend: backend, key: master, keyID: KeyID(hex: k.name), config: config, compression: compression)
    }
    if keys.isEmpty {
      throw TidemarkError.corrupt("repository at \(backend.location) has no key files")
    }
    throw TidemarkError(
      .wrongPassword, "wrong password: no key in \(backend.location) opens with it",
      hint: "check --password-file / TIDEMARK_PASSWORD (or RESTIC_PASSWORD)")
  }

  /// Opens a repository whose master key is already known (a replica shares its source's master key):
  /// decrypts the config with it, or fails when the key does not fit. `keyID` names the key file used, if any.
  public static func open(
    backend: any Backend, key: MasterKey, keyID: KeyID?, compression: Compression = .auto
  ) async throws -> Repository {
    let configSealed: [UInt8]
    do {
      configSealed = try await backend.load(.config)
    } catch is BackendNotFound {
      throw notFound(backend)
    }
    guard let plain = try key.open(configSealed) else {
      throw TidemarkError(
        .wrongPassword, "the master key does not open the config of \(backend.location)",
        hint: "it belongs to another repository")
    }
    let config = try Config(json: try decodeUnpacked(plain))
    return Repository(backend: backend, key: key, keyID: keyID, config: config, compression: compression)
  }

  /// Creates a new repository (format version 2 unless told otherwise).
  public static func initialize(
    backend: any Backend, password: [UInt8], version: Int = 2, polynomial: Polynomial? = nil,
    kdf: (n: UInt64, r: UInt64, p: UInt64) = KeyFile.defaultParams
  ) async throws -> Repository {
    if try await backend.exists(.config) {
      throw TidemarkError(
        .alreadyExists, "a repository already exists at \(backend.location)",
        hint: "use it as it is, or choose another --repo")
    }
    try await backend.create()
    let master = MasterKey.random()
    let kf = try KeyFile.create(
      master: master, password: password, username: SystemInfo.username, hostname: SystemInfo.hostname, params: kdf)
    let kjson = kf.json
    let kid = KeyID(RawID.hash(kjson))
    try await backend.save(Handle(.key, kid.hex), data: kjson)
    let config = Config(
      version: version, id: RawID.hash(SecureRandom.bytes(32)).hex,
      chunkerPolynomial: polynomial ?? .randomIrreducible())
    try await backend.save(.config, data: try master.seal(config.encode()))
    return Repository(backend: backend, key: master, keyID: kid, config: config, compression: .auto)
  }

  /// Loads a whole file and checks its SHA-256 against its name (all but `config`).
  static func loadVerified(_ backend: any Backend, _ h: Handle) async throws -> [UInt8] {
    let data = try await backend.load(h)
    if h.type != .config {
      let got = RawID.hash(data).hex
      guard got == h.name else {
        throw TidemarkError.corrupt("\(h) is damaged: its content hashes to \(got.prefix(8)), not to its name")
      }
    }
    return data
  }

  /// Unpacked-file plaintext: `0x02 ‖ zstd(JSON)` in v2, raw JSON when it starts with `{` or `[`.
  public static func decodeUnpacked(_ plain: [UInt8]) throws -> [UInt8] {
    guard let first = plain.first else { return plain }
    if first == UInt8(ascii: "{") || first == UInt8(ascii: "[") { return plain }
    if first == 2 {
      return try plain.withUnsafeBytes {
        try Zstd.decompress(UnsafeRawBufferPointer(rebasing: $0[1...]), limit: 1 << 30)
      }
    }
    throw TidemarkError.corrupt("unknown encoding \(first) of an unpacked file")
  }

  /// Loads, verifies, decrypts and decompresses an unpacked file (snapshot, index, lock).
  public func loadUnpacked(_ h: Handle) async throws -> [UInt8] {
    let data = try await Repository.loadVerified(backend, h)
    guard let plain = try key.open(data) else {
      throw TidemarkError.corrupt("\(h) fails authentication (damaged, or written with another master key)")
    }
    return try Repository.decodeUnpacked(plain)
  }

  /// Encodes, encrypts and stores an unpacked file; returns its ID.
  public func saveUnpacked(_ type: FileType, json: [UInt8]) async throws -> RawID {
    var plain: [UInt8]
    if config.version >= 2 {
      plain = [2]
      plain += try json.withUnsafeBytes { try Zstd.compress($0, level: 3) }
    } else {
      plain = json
    }
    let sealed = try key.seal(plain)
    let id = RawID.hash(sealed)
    if type != .lock { try await writeGate.pass() }
    try await backend.save(Handle(type, id.hex), data: sealed)
    return id
  }

  // MARK: Index

  /// Loads and merges every index file.
  public func loadIndex() async throws { _ = try await loadIndex(skipping: []) }

  /// Loads the index files not in `known` (for a long-running reader that picks up new ones);
  /// returns the names of all index files now loaded.
  public func loadIndex(skipping known: Set<String>) async throws -> Set<String> {
    let files = try await backend.list(.index).filter { !known.contains($0.name) }
    try await forEachConcurrently(files, limit: 4) { f in
      let json = try await self.loadUnpacked(Handle(.index, f.name))
      self.index.add(try IndexFile(json: json))
    }
    return known.union(files.map(\.name))
  }

  // MARK: Blobs

  /// Decrypts, decompresses and verifies one stored blob.
  public func decodeBlob(_ sealed: UnsafeRawBufferPointer, _ b: PackedBlob, pack: PackID) throws -> [UInt8] {
    guard let plain = try key.open(sealed) else {
      throw TidemarkError.corrupt(
        "\(b.type.name) blob \(b.id.short) in pack \(pack.short) fails authentication (damaged pack)")
    }
    var data = plain
    if b.isCompressed {
      do {
        data = try plain.withUnsafeBytes { try decompressors.decompress($0, size: Int(b.uncompressedLength)) }
      } catch {
        throw TidemarkError.corrupt(
          "\(b.type.name) blob \(b.id.short) in pack \(pack.short) does not decompress: \(error)")
      }
    }
    guard RawID.hash(data) == b.id.raw else {
      throw TidemarkError.corrupt(
        "\(b.type.name) blob \(b.id.short) in pack \(pack.short) has wrong content (hash mismatch)")
    }
    return data
  }

  /// Like `decodeBlob`, but decrypts in place (destroying `sealed`) and decompresses into the start of `scratch`
  /// (its storage reused; it may end up longer than the blob), then passes the verified plaintext to `body`. For hot
  /// loops (restore).
  public func decodeBlob<R>(
    inPlace sealed: UnsafeMutableRawBufferPointer, _ b: PackedBlob, pack: PackID, scratch: inout [UInt8],
    _ body: (UnsafeRawBufferPointer) throws -> R
  ) throws -> R {
    let damaged = "\(b.type.name) blob \(b.id.short) in pack \(pack.short)"
    guard let plain = try key.openInPlace(sealed) else {
      throw TidemarkError.corrupt("\(damaged) fails authentication (damaged pack)")
    }
    guard b.isCompressed else {
      guard RawID.hash(UnsafeRawBufferPointer(plain)) == b.id.raw else {
        throw TidemarkError.corrupt("\(damaged) has wrong content (hash mismatch)")
      }
      return try body(UnsafeRawBufferPointer(plain))
    }
    let size = Int(b.uncompressedLength)
    // Only grown, never cut: the plaintext is its first `size` bytes, so a blob larger than the one before does
    // not zero-fill the difference only to have zstd overwrite it.
    if scratch.count < size { scratch.resizeReusing(size) }
    do {
      let got = try scratch.withUnsafeMutableBytes { o in
        try decompressors.decompress(
          UnsafeRawBufferPointer(plain), into: UnsafeMutableRawBufferPointer(rebasing: o[..<size]))
      }
      guard got == size else { throw TidemarkError.corrupt("decompressed \(got) bytes, expected \(size)") }
    } catch {
      throw TidemarkError.corrupt("\(damaged) does not decompress: \(error)")
    }
    return try scratch.withUnsafeBytes { all in
      let plain = UnsafeRawBufferPointer(rebasing: all[..<size])
      guard RawID.hash(plain) == b.id.raw else {
        throw TidemarkError.corrupt("\(damaged) has wrong content (hash mismatch)")
      }
      return try body(plain)
    }
  }

  /// Like `decodeBlob`, but decrypts in place (destroying `sealed`): the plaintext is written once,
  /// into the array returned (no zero-filling, no intermediate copy).
  public func decodeBlob(inPlace sealed: UnsafeMutableRawBufferPointer, _ b: PackedBlob, pack: PackID) throws
    -> [UInt8]
  {
    let damaged = "\(b.type.name) blob \(b.id.short) in pack \(pack.short)"
    guard let plain = try key.openInPlace(sealed) else {
      throw TidemarkError.corrupt("\(damaged) fails authentication (damaged pack)")
    }
    let data: [UInt8]
    if b.isCompressed {
      do {
        data = try decompressors.decompress(UnsafeRawBufferPointer(plain), size: Int(b.uncompressedLength))
      } catch {
        throw TidemarkError.corrupt("\(damaged) does not decompress: \(error)")
      }
    } else {
      data = [UInt8](unsafeUninitializedCapacity: plain.count) { o, n in
        if let base = plain.baseAddress, plain.count > 0 {
          UnsafeMutableRawPointer(o.baseAddress!).copyMemory(from: base, byteCount: plain.count)
        }
        n = plain.count
      }
    }
    guard RawID.hash(data) == b.id.raw else {
      throw TidemarkError.corrupt("\(damaged) has wrong content (hash mismatch)")
    }
    return data
  }

  public func loadBlob(_ id: BlobID) async throws -> [UInt8] {
    guard let e = index.lookup(id) else {
      throw TidemarkError.corrupt("blob \(id.short) is not in the index", hint: "run `tidemark check`")
    }
    let sealed = try await backend.load(
      Handle(.pack, e.pack.hex), offset: Int(e.blob.offset), length: Int(e.blob.length))
    return try sealed.withUnsafeBytes { try decodeBlob($0, e.blob, pack: e.pack) }
  }

  public func loadTree(_ id: BlobID) async throws -> Tree {
    let data = try await loadBlob(id)
    do {
      return try Tree(json: data)
    } catch {
      throw TidemarkError.corrupt("tree \(id.short) is not valid: \(error)")
    }
  }

  /// Reads the header of a pack (for `cat pack`, check and recovery).
  public func loadPackHeader(_ pack: PackID) async throws -> [PackedBlob] {
    let h = Handle(.pack, pack.hex)
    let size = try await backend.size(h)
    guard size >= 4 + MasterKey.overhead else { throw TidemarkError.corrupt("pack \(pack.short) is too short") }
    let tail = try await backend.load(h, offset: size - 4, length: 4)
    let hlen = Int(UInt32(tail[0]) | UInt32(tail[1]) << 8 | UInt32(tail[2]) << 16 | UInt32(tail[3]) << 24)
    guard hlen + 4 <= size, hlen >= MasterKey.overhead else {
      throw TidemarkError.corrupt("pack \(pack.short) has an invalid header length")
    }
    let sealed = try await backend.load(h, offset: size - 4 - hlen, length: hlen)
    guard let plain = try key.open(sealed) else {
      throw TidemarkError.corrupt("header of pack \(pack.short) fails authentication")
    }
    return try PackHeader.decode(plain)
  }

  // MARK: Snapshots

  public func loadSnapshot(_ id: SnapshotID) async throws -> Snapshot {
    try Snapshot(json: try await loadUnpacked(Handle(.snapshot, id.hex)), id: id)
  }

  /// Every snapshot, oldest first.
  public func listSnapshots() async throws -> [Snapshot] {
    let files = try await backend.list(.snapshot)
    let out = Mutex<[Snapshot]>([])
    try await forEachConcurrently(files, limit: 8) { f in
      guard let id = SnapshotID(hex: f.name) else { return }
      let s = try await self.loadSnapshot(id)
      out.withLock { $0.append(s) }
    }
    return out.withLock { $0 }.sorted { ($0.time, $0.id!) < ($1.time, $1.id!) }
  }

  /// Resolves `latest`, a full ID or a unique prefix.
  public func findSnapshot(_ ref: String, host: String? = nil, paths: [String] = [], tags: [String] = [])
    async throws -> Snapshot
  {
    if ref == "latest" {
      let all = try await listSnapshots().filter {
        (host == nil || $0.hostname == host) && (paths.isEmpty || Set($0.paths) == Set(paths))
          && tags.allSatisfy($0.tags.contains)
      }
      guard let s = all.last else {
        throw TidemarkError(.notFound, "no snapshot matches `latest`", hint: "list them with `tidemark snapshots`")
      }
      return s
    }
    let files = try await backend.list(.snapshot).map(\.name).filter { $0.hasPrefix(ref.lowercased()) }
    guard !ref.isEmpty, files.count == 1, let id = SnapshotID(hex: files[0]) else {
      if files.count > 1 {
        throw TidemarkError(
          .usage, "snapshot prefix \(ref) is ambiguous (\(files.count) matches)", hint: "give more digits")
      }
      throw TidemarkError(.notFound, "no snapshot with ID \(ref)", hint: "list them with `tidemark snapshots`")
    }
    return try await loadSnapshot(id)
  }

  public func saveSnapshot(_ s: Snapshot) async throws -> SnapshotID {
    SnapshotID(try await saveUnpacked(.snapshot, json: s.encode()))
  }

  /// Resolves a unique prefix of a stored file's name.
  public func resolve(_ type: FileType, prefix: String) async throws -> String {
    let names = try await backend.list(type).map(\.name).filter { $0.hasPrefix(prefix.lowercased()) }
    guard names.count == 1 else {
      throw TidemarkError(
        names.isEmpty ? .notFound : .usage,
        names.isEmpty ? "no \(type.rawValue) file matches \(prefix)" : "prefix \(prefix) is ambiguous")
    }
    return names[0]
  }
}

/// Runs `body` for every element with at most `limit` running at once; the first error cancels the rest.
public func forEachConcurrently<T: Sendable>(
  _ items: [T], limit: Int, _ body: @escaping @Sendable (T) async throws -> Void
) async throws {
  try await withThrowingTaskGroup(of: Void.self) { g in
    var it = items.makeIterator()
    for _ in 0..<limit {
      guard let x = it.next() else { break }
      g.addTask { try await body(x) }
    }
    while try await g.next() != nil {
      if let x = it.next() { g.addTask { try await body(x) } }
    }
  }
}

extension Repository {
  /// `init --repository-version`: 1, or 2 (also `latest` and `stable`).
  public static func formatVersion(_ text: String) throws -> Int {
    switch text {
    case "1": return 1
    case "2", "latest", "stable": return 2
    default: throw TidemarkError(.usage, "unknown repository version \(text)", hint: "use 1 or 2")
    }
  }
}

public enum SystemInfo {
  public static var hostname: String {
    var buf = [CChar](repeating: 0, count: 256)
    gethostname(&buf, 255)
    return String(cString: buf)
  }
  public static var username: String {
    if let pw = getpwuid(getuid()), let n = pw.pointee.pw_name { return String(cString: n) }
    return ProcessInfo.processInfo.environment["USER"] ?? ""
  }
}
