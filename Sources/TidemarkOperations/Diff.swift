// Comparing two snapshot trees the way `restic diff` (0.14) does: the changes in path order, and what was
// added and removed. Reports changes through a closure; never prints.
import TidemarkCore

public struct DiffChange: Sendable {
  /// Absolute path; directories end in `/`.
  public var path: [UInt8]
  /// `+` added, `-` removed, `M` content modified, `T` type changed, `U` metadata changed (`TU` both).
  public var modifier: String

  /// restic's `diff --json` line: `{"message_type":"change","path":…,"modifier":…}`.
  public var json: [UInt8] {
    var w = JSONWriter()
    w.raw("{\"message_type\":\"change\",\"path\":")
    w.string(path)
    w.raw(",\"modifier\":")
    w.string(modifier)
    w.raw("}\n")
    return w.out
  }
}

public struct DiffCounts: Sendable {
  public var files = 0
  public var dirs = 0
  public var others = 0
  public var dataBlobs = 0
  public var treeBlobs = 0
  /// Plaintext (uncompressed) size of those blobs.
  public var bytes: UInt64 = 0

  mutating func add(_ n: Node) {
    switch n.type {
    case .file: files += 1
    case .dir: dirs += 1
    default: others += 1
    }
  }
}

public struct DiffStatistics: Sendable {
  public var changedFiles = 0
  public var added = DiffCounts()
  public var removed = DiffCounts()
  /// Problems restic only warns about (an unreadable subtree, a blob missing from the index).
  public var warnings: [String] = []

  /// restic's `diff --json` closing line, naming the two snapshots as they were given.
  public func json(source: String, target: String) -> [UInt8] {
    var w = JSONWriter()
    w.raw("{\"message_type\":\"statistics\",\"source_snapshot\":")
    w.string(source)
    w.raw(",\"target_snapshot\":")
    w.string(target)
    w.raw(",\"changed_files\":")
    w.number(changedFiles)
    for (key, c) in [("added", added), ("removed", removed)] {
      w.raw(",\"\(key)\":{\"files\":\(c.files),\"dirs\":\(c.dirs),\"others\":\(c.others)")
      w.raw(",\"data_blobs\":\(c.dataBlobs),\"tree_blobs\":\(c.treeBlobs),\"bytes\":\(c.bytes)}")
    }
    w.raw("}\n")
    return w.out
  }
}

public struct SnapshotDiff {
  private struct Handle: Hashable {
    var id: BlobID
    var type: BlobType
  }

  let cache: TreeCache
  let metadata: Bool
  private var stats = DiffStatistics()
  private var before = Set<Handle>()
  private var after = Set<Handle>()
  private var common = Set<Handle>()

  /// Compares tree `from` with tree `to`, calling `report` for each change in restic's order. With `metadata`,
  /// nodes whose metadata (mode, times, owner, inode, links, extended attributes …) differ are reported as `U`.
  public static func compare(
    _ from: BlobID, _ to: BlobID, cache: TreeCache, metadata: Bool, report: (DiffChange) -> Void
  ) async throws -> DiffStatistics {
    var d = SnapshotDiff(cache: cache, metadata: metadata)
    d.before.insert(Handle(id: from, type: .tree))
    d.after.insert(Handle(id: to, type: .tree))
    try await d.diffTree(prefix: [], from, to, report)
    let both = d.before.intersection(d.after)
    d.count(d.before.subtracting(both).subtracting(d.common), into: \.removed)
    d.count(d.after.subtracting(both).subtracting(d.common), into: \.added)
    return d.stats
  }

  private mutating func count(_ blobs: Set<Handle>, into side: WritableKeyPath<DiffStatistics, DiffCounts>) {
    for h in blobs {
      if h.type == .data { stats[keyPath: side].dataBlobs += 1 } else { stats[keyPath: side].treeBlobs += 1 }
      guard let e = cache.repo.index.lookup(h.id), e.blob.type == h.type else {
        stats.warnings.append("unable to find blob size for <\(h.type.name)/\(h.id.short)>")
        continue
      }
      stats[keyPath: side].bytes += UInt64(e.blob.plainLength)
    }
  }

  private static func addBlobs(_ set: inout Set<Handle>, _ n: Node?) {
    guard let n else { return }
    if n.type == .file {
      for b in n.content ?? [] { set.insert(Handle(id: b, type: .data)) }
    } else if n.type == .dir, let s = n.subtree {
      set.insert(Handle(id: s, type: .tree))
    }
  }

