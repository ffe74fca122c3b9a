// The daemon's DC index between cycles: reading every index file again costs seconds on a large repository
// (half a million files: about 3 s, most of a journal-driven cycle). A cycle that succeeded leaves its index here;
// the next one takes it and reads only the index files that appeared since. When any index file it read has gone
// (prune, consolidation: entries may name packs that no longer exist) or the last cycle failed (its backup may
// have added entries for packs no index file names), the index is read whole again.
import Synchronization
import TidemarkCore

public final class IndexCache: Sendable {
  struct Entry: Sendable {
    var location: String
    var index: MasterIndex
    /// The index files `index` was read from.
    var files: Set<String>
  }
  private let entry = Mutex<Entry?>(nil)
  /// What the running cycle read, kept when it succeeds.
  private let pending = Mutex<Entry?>(nil)

  public init() {}

  public func clear() {
    entry.withLock { $0 = nil }
    pending.withLock { $0 = nil }
  }

  /// Loads `repo`'s index: the kept one and the index files added since, or all of them. Returns how many index
  /// files were read.
  @discardableResult
  func load(_ repo: Repository, location: String) async throws -> Int {
    let kept = entry.withLock { e -> Entry? in
      defer { e = nil }  // a cycle that fails leaves nothing behind
      return e
    }
    let files = Set(try await repo.backend.list(.index).map(\.name))
    var read = files.count
    if let kept, kept.location == location, kept.files.isSubset(of: files) {
      repo.index.adopt(kept.index)
      _ = try await repo.loadIndex(skipping: kept.files)
      read = files.count - kept.files.count
    } else {
      _ = try await repo.loadIndex(skipping: [])
    }
    pending.withLock { $0 = Entry(location: location, index: repo.index, files: files) }
    return read
  }

  /// The cycle succeeded: its index (with what its backup added, all of it in index files now) serves the next.
  func keep() {
    let p = pending.withLock { p -> Entry? in
      defer { p = nil }
      return p
    }
    entry.withLock { $0 = p }
  }

  /// The cycle failed: the next one reads the whole index.
  func drop() { pending.withLock { $0 = nil } }
}
