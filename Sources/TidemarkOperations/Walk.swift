// Walking the trees of many snapshots at once: each tree is loaded once however many snapshots share it.
import Synchronization
import TidemarkCore

/// All index files of a repository, each with its packs, as stored (duplicates and all). `Repository.index`
/// merges them into one entry per blob; maintenance needs every copy and which file names it.
public struct StoredIndex: Sendable {
  public var files: [(id: IndexID, file: IndexFile)] = []
  /// Index files that could not be loaded or decoded, with the reason.
  public var broken: [(name: String, error: String)] = []

  /// Loads every index file (4 at a time). With `tolerant`, damaged ones go to `broken` instead of throwing.
  public static func load(_ repo: Repository, tolerant: Bool = false) async throws -> StoredIndex {
    let listed = try await repo.backend.list(.index)
    let out = Mutex(StoredIndex())
    try await forEachConcurrently(listed, limit: 4) { f in
      do {
        guard let id = IndexID(hex: f.name) else { return }
        let file = try IndexFile(json: try await repo.loadUnpacked(Handle(.index, f.name)))
        out.withLock { $0.files.append((id, file)) }
      } catch {
        guard tolerant else { throw error }
        out.withLock { $0.broken.append((f.name, "\(error)")) }
      }
    }
    return out.withLock { s in
      s.files.sort { $0.id.hex < $1.id.hex }
      return s
    }
  }

  /// Every (pack, blob) entry, in file order; a pack that several index files name (old and new index files
  /// side by side after an interrupted prune) is visited once, as the first file describes it.
  public func forEachEntry(_ body: (PackID, PackedBlob) throws -> Void) rethrows {
    var seen = Set<PackID>()
    for f in files {
      for p in f.file.packs where seen.insert(p.id).inserted { for b in p.blobs { try body(p.id, b) } }
    }
  }

  /// The blobs of each pack (from the first index entry naming the pack).
  public func packs() -> [PackID: [PackedBlob]] {
    var out: [PackID: [PackedBlob]] = [:]
    for f in files {
      for p in f.file.packs where out[p.id] == nil { out[p.id] = p.blobs }
    }
    return out
  }
}

/// The size a pack file must have for the blobs its index entries name: the blobs, the sealed header
/// (37 bytes per entry, 41 when compressed, plus the crypto overhead) and the 4-byte header length.
public func expectedPackSize(_ blobs: [PackedBlob]) -> Int {
  var n = 4 + MasterKey.overhead
  for b in blobs { n += Int(b.length) + (b.isCompressed ? 41 : 37) }
  return n
}

/// Loads every tree reachable from `roots` exactly once, `limit` at a time, and passes it to `visit` (from several
/// tasks at once, in no particular order). A tree that cannot be loaded goes to `failed` when given (and its
/// subtrees are not visited); otherwise the error is thrown.
public func walkTrees(
  _ repo: Repository, roots: [BlobID], limit: Int = 8,
  failed: (@Sendable (BlobID, any Error) -> Void)? = nil,
  visit: @escaping @Sendable (BlobID, Tree) throws -> Void
) async throws {
  _ = try await walkTreeBlobs(repo, roots: roots, limit: limit, failed: failed) { id, tree, _ in try visit(id, tree) }
}

/// `walkTrees` that also passes each tree's stored plaintext (to copy it byte for byte), skips the trees in
/// `seen` and everything below them, and returns `seen` with every tree it reached added (so several walks,
/// one per snapshot, visit each tree once).
///
/// A tree's subtrees are started as soon as it is loaded, not level by level: a long chain of single
/// directories (a deep path, the snapshot's own prefix) is walked beside the wide levels instead of adding
/// one load after another to the walk's length. The most recently found trees go first (depth first), so
/// the trees waiting to be loaded stay few.
public func walkTreeBlobs(
  _ repo: Repository, roots: [BlobID], seen alreadySeen: Set<BlobID> = [], limit: Int = 8,
  failed: (@Sendable (BlobID, any Error) -> Void)? = nil,
  visit: @escaping @Sendable (BlobID, Tree, [UInt8]) async throws -> Void
) async throws -> Set<BlobID> {
  var seen = alreadySeen
  var waiting = Set(roots).filter { seen.insert($0).inserted }.map { $0 }
  try await withThrowingTaskGroup(of: [BlobID].self) { group in
    var running = 0
    while true {
      while running < limit, let id = waiting.popLast() {
        running += 1
        group.addTask {
          let raw: [UInt8]
          let tree: Tree
          do {
            raw = try await repo.loadBlob(id)
            do {
              tree = try Tree(json: raw)
            } catch {
              throw TidemarkError.corrupt("tree \(id.short) is not valid: \(error)")
            }
          } catch {
            guard let failed else { throw error }
            failed(id, error)
            return []
          }
          try await visit(id, tree, raw)
          return tree.nodes.compactMap(\.subtree)
        }
      }
      guard let subtrees = try await group.next() else { break }
      running -= 1
      for id in subtrees where seen.insert(id).inserted { waiting.append(id) }
    }
  }
  return seen
}

/// Every blob (trees and file contents) the given snapshots need.
public func usedBlobs(_ repo: Repository, snapshots: [Snapshot]) async throws -> Set<BlobID> {
  let used = Mutex(Set<BlobID>())
  try await walkTrees(repo, roots: snapshots.map(\.tree)) { id, tree in
    var local: [BlobID] = [id]
    for n in tree.nodes {
      if let c = n.content { local += c }
    }
    used.withLock { $0.formUnion(local) }
  }
  return used.withLock { $0 }
}
