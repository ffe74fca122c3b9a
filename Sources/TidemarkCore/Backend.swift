// The one storage contract every backend (local, SFTP, S3) fulfils; checked by one conformance suite.
//
// Contract:
// - Backends move bytes only: no encryption, no caching, no retries (those are decorators).
// - `save` is atomic and durable: after it returns the whole file is stored under its final name and
//   survives a crash; a reader never sees a partial file. Saving an existing name replaces it atomically.
// - `load(h, offset, length)` returns exactly `length` bytes from `offset` (length 0: to the end);
//   a missing file throws `BackendNotFound`; a short file throws.
// - `list(t)` returns every stored file of the type with its size, in no particular order; it never
//   returns temporary files.
// - `remove` of a missing file throws `BackendNotFound`; of a file the storage keeps under a retention
//   period (S3 Object Lock), `FileRetained`, and the file stays as it was (never hidden, never half gone).
// - `retainedUntil` tells the end of such a period before anything is tried; backends without retention
//   answer nil.
// - `create()` makes restic's layout only; saving the first `.site` record makes `tidemark/` as needed.
// - All methods may be called concurrently. Blocking I/O never runs on Swift's cooperative pool.

import Foundation

public enum FileType: String, Sendable, CaseIterable {
  case config
  case key = "keys"
  case lock = "locks"
  case snapshot = "snapshots"
  case index
  case pack = "data"
  /// tidemark's own records beside restic's namespaces (the site role and fencing epoch, see Site): encrypted
  /// like snapshot files, named by the SHA-256 of their bytes. restic ignores the directory.
  case site = "tidemark"

  /// The directories `create()` makes; `tidemark/` is made when the first record is saved.
  public static let layout: [FileType] = [.key, .lock, .snapshot, .index, .pack]
}

/// Names one stored file: its type and its name (hex ID; "config" for the config file).
public struct Handle: Hashable, Sendable, CustomStringConvertible {
  public var type: FileType
  public var name: String
  public init(_ type: FileType, _ name: String) {
    self.type = type
    self.name = name
  }
  public static let config = Handle(.config, "config")
  public var description: String { type == .config ? "config" : "\(type.rawValue)/\(name)" }
}

public struct FileInfo: Sendable {
  public var name: String
  public var size: Int
  public init(name: String, size: Int) {
    self.name = name
    self.size = size
  }
}

public protocol Backend: Sendable {
  /// Where the repository lives, for messages (`/srv/repo`, `sftp:host:/path`).
  var location: String { get }
  /// Creates the repository's directories (idempotent).
  func create() async throws
  func save(_ h: Handle, data: [UInt8]) async throws
  func load(_ h: Handle, offset: Int, length: Int) async throws -> [UInt8]
  /// The same as `load`, but may fill `buffer`'s storage instead of allocating (hot paths pass a buffer
  /// back to avoid page-faulting 16 MiB per pack). The default ignores `buffer`.
  func load(_ h: Handle, offset: Int, length: Int, reusing buffer: consuming [UInt8]) async throws -> [UInt8]
  /// The same bytes as `load`, held however the backend read them (a local backend reads a large uncached range
  /// straight from the disk into memory it then hands over, where `load` would copy it into an array). For
  /// ranges shared read-only by several consumers, as the mount's pack windows are. The default wraps `load`.
  func loadBytes(_ h: Handle, offset: Int, length: Int) async throws -> LoadedBytes
  func size(_ h: Handle) async throws -> Int
  func list(_ type: FileType) async throws -> [FileInfo]
  func remove(_ h: Handle) async throws
  /// Whether the storage refuses to delete anything but lock files (an append-only REST server, object-locked
  /// storage): retention and prune cannot run through it. Asked once per operation; the default is false.
  func refusesDeletes() async throws -> Bool
  /// When the storage will allow `h` to be removed, if that is later than now (S3 Object Lock's
  /// retain-until-date); nil when it may be removed now. The default: nil, no I/O.
  func retainedUntil(_ h: Handle) async throws -> Date?
  /// Renews the storage's retention of `h` to a full period from now, where the backend was asked to (S3:
  /// `-o s3.object-lock-extend=true`) and less than half of that period is left; returns the new date, or nil
  /// when nothing was changed. The default: nil, no I/O.
  func extendRetention(_ h: Handle) async throws -> Date?
  /// A pack to write piece by piece as it fills (see `PackUpload`), so that no whole pack waits in memory; nil
  /// when the backend takes packs whole, through `save` (the default). Cheap: no I/O until the first append.
  func makePackUpload() -> (any PackUpload)?
}

