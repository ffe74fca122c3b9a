// Walking snapshot trees: a bounded cache of parsed trees whose loads are shared and can start ahead of
// need, and a depth-first walk in restic's order. Concurrency: the cache is safe to use from any task; a
// walk calls its closures one at a time, in order. Never prints.
import Synchronization
import TidemarkCore

/// Parsed trees, bounded by their total node count (the first loaded are evicted first). Concurrent requests
/// for one tree share a single load; `prefetch` starts loads that a walk is about to need.
public final class TreeCache: Sendable {
  public let repo: Repository
  private let maxNodes: Int
  private let loads: AsyncSemaphore

  private enum Entry {
    case loading(Task<Tree, any Error>)
    case loaded(Tree)
  }
  private struct State {
    var entries: [BlobID: Entry] = [:]
    var order: [BlobID] = []
    var head = 0
    var nodes = 0
  }
  private let state = Mutex(State())

  public init(repo: Repository, maxNodes: Int = 250_000, concurrentLoads: Int = 8) {
    self.repo = repo
    self.maxNodes = maxNodes
    self.loads = AsyncSemaphore(concurrentLoads)
  }

  public func tree(_ id: BlobID) async throws -> Tree {
    let entry = state.withLock { s -> Entry in
      if let e = s.entries[id] { return e }
      let e = Entry.loading(startLoad(id))
      s.entries[id] = e
      return e
    }
    switch entry {
    case .loaded(let t): return t
    case .loading(let task): return try await task.value
    }
  }

  /// Starts loading the trees not cached yet; errors surface when the tree is asked for.
  public func prefetch(_ ids: some Sequence<BlobID>) {
    state.withLock { s in
      for id in ids where s.entries[id] == nil { s.entries[id] = .loading(startLoad(id)) }
    }
  }

  /// Called with the state locked, so `finish` (which locks) always finds the entry.
  private func startLoad(_ id: BlobID) -> Task<Tree, any Error> {
    Task {
      await loads.acquire()
      let result: Result<Tree, any Error>
      do {
        result = .success(try await repo.loadTree(id))
      } catch {
        result = .failure(error)
      }
      loads.release()
      finish(id, result)
      return try result.get()
    }
  }

  private func finish(_ id: BlobID, _ result: Result<Tree, any Error>) {
    state.withLock { s in
      guard case .success(let tree) = result else {
        s.entries[id] = nil  // a later request tries again
        return
      }
      s.entries[id] = .loaded(tree)
      s.order.append(id)
      s.nodes += tree.nodes.count
      while s.nodes > maxNodes && s.head < s.order.count {
        let old = s.order[s.head]
        s.head += 1
        if case .loaded(let t) = s.entries[old] {
          s.entries[old] = nil
          s.nodes -= t.nodes.count
        }
      }
      if s.head > 4096 && s.head * 2 > s.order.count {
        s.order.removeFirst(s.head)
        s.head = 0
      }
    }
  }
}

public enum WalkAction: Sendable {
  case descend
  /// Do not walk this directory's contents.
  case skip
}

public enum TreeWalk {
  /// Walks the tree `root` depth first, nodes in bytewise name order, each directory before its contents: the
  /// order restic's walker visits. `visit` gets the node's absolute path (`/a/b`) and the ID of the tree that
  /// holds it; `unreadable` gets each tree that could not be loaded (its path; `/` for the root) and may throw to
  /// end the walk. The next few subtrees are loaded ahead while the walk goes on.
  public static func walk(
    _ root: BlobID, cache: TreeCache, lookahead: Int = 8,
    visit: (_ path: [UInt8], _ node: Node, _ parent: BlobID) async throws -> WalkAction,
    unreadable: (_ path: [UInt8], _ tree: BlobID, _ error: any Error) async throws -> Void
  ) async throws {
    let top: Tree
    do {
      top = try await cache.tree(root)
    } catch {
      try await unreadable([47], root, error)
      return
    }
    try await walk(top, root, prefix: [], cache: cache, lookahead: lookahead, visit: visit, unreadable: unreadable)
  }

  private static func walk(
    _ tree: Tree, _ id: BlobID, prefix: [UInt8], cache: TreeCache, lookahead: Int,
    visit: (_ path: [UInt8], _ node: Node, _ parent: BlobID) async throws -> WalkAction,
    unreadable: (_ path: [UInt8], _ tree: BlobID, _ error: any Error) async throws -> Void
  ) async throws {
    let nodes = sortedNodes(tree)
    let subtrees = nodes.compactMap { $0.type == .dir ? $0.subtree : nil }
    var seenDirs = 0
    for n in nodes {
      try Task.checkCancellation()
      let path = prefix + [47] + n.name
      let action = try await visit(path, n, id)
      guard n.type == .dir else { continue }
      guard let sub = n.subtree else {
        try await unreadable(path, id, TidemarkError.corrupt("directory \(n.nameString) has no subtree"))
        continue
      }
      seenDirs += 1
      guard action == .descend else { continue }
      if lookahead > 0 {
        cache.prefetch(subtrees[(seenDirs - 1)..<min(subtrees.count, seenDirs - 1 + lookahead)])
      }
      let t: Tree
      do {
        t = try await cache.tree(sub)
      } catch {
        try await unreadable(path, sub, error)
        continue
      }
      try await walk(t, sub, prefix: path, cache: cache, lookahead: lookahead, visit: visit, unreadable: unreadable)
    }
  }

  /// A tree's nodes in bytewise name order (restic stores them so; this guards against trees that are not).
  static func sortedNodes(_ tree: Tree) -> [Node] {
    var sorted = true
    for i in tree.nodes.indices.dropFirst() where !tree.nodes[i - 1].name.lexicographicallyPrecedes(tree.nodes[i].name)
    {
      sorted = false
      break
    }
    return sorted ? tree.nodes : tree.nodes.sorted { $0.name.lexicographicallyPrecedes($1.name) }
  }
}
