// How one snapshot differs from the one before it, in the terms ransomware shows up in: the share of files that
// were modified or deleted, and how much of the changed data turned from compressible to incompressible
// (encrypted data does not compress; most of what servers hold does).
//
// The comparison walks both trees and skips every subtree whose ID is the same on both sides, so its cost follows
// the change, not the tree. Compressibility is read from the index, not from the data: a data blob's stored length
// against its plaintext length, as the backup's zstd left them.
import TidemarkCore

public struct ChangeProfile: Sendable, Equatable {
  /// Regular files in the earlier snapshot.
  public var filesBefore = 0
  /// Files in both snapshots whose content differs.
  public var modified = 0
  /// Files of the earlier snapshot that are gone from the later one.
  public var deleted = 0
  /// Files only in the later snapshot.
  public var added = 0
  /// Plaintext size of the modified files' new content.
  public var changedBytes: UInt64 = 0
  /// Of `changedBytes`: files whose old content compressed well and whose new content does not.
  public var turnedIncompressible: UInt64 = 0

  public init() {}

  /// Modified and deleted files as a share of the earlier snapshot's files (0 when it had none).
  public var changedShare: Double {
    filesBefore == 0 ? 0 : Double(modified + deleted) / Double(filesBefore)
  }

  /// The share of the changed bytes that turned incompressible (0 when nothing changed).
  public var incompressibleShare: Double {
    changedBytes == 0 ? 0 : Double(turnedIncompressible) / Double(changedBytes)
  }

  /// Content whose stored size is at most this share of its plaintext compresses well.
  public static let compressible = 0.9
  /// Content whose stored size is at least this share of its plaintext does not compress.
  public static let incompressible = 0.97

  /// Compares the tree of `before` with that of `after` in `repo` (its index loaded).
  public static func compare(_ repo: Repository, before: Snapshot, after: Snapshot) async throws -> ChangeProfile {
    let cache = TreeCache(repo: repo)
    var p = ChangeProfile()
    try await p.compare(cache, before.tree, after.tree)
    return p
  }

  private mutating func compare(_ cache: TreeCache, _ a: BlobID?, _ b: BlobID?) async throws {
    if a == b { return }
    var old: [Node] = []
    var new: [Node] = []
    if let a { old = try await cache.tree(a).nodes }
    if let b { new = try await cache.tree(b).nodes }
    var byName: [[UInt8]: Node] = [:]
    for n in old { byName[n.name] = n }
    for n in new {
      let o = byName.removeValue(forKey: n.name)
      switch (o?.type, n.type) {
      case (.dir?, .dir):
        try await compare(cache, o?.subtree, n.subtree)
      case (.file?, .file):
        filesBefore += 1
        if o?.content != n.content {
          modified += 1
          changedBytes += n.size
          if let ratio = Self.storedRatio(o?.content ?? [], repo: cache.repo), ratio <= Self.compressible,
            let now = Self.storedRatio(n.content ?? [], repo: cache.repo), now >= Self.incompressible
          {
            turnedIncompressible += n.size
          }
        }
      case (.dir?, _):
        try await count(cache, o?.subtree, deleted: true)
        if n.type == .dir { try await compare(cache, nil, n.subtree) } else if n.type == .file { added += 1 }
      case (.file?, _):
        filesBefore += 1
        deleted += 1
        if n.type == .dir { try await compare(cache, nil, n.subtree) }
      default:
        if n.type == .dir { try await compare(cache, nil, n.subtree) } else if n.type == .file { added += 1 }
      }
    }
    for o in byName.values {
      if o.type == .dir {
        try await count(cache, o.subtree, deleted: true)
      } else if o.type == .file {
        filesBefore += 1
        deleted += 1
      }
    }
  }

  /// Counts the files under a subtree that is gone as a whole.
  private mutating func count(_ cache: TreeCache, _ id: BlobID?, deleted gone: Bool) async throws {
    guard let id else { return }
    for n in try await cache.tree(id).nodes {
      if n.type == .dir {
        try await count(cache, n.subtree, deleted: gone)
      } else if n.type == .file {
        filesBefore += 1
        if gone { deleted += 1 }
      }
    }
  }

  /// Stored bytes per plaintext byte of a file's content, from the index; nil for empty content or blobs the
  /// index does not know.
  static func storedRatio(_ content: [BlobID], repo: Repository) -> Double? {
    var stored: UInt64 = 0
    var plain: UInt64 = 0
    for id in content {
      guard let e = repo.index.lookup(id) else { return nil }
      stored += UInt64(max(0, Int(e.blob.length) - MasterKey.overhead))
      plain += UInt64(max(0, e.blob.plainLength))
    }
    return plain == 0 ? nil : Double(stored) / Double(plain)
  }
}
