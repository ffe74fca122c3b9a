// A decorator that waits out outages: an operation that fails because the storage is unavailable
// (TidemarkError.Kind.unavailable: a broken connection, a server restarting) is retried with
// exponential backoff. Every Backend operation is idempotent (saves are atomic, names are content
// hashes), so a retry can never store a mix. Other errors (missing file, permission, full disk) are
// final and pass through at once. Once an operation has used up its attempts, the storage is taken as gone: later
// operations (releasing a lock on the way out) try once instead of waiting out the backoff again, until one of
// them succeeds.
import Foundation
import Synchronization
import TidemarkCore

/// Whether an operation of this backend gave up on an unavailable storage since the last success.
final class Outage: Sendable {
  let gaveUp = Atomic<Bool>(false)
}

public struct RetryBackend: Backend {
  public let inner: any Backend
  /// Waits between attempts: 0.5 s, doubling, at most `maxDelay`; gives up after `attempts` tries.
  public let attempts: Int
  public let maxDelay: Duration
  /// Told about each retry (the CLI prints one line on stderr).
  let report: @Sendable (String) -> Void
  let outage = Outage()

  public init(
    _ inner: any Backend, attempts: Int = 8, maxDelay: Duration = .seconds(8),
    report: @escaping @Sendable (String) -> Void = { _ in }
  ) {
    self.inner = inner
    self.attempts = max(1, attempts)
    self.maxDelay = maxDelay
    self.report = report
  }

  public var location: String { inner.location }

  func retrying<T: Sendable>(_ what: @autoclosure () -> String, _ op: () async throws -> T) async throws -> T {
    var delay = Duration.milliseconds(500)
    var attempt = 1
    let limit = outage.gaveUp.load(ordering: .relaxed) ? 1 : attempts
    while true {
      do {
        let result = try await op()
        outage.gaveUp.store(false, ordering: .relaxed)
        return result
      } catch let e as TidemarkError where e.kind == .unavailable && attempt < limit {
        report("\(what()): \(e.message); retrying in \(delay) (attempt \(attempt + 1) of \(attempts))")
        try await Task.sleep(for: delay)
        delay = min(delay * 2, maxDelay)
        attempt += 1
      } catch let e as TidemarkError where e.kind == .unavailable {
        outage.gaveUp.store(true, ordering: .relaxed)
        throw e
      }
    }
  }

  public func create() async throws { try await retrying("create", { try await inner.create() }) }
  public func save(_ h: Handle, data: [UInt8]) async throws {
    try await retrying("save \(h)", { try await inner.save(h, data: data) })
  }
  public func load(_ h: Handle, offset: Int, length: Int) async throws -> [UInt8] {
    try await retrying("load \(h)", { try await inner.load(h, offset: offset, length: length) })
  }
  public func size(_ h: Handle) async throws -> Int { try await retrying("stat \(h)", { try await inner.size(h) }) }
  public func list(_ type: FileType) async throws -> [FileInfo] {
    try await retrying("list \(type.rawValue)", { try await inner.list(type) })
  }
  public func remove(_ h: Handle) async throws { try await retrying("remove \(h)", { try await inner.remove(h) }) }
  public func refusesDeletes() async throws -> Bool {
    try await retrying("probe deletes", { try await inner.refusesDeletes() })
  }
  public func retainedUntil(_ h: Handle) async throws -> Date? {
    try await retrying("stat \(h)", { try await inner.retainedUntil(h) })
  }
  public func extendRetention(_ h: Handle) async throws -> Date? {
    try await retrying("extend retention of \(h)", { try await inner.extendRetention(h) })
  }
}
