// How the engine reaches a repository: its location and backend options, where its password comes from, the
// compression for new data, how long to wait for a lock, and bandwidth limits. The command line builds one from
// its options (-r, --password-file, -o, …); the engine never reads arguments itself.
import Foundation
import TidemarkBackends
import TidemarkCore
import TidemarkOperations
import TidemarkSystem

public struct RepositoryAccess: Sendable {
  public var location: String
  /// `-o key=value` backend options.
  public var options: [String] = []
  /// The password, read when a repository is opened (a file, a command, the environment or a prompt).
  public var password: @Sendable () async throws -> [UInt8]
  public var compression: Compression = .auto
  /// How long to keep retrying while the repository is locked (zero: fail at once).
  public var lockRetry: Duration = .zero
  public var uploadKiB: Int? = nil
  public var downloadKiB: Int? = nil
  /// The certificate authorities HTTPS locations (rest:, s3:) trust (`--cacert`).
  public var trust: TLSTrust = .system
  /// Hears each retry of a remote backend.
  public var warn: @Sendable (String) -> Void = { _ in }

  public init(location: String, password: @escaping @Sendable () async throws -> [UInt8]) {
    self.location = location
    self.password = password
  }

  public func backend() throws -> any Backend {
    try BackendLocation.open(
      location, options: options, uploadKiB: uploadKiB, downloadKiB: downloadKiB, trust: trust, warn: warn)
  }

  public func open() async throws -> Repository {
    try await Repository.open(backend: try backend(), password: try await password(), compression: compression)
  }

  /// Opens the repository with the master key a `tidemark mount` shares on `socket` (process `pid`); throws
  /// when it cannot be had or does not open this repository's config.
  public func open(keyFrom socket: String, pid: Int32?) async throws -> Repository {
    let backend = try backend()
    let json = try await Blocking.run { try SecretSocket.fetch(socket, serverPID: pid) }
    guard let key = MasterKey(json: json) else {
      throw TidemarkError(.general, "the mount's key socket \(socket) sent no master key")
    }
    return try await Repository.open(backend: backend, key: key, keyID: nil, compression: compression)
  }

  /// Runs `body` holding a lock on `repo`, released when `body` ends, fails or is cancelled. `prepare` (e.g.
  /// loading the index) runs while the lock is being confirmed; with `overlap` so does the start of `body`: its
  /// repository writes wait for the confirmation (`RepositoryLock.acquire(overlap:)`), and a conflict found
  /// then is reported when `body` is done, as the lock error.
  public func withLock<T>(
    _ repo: Repository, exclusive: Bool, overlap: Bool = false, prepare: @Sendable () async throws -> Void = {},
    _ body: () async throws -> T
  ) async throws -> T {
    try await RepositoryAccess.withLock(
      repo, exclusive: exclusive, retry: lockRetry, overlap: overlap, prepare: prepare, body)
  }

  public static func withLock<T>(
    _ repo: Repository, exclusive: Bool, retry: Duration, overlap: Bool = false,
    prepare: @Sendable () async throws -> Void = {}, _ body: () async throws -> T
  ) async throws -> T {
    let lock = try await RepositoryLock.acquire(
      repo, exclusive: exclusive, retry: retry, overlap: overlap, meanwhile: prepare)
    do {
      let r = try await body()
      try await lock.confirmed()
      await lock.release()
      return r
    } catch {
      await lock.release()
      throw error
    }
  }
}

/// The version this build reports (snapshots' program_version, reports, `tidemark version`).
public enum TidemarkVersion {
  public static let string = "0.1.0"
}
