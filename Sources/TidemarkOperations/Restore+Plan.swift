// Planning: the snapshot's entries to restore, filtered and checked for unsafe or duplicate names,
// before the disk is looked at.
import Foundation
import Synchronization
import TidemarkCore
import TidemarkSystem

extension Restore {
  /// Collects what the snapshot holds below `tree`, after loading its trees several at a time (the walk
  /// in `plan` goes one by one) unless filters or a single entry mean only part of it is needed.
  func planRun(tree: BlobID) async throws -> RunContext {
    var run = RunContext()
    var loaded: [BlobID: Tree] = [:]
    if options.only == nil && options.includes.isEmpty {
      let trees = Mutex<[BlobID: Tree]>([:])
      try await walkTrees(repo, roots: [tree]) { id, t in trees.withLock { $0[id] = t } }
      loaded = trees.withLock { $0 }
    }
    try await plan(tree: tree, prefix: [], into: &run.items, names: &run.known, loaded: loaded)
    return run
  }

  static func validName(_ n: [UInt8]) -> Bool {
    !n.isEmpty && n != [46] && n != [46, 46] && !n.contains(47) && !n.contains(0)
  }

  func selected(_ comps: [[UInt8]], isDir: Bool) -> (take: Bool, descend: Bool) {
    if options.excludes.contains(where: { $0.matches(comps) }) { return (false, false) }
    if options.includes.isEmpty { return (true, true) }
    if options.includes.contains(where: { $0.matches(comps) }) { return (true, true) }
    let below = isDir && options.includes.contains { $0.couldMatchBelow(comps) }
    return (false, below)
  }

  /// Walks the tree, collecting items in depth-first order, and for every directory visited the
  /// names the snapshot has in it (what `delete` must leave alone).
  func plan(
    tree id: BlobID, prefix: [[UInt8]], into items: inout [Item], names known: inout [[[UInt8]]: Set<[UInt8]>],
    loaded: [BlobID: Tree] = [:]
  ) async throws {
    let tree: Tree
    if let t = loaded[id] { tree = t } else { tree = try await repo.loadTree(id) }
    var seen = Set<[UInt8]>()
    for n in tree.nodes {
      guard Restore.validName(n.name) else {
        state.withLock {
          $0.errors.append("skipping entry with unsafe name \(BytePath.display(n.name)) in tree \(id.short)")
        }
        continue
      }
      guard seen.insert(n.name).inserted else {
        // restic's trees hold each name once; two entries of one name (say a symlink and a directory)
        // could make a restore write through the link. Refuse the whole tree.
        throw TidemarkError.corrupt(
          "tree \(id.short) has two entries named \(BytePath.display(n.name)); refusing to restore it",
          hint: "the snapshot is damaged or was not written by restic or tidemark")
      }
      if prefix.isEmpty, let only = options.only, n.name != only { continue }
      let comps = prefix + [n.name]
      let (take, descend) = selected(comps, isDir: n.type == .dir)
      if n.type == .dir {
        if take || descend {
          // A directory that is only traversed is still created, to hold what is selected below it.
          let at = items.count
          items.append(Item(components: comps, node: n))
          let before = items.count
          if let sub = n.subtree {
            try await plan(tree: sub, prefix: comps, into: &items, names: &known, loaded: loaded)
          }
          if !take && items.count == before { items.remove(at: at) }
        }
      } else if take {
        items.append(Item(components: comps, node: n))
      }
    }
    known[prefix] = seen
  }
}