/// Bytes a backend loaded (`Backend.loadBytes`), owned by this object: an array, or memory the backend allocated
/// its own way (page-aligned, for direct I/O), released when the object goes. Never changed after it is made, so
/// any number of threads may read it at once.
public final class LoadedBytes: @unchecked Sendable {
  private let array: [UInt8]
  private let base: UnsafeRawPointer?
  private let release: (@Sendable () -> Void)?
  public let count: Int

  public init(_ bytes: [UInt8]) {
    array = bytes
    base = nil
    release = nil
    count = bytes.count
  }

  /// `count` bytes at `base`, which `release` frees once this object is gone.
  public init(base: UnsafeRawPointer, count: Int, release: @escaping @Sendable () -> Void) {
    array = []
    self.base = base
    self.release = release
    self.count = count
  }

  deinit { release?() }

  public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
    if let base { return try body(UnsafeRawBufferPointer(start: base, count: count)) }
    return try array.withUnsafeBytes(body)
  }
}

/// A pack on its way into a backend in pieces (`Backend.makePackUpload`). Nothing of it is visible in the
/// repository until `commit`, which publishes all of it at once under its name, durably; `discard` (or an
/// interrupted process) leaves nothing behind.
///
/// Contract: `append` is called in the order of the pack's bytes, by one thread at a time, and blocks (call it off
/// the cooperative pool); after the last `append`, exactly one of `commit` or `discard` is called, once.
public protocol PackUpload: AnyObject, Sendable {
  /// Writes `bytes` after everything appended before. Blocking.
  func append(_ bytes: UnsafeRawBufferPointer) throws
  /// Makes the appended bytes durable and visible as `h` (a pack whose name is their SHA-256).
  func commit(as h: Handle) async throws
  /// Drops the appended bytes.
  func discard() async
}

extension Backend {
  public func makePackUpload() -> (any PackUpload)? { nil }
  public func retainedUntil(_ h: Handle) async throws -> Date? { nil }
  public func extendRetention(_ h: Handle) async throws -> Date? { nil }

  public func load(_ h: Handle) async throws -> [UInt8] { try await load(h, offset: 0, length: 0) }
  public func refusesDeletes() async throws -> Bool { false }

  public func load(_ h: Handle, offset: Int, length: Int, reusing buffer: consuming [UInt8]) async throws
    -> [UInt8]
  {
    _ = consume buffer
    return try await load(h, offset: offset, length: length)
  }

  public func loadBytes(_ h: Handle, offset: Int, length: Int) async throws -> LoadedBytes {
    LoadedBytes(try await load(h, offset: offset, length: length))
  }

  public func exists(_ h: Handle) async throws -> Bool {
    do {
      _ = try await size(h)
      return true
    } catch is BackendNotFound {
      return false
    }
  }
}

extension [UInt8] {
  /// Makes `count` at least `n`, keeping the storage; bytes beyond the old count start as zero.
  public mutating func growCount(to n: Int) {
    if count < n { append(contentsOf: repeatElement(0, count: n - count)) }
  }

  /// Sets `count` to `n`, keeping the storage when its capacity suffices (no reallocation, no page
  /// faults) and not initialising fresh storage beyond what is needed. New bytes are unspecified. With
  /// `roomToGrow`, a buffer in use that is outgrown is replaced by one of twice its capacity (at least `n`): for
  /// buffers handed from one use to the next whose sizes vary (the runs of a pack a restore reads), where each
  /// replacement costs fresh pages, a fault for each.
  public mutating func resizeReusing(_ n: Int, roomToGrow: Bool = false) {
    if roomToGrow && capacity > 0 && capacity < n {
      let c = Swift.max(n, capacity * 2)
      self = [UInt8](unsafeUninitializedCapacity: c) { _, k in k = n }
      return
    }
    if capacity >= n {
      if count > n {
        removeLast(count - n)
      } else if count < n {
        append(contentsOf: repeatElement(0, count: n - count))
      }
    } else {
      self = [UInt8](unsafeUninitializedCapacity: n) { _, c in c = n }
    }
  }
}
