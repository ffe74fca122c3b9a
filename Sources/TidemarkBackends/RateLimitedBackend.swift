import Foundation
// A decorator that caps bandwidth (restic's --limit-upload / --limit-download, KiB/s): a token
// bucket per direction; a transfer waits until the bytes it moves fit the rate. Concurrent transfers
// share the budget.
import Synchronization
import TidemarkCore

public struct RateLimitedBackend: Backend {
  public let inner: any Backend
  let upload: Bucket?
  let download: Bucket?

  /// Rates in KiB/s; nil or 0 means unlimited.
  public init(_ inner: any Backend, uploadKiB: Int?, downloadKiB: Int?) {
    self.inner = inner
    upload = (uploadKiB ?? 0) > 0 ? Bucket(bytesPerSecond: Double(uploadKiB!) * 1024) : nil
    download = (downloadKiB ?? 0) > 0 ? Bucket(bytesPerSecond: Double(downloadKiB!) * 1024) : nil
  }

  public var location: String { inner.location }

  /// The time budget as a clock: each transfer books `bytes / rate` seconds after the previous booking
  /// (or now, if the line was idle) and does not complete before its booking ends.
  final class Bucket: Sendable {
    let rate: Double
    private let next = Mutex<ContinuousClock.Instant>(.now)

    init(bytesPerSecond: Double) { rate = bytesPerSecond }

    func take(_ bytes: Int) async throws {
      let end: ContinuousClock.Instant = next.withLock { n in
        let now = ContinuousClock.now
        // An idle line may bank at most a quarter second of burst.
        let begin = max(n, now - .milliseconds(250))
        n = begin + .seconds(Double(bytes) / rate)
        return n
      }
      if end > .now { try await Task.sleep(until: end) }
    }
  }

  public func create() async throws { try await inner.create() }
  public func save(_ h: Handle, data: [UInt8]) async throws {
    try await upload?.take(data.count)
    try await inner.save(h, data: data)
  }
  public func load(_ h: Handle, offset: Int, length: Int) async throws -> [UInt8] {
    let data = try await inner.load(h, offset: offset, length: length)
    try await download?.take(data.count)
    return data
  }
  public func size(_ h: Handle) async throws -> Int { try await inner.size(h) }
  public func list(_ type: FileType) async throws -> [FileInfo] { try await inner.list(type) }
  public func remove(_ h: Handle) async throws { try await inner.remove(h) }
  public func refusesDeletes() async throws -> Bool { try await inner.refusesDeletes() }
  public func retainedUntil(_ h: Handle) async throws -> Date? { try await inner.retainedUntil(h) }
  public func extendRetention(_ h: Handle) async throws -> Date? { try await inner.extendRetention(h) }
}
