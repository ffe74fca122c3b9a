// What `restore SNAPSHOT[:PATH]` restores and where: the tree (or the one file) at PATH inside the snapshot, and
// the destination, either under a target directory or at the original absolute location (in place).
import Foundation
import TidemarkCore
import TidemarkSystem

public struct RestoreSelection: Sendable {
  /// The tree to restore.
  public var tree: BlobID
  /// When PATH names a file: its name in `tree`.
  public var only: [UInt8]?
  /// The directory node PATH names (its metadata is restored onto the destination).
  public var rootNode: Node?
  /// PATH's components as found in the snapshot.
  public var path: [[UInt8]]
  public var destination: BytePath

  /// Resolves `path` (components) in `snapshot`. `relative`: a path given by a user may name a relative
  /// backup's tree by its absolute path (`backup data` stores `data` at the top). `target`: restore under this
  /// directory; nil: in place.
  public static func resolve(
    _ repo: Repository, _ snapshot: Snapshot, path: [[UInt8]], acceptAbsoluteForRelative: Bool = true,
    target: BytePath?
  ) async throws -> RestoreSelection {
    for c in path where c == [46] || c == [46, 46] {
      throw TidemarkError(.usage, "the path \(BytePath.display(joined(path))) contains . or ..")
    }
    var sub = path
    var tree = snapshot.tree
    var only: [UInt8]? = nil
    var rootNode: Node? = nil
    if acceptAbsoluteForRelative, let first = sub.first, try await repo.loadTree(tree).node(named: first) == nil {
      let top = try await repo.loadTree(tree)
      if let j = sub.indices.first(where: { top.node(named: sub[$0]) != nil }),
        snapshot.paths.contains(where: { BytePath($0).components == Array(sub[...j]) })
      {
        sub = Array(sub[j...])
      }
    }
    for (k, comp) in sub.enumerated() {
      let t = try await repo.loadTree(tree)
      guard let n = t.node(named: comp) else {
        throw TidemarkError(.notFound, "no \(BytePath.display(joined(sub))) in snapshot \(snapshot.id!.short)")
      }
      if let s = n.subtree, n.type == .dir {
        tree = s
        rootNode = n
      } else if k == sub.count - 1 {
        only = comp
      } else {
        throw TidemarkError(
          .notFound, "\(BytePath.display(joined(Array(sub[...k])))) is not a directory in the snapshot")
      }
    }
    let dirComps = only == nil ? sub : Array(sub.dropLast())
    let dest = target ?? originalLocation(dirComps, snapshot.paths)
    return RestoreSelection(
      tree: tree, only: only, rootNode: only == nil ? rootNode : nil, path: sub, destination: dest)
  }

  /// `restore SNAPSHOT --in-place` without PATH: each of the snapshot's paths (or `paths`, when given) restored
  /// to its own place, so `delete` acts inside those paths only and their parents are left alone. A path inside
  /// another one is covered by it and not restored twice.
  public static func eachPath(
    _ repo: Repository, _ snapshot: Snapshot, paths: [String]? = nil
  ) async throws -> [RestoreSelection] {
    let all = (paths ?? snapshot.paths).map { BytePath($0).components }
    var done: [[[UInt8]]] = []
    var out: [RestoreSelection] = []
    for c in all where !done.contains(c) {
      done.append(c)
      if all.contains(where: { $0.count < c.count && Array(c.prefix($0.count)) == $0 }) { continue }
      // An absolute backup path is stored with all its components; a relative one (`backup conf`) with those
      // given, a suffix of the recorded path: the full path first, then ever shorter suffixes.
      var found: RestoreSelection? = nil
      for j in 0..<max(1, c.count) where found == nil {
        do {
          found = try await resolve(
            repo, snapshot, path: Array(c[j...]), acceptAbsoluteForRelative: false, target: nil)
        } catch let e as TidemarkError where e.kind == .notFound && j + 1 < c.count {
          continue
        }
      }
      guard var sel = found else { continue }
      sel.destination = BytePath(bytes: joined(sel.only == nil ? c : Array(c.dropLast())))
      if sel.destination.bytes.isEmpty { sel.destination = BytePath(bytes: [47]) }
      out.append(sel)
    }
    return out
  }

  /// `SNAPSHOT[:PATH]`: the snapshot reference and PATH's components. `.` and `..` are refused, in PATH and in
  /// `path` (components from elsewhere, e.g. a mount path), naming `argument` as given.
  public static func parse(_ argument: String, path: [[UInt8]]? = nil) throws -> (
    snapshot: String, path: [[UInt8]]
  ) {
    let parts = argument.split(separator: ":", maxSplits: 1).map(String.init)
    let sub = path ?? (parts.count > 1 ? Array(parts[1].utf8).split(separator: 47).map(Array.init) : [])
    for c in sub where c == [46] || c == [46, 46] {
      throw TidemarkError(.usage, "the path \(argument) contains . or ..")
    }
    return (parts.first ?? "", sub)
  }

  /// Points `options` at this selection (destination, the one file, the directory's node). A whole tree
  /// restored onto `/` with `delete` is refused: it would remove everything the snapshot does not have.
  /// `preserveRoot: false` (`--no-preserve-root`) lets it go ahead; nil: the caller has no such override.
  public func configure(_ options: inout RestoreOptions, preserveRoot: Bool? = nil) throws {
    if options.delete && preserveRoot != false && destination.bytes == [47] && only == nil {
      throw TidemarkError(
        .usage, "refusing --delete on / (it would remove everything the snapshot does not have)",
        hint: "restore a directory of the snapshot (SNAPSHOT:/srv/data) instead"
          + (preserveRoot == nil ? "" : ", or add --no-preserve-root"))
    }
    (options.target, options.only, options.rootNode) = (destination, only, rootNode)
  }

  /// `/a/b` for ["a", "b"].
  public static func joined(_ comps: [[UInt8]]) -> [UInt8] {
    var out: [UInt8] = []
    for c in comps { out += [47] + c }
    return out
  }

  /// Where the tree path `comps` of a snapshot came from. Absolute backup paths are stored with all
  /// their components; relative ones (`backup data`) with the components given, so the stored path is
  /// a suffix of the recorded absolute path: find the snapshot path that explains `comps`.
  public static func originalLocation(_ comps: [[UInt8]], _ paths: [String]) -> BytePath {
    for p in paths {
      let c = BytePath(p).components
      for j in 0..<max(1, c.count) where j < c.count {
        let stored = Array(c[j...])
        let n = min(stored.count, comps.count)
        if n > 0 && Array(stored[0..<n]) == Array(comps[0..<n]) {
          return BytePath(bytes: joined(Array(c[0..<j]) + comps).isEmpty ? [47] : joined(Array(c[0..<j]) + comps))
        }
      }
    }
    return BytePath(bytes: comps.isEmpty ? [47] : joined(comps))
  }
}