  private static func join(_ prefix: [UInt8], _ name: [UInt8], dir: Bool) -> [UInt8] {
    prefix + [47] + name + (dir ? [47] : [])
  }

  private mutating func diffTree(
    prefix: [UInt8], _ id1: BlobID, _ id2: BlobID, _ report: (DiffChange) -> Void
  ) async throws {
    let t1 = try await cache.tree(id1)
    let t2 = try await cache.tree(id2)
    var nodes1: [[UInt8]: Node] = [:]
    var nodes2: [[UInt8]: Node] = [:]
    for n in t1.nodes { nodes1[n.name] = n }
    for n in t2.nodes { nodes2[n.name] = n }
    let names = Set(nodes1.keys).union(nodes2.keys).sorted { $0.lexicographicallyPrecedes($1) }
    for name in names {
      let n1 = nodes1[name]
      let n2 = nodes2[name]
      SnapshotDiff.addBlobs(&before, n1)
      SnapshotDiff.addBlobs(&after, n2)
      switch (n1, n2) {
      case (let n1?, let n2?):
        let path = SnapshotDiff.join(prefix, name, dir: n2.type == .dir)
        var mod = n1.type != n2.type ? "T" : ""
        if n1.type == .file && n2.type == .file && n1.content != n2.content {
          mod += "M"
          stats.changedFiles += 1
        } else if metadata && !n1.sameMetadata(n2) {
          mod += "U"
        }
        if !mod.isEmpty { report(DiffChange(path: path, modifier: mod)) }
        if n1.type == .dir && n2.type == .dir, let s1 = n1.subtree, let s2 = n2.subtree {
          do {
            if s1 == s2 {
              try await collect(s1)
            } else {
              try await diffTree(prefix: Array(path.dropLast()), s1, s2, report)
            }
          } catch let e as CancellationError {
            throw e
          } catch {
            stats.warnings.append("error: \(error)")
          }
        }
      case (let n1?, nil):
        try await reportAll(n1, prefix: prefix, modifier: "-", side: \.removed, report)
      case (nil, let n2?):
        try await reportAll(n2, prefix: prefix, modifier: "+", side: \.added, report)
      case (nil, nil):
        break
      }
    }
  }

  /// Reports `n` and everything below it as added or removed.
  private mutating func reportAll(
    _ n: Node, prefix: [UInt8], modifier: String, side: WritableKeyPath<DiffStatistics, DiffCounts>,
    _ report: (DiffChange) -> Void
  ) async throws {
    let path = SnapshotDiff.join(prefix, n.name, dir: n.type == .dir)
    report(DiffChange(path: path, modifier: modifier))
    stats[keyPath: side].add(n)
    guard n.type == .dir, let sub = n.subtree else { return }
    do {
      for c in try await cache.tree(sub).nodes {
        if modifier == "+" { SnapshotDiff.addBlobs(&after, c) } else { SnapshotDiff.addBlobs(&before, c) }
        try await reportAll(c, prefix: Array(path.dropLast()), modifier: modifier, side: side, report)
      }
    } catch let e as CancellationError {
      throw e
    } catch {
      stats.warnings.append("error: \(error)")
    }
  }

  /// Marks every blob below an unchanged directory as common to both sides.
  private mutating func collect(_ id: BlobID) async throws {
    for n in try await cache.tree(id).nodes {
      SnapshotDiff.addBlobs(&common, n)
      if n.type == .dir, let s = n.subtree {
        do {
          try await collect(s)
        } catch let e as CancellationError {
          throw e
        } catch {
          stats.warnings.append("error: \(error)")
        }
      }
    }
  }
}

extension Node {
  /// restic 0.14's `Node.Equals`: every stored field (times as instants; extended attributes as a set).
  public func sameMetadata(_ o: Node) -> Bool {
    guard name == o.name, type == o.type, mode == o.mode, mtime == o.mtime, atime == o.atime, ctime == o.ctime,
      uid == o.uid, gid == o.gid, user == o.user, group == o.group, inode == o.inode, deviceID == o.deviceID,
      size == o.size, links == o.links, linkTarget == o.linkTarget, device == o.device, content == o.content,
      subtree == o.subtree, xattrs.count == o.xattrs.count
    else { return false }
    var mine: [[UInt8]: [UInt8]] = [:]
    for x in xattrs { mine[x.name] = x.value }
    var present = Set<[UInt8]>()
    for x in o.xattrs {
      guard let v = mine[x.name], v == x.value else { return false }
      present.insert(x.name)
    }
    return present.count == mine.count
  }
}
