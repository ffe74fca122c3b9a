// Listing a snapshot's files (`restic ls`): the walk limited to chosen directories, restic's JSON documents for
// the snapshot and each node, and the mode string of the long listing. Nodes go to a closure; never prints.
import TidemarkCore

/// Which nodes `ls` shows and which directories it enters: all of them without directories given; otherwise
/// the entries of those directories (their whole subtrees when recursive), and the directories on the way.
public struct ListingFilter: Sendable {
  /// The directories given, as components (`/srv/www` → ["srv", "www"]).
  public var dirs: [[[UInt8]]]
  public var recursive: Bool

  public init(dirs: [String], recursive: Bool) {
    self.dirs = dirs.map { Array($0.utf8).split(separator: 47).map(Array.init) }
    self.recursive = recursive
  }

  /// Whether the node at `comps` is listed, and whether the walk enters it.
  public func wanted(_ comps: [[UInt8]]) -> (show: Bool, descend: Bool) {
    if dirs.isEmpty { return (true, true) }
    var show = false
    var descend = false
    for f in dirs {
      if comps.count <= f.count && Array(f.prefix(comps.count)) == comps { descend = true }  // on the way
      if comps.count > f.count && Array(comps.prefix(f.count)) == f {
        if recursive || comps.count == f.count + 1 { show = true }
        if recursive { descend = true }
      }
    }
    return (show, descend)
  }
}

public enum Listing {
  /// Walks `tree` in stored order and calls `visit` with each listed node and its absolute path.
  public static func walk(
    _ repo: Repository, _ tree: BlobID, filter: ListingFilter, visit: (_ path: [UInt8], _ node: Node) -> Void
  ) async throws {
    try await walk(repo, tree, prefix: [], filter: filter, visit: visit)
  }

  private static func walk(
    _ repo: Repository, _ tree: BlobID, prefix: [[UInt8]], filter: ListingFilter,
    visit: (_ path: [UInt8], _ node: Node) -> Void
  ) async throws {
    for n in try await repo.loadTree(tree).nodes {
      let comps = prefix + [n.name]
      let (show, descend) = filter.wanted(comps)
      if show { visit([47] + Array(comps.joined(separator: [47])), n) }
      if descend, n.type == .dir, let sub = n.subtree {
        try await walk(repo, sub, prefix: comps, filter: filter, visit: visit)
      }
    }
  }

  /// restic's `ls --json` first line: the snapshot's stored fields, its IDs and `"struct_type":"snapshot"`.
  public static func snapshotJSON(_ s: Snapshot) -> [UInt8] {
    var w = JSONWriter()
    w.out = s.encode()
    w.out.removeLast()
    w.raw(",\"id\":\"\(s.id!.hex)\",\"short_id\":\"\(s.id!.short)\",\"struct_type\":\"snapshot\"}\n")
    return w.out
  }

  /// restic's `ls --json` line for a node.
  public static func nodeJSON(_ n: Node, path: [UInt8]) -> [UInt8] {
    var w = JSONWriter()
    w.raw("{\"name\":")
    w.string(n.name)
    w.raw(",\"type\":\"\(n.type.rawValue)\",\"path\":")
    w.string(path)
    w.raw(",\"uid\":\(n.uid),\"gid\":\(n.gid)")
    if n.type == .file { w.raw(",\"size\":\(n.size)") }
    w.raw(",\"mode\":\(n.mode),\"permissions\":\"\(permissions(n.mode))\"")
    w.raw(
      ",\"mtime\":\"\(n.mtime.rfc3339Nano)\",\"atime\":\"\(n.atime.rfc3339Nano)\",\"ctime\":\"\(n.ctime.rfc3339Nano)\""
    )
    w.raw(",\"struct_type\":\"node\"}\n")
    return w.out
  }

  /// `drwxr-xr-x` from a Go FileMode: one type letter (d, L, c, D, p, S or -), then the permission bits.
  public static func permissions(_ m: UInt32) -> String {
    var s: String
    if m & GoMode.dir != 0 {
      s = "d"
    } else if m & GoMode.symlink != 0 {
      s = "L"
    } else if m & GoMode.charDevice != 0 {
      s = "c"
    } else if m & GoMode.device != 0 {
      s = "D"
    } else if m & GoMode.namedPipe != 0 {
      s = "p"
    } else if m & GoMode.socket != 0 {
      s = "S"
    } else {
      s = "-"
    }
    let rwx = Array("rwxrwxrwx")
    for i in 0..<9 { s.append(m & (1 << (8 - i)) != 0 ? rwx[i] : "-") }
    return s
  }

  /// restic's `key list --json`: `[{"current","id","userName","hostName","created"}]` on one line; `current` is
  /// the key file the repository was opened with.
  public static func keysJSON(_ keys: [(String, KeyFile)], current: String?) -> String {
    var w = JSONWriter()
    w.raw("[")
    for (i, (name, k)) in keys.enumerated() {
      if i > 0 { w.comma() }
      w.raw("{\"current\":\(name == current),\"id\":\"\(name)\",\"userName\":")
      w.string(k.username)
      w.raw(",\"hostName\":")
      w.string(k.hostname)
      w.raw(",\"created\":\"\(Human.time(k.created))\"}")
    }
    w.raw("]")
    return String(decoding: w.out, as: UTF8.self)
  }

  /// `snapshots --latest N`: the newest `n` snapshots of each host and path set, oldest first.
  public static func latest(_ snaps: [Snapshot], perGroup n: Int) -> [Snapshot] {
    var groups: [String: [Snapshot]] = [:]
    for s in snaps { groups[s.hostname + "\0" + s.paths.sorted().joined(separator: "\0"), default: []].append(s) }
    return groups.values.flatMap { $0.suffix(n) }.sorted { $0.time < $1.time }
  }

  /// restic's `snapshots --json`: the snapshots as a JSON array, one line.
  public static func snapshotsJSON(_ snaps: [Snapshot]) -> [UInt8] {
    var w = JSONWriter()
    w.raw("[")
    for (i, s) in snaps.enumerated() {
      if i > 0 { w.comma() }
      s.listingJSON(into: &w)
    }
    w.raw("]\n")
    return w.out
  }
}
