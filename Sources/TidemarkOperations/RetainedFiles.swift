// Files the storage keeps until a date (S3 Object Lock): forget and prune leave them in place, plan around them
// (see Prune.swift) and say how many stayed and until when. Values only; asking the backend is `RetainedFiles.of`.
import Foundation
import Synchronization
import TidemarkCore

/// Files a forget or prune left in place because the storage refuses to delete them before a date.
public struct RetainedFiles: Sendable {
  public private(set) var until: [Handle: Date] = [:]
  public init() {}

  public var isEmpty: Bool { until.isEmpty }
  public var count: Int { until.count }
  public func contains(_ h: Handle) -> Bool { until[h] != nil }
  /// When the last of them may go.
  public var latest: Date? { until.values.max() }
  public func count(_ type: FileType) -> Int { until.keys.filter { $0.type == type }.count }

  public mutating func add(_ h: Handle, _ date: Date) { until[h] = max(date, until[h] ?? date) }
  public mutating func merge(_ other: RetainedFiles) { for (h, d) in other.until { add(h, d) } }

  /// One line for people: `3 files locked until 2027-01-05T10:00:00Z kept (2 packs, 1 index file)`; nil when
  /// nothing was retained.
  public var summary: String? {
    guard let latest, let earliest = until.values.min() else { return nil }
    let dates =
      UTCDate.format(earliest) == UTCDate.format(latest)
      ? UTCDate.format(latest) : "\(UTCDate.format(earliest)) to \(UTCDate.format(latest))"
    let kinds: [(FileType, String, String)] = [
      (.snapshot, "snapshot file", "snapshot files"), (.pack, "pack", "packs"), (.index, "index file", "index files"),
      (.key, "key file", "key files"), (.config, "config file", "config files"), (.site, "site record", "site records"),
    ]
    let parts = kinds.compactMap { t, one, many -> String? in
      let n = count(t)
      return n == 0 ? nil : "\(n) \(n == 1 ? one : many)"
    }
    return "\(count) file\(count == 1 ? "" : "s") locked until \(dates) kept (\(parts.joined(separator: ", ")))"
  }

  /// Asks the backend, 8 at a time, which of `handles` it keeps until a later date.
  public static func of(_ handles: [Handle], in backend: any Backend) async throws -> RetainedFiles {
    let found = Mutex(RetainedFiles())
    try await forEachConcurrently(handles, limit: 8) { h in
      if let d = try await backend.retainedUntil(h) { found.withLock { $0.add(h, d) } }
    }
    return found.withLock { $0 }
  }
}
