// A backup driven by a change journal (see ChangeJournal): only the directories the journal names are listed
// again; everywhere else the parent snapshot's subtrees are kept without visiting them, and only the trees on
// the way from a changed directory to the root are encoded again. The result is byte for byte the tree a full
// walk of the same state gives, with one exception by design: access times of entries that were not visited
// are those of the parent snapshot (reads are not changes). When something the journal cannot vouch for shows
// up (a file with several names changed, a directory left without a trace), the backup throws `JournalDoubt`
// and the caller walks the whole tree.
import TidemarkCore
import TidemarkSystem

/// A journal-driven backup met a change the journal cannot vouch for: a full walk is needed.
public struct JournalDoubt: Error, CustomStringConvertible, Sendable {
  public var reason: String
  public init(reason: String) { self.reason = reason }
  public var description: String { reason }
}

/// The journal's changes, arranged for the walk.
struct JournalPlan: Sendable {
  var dirty: Set<BytePath>
  var fresh: Set<BytePath>
  /// Every directory above a dirty or fresh one.
  var ancestors: Set<BytePath> = []
  var hardLinks: Bool
  var doubt: String?

  init(_ c: ChangeJournal.Changes, hardLinks: Bool) {
    dirty = Set(c.dirty.map(JournalPlan.normal))
    fresh = Set(c.fresh.map(JournalPlan.normal))
    self.hardLinks = hardLinks
    doubt = c.doubt
    for p in dirty.union(fresh) {
      var q = p
      while q.bytes.count > 1 {
        q = q.parent
        if !ancestors.insert(q).inserted { break }
      }
    }
  }

  static func normal(_ p: BytePath) -> BytePath {
    p.bytes.count > 1 && p.bytes.last == 47 ? BytePath(bytes: Array(p.bytes.dropLast())) : p
  }

  func check(parent: Snapshot, options: BackupOptions) throws {
    if let doubt { throw JournalDoubt(reason: doubt) }
    if parent.excludes != options.excludes.map(\.text) {
      throw JournalDoubt(reason: "the exclude patterns differ from the parent snapshot's")
    }
  }

  /// In a listed directory: entries gone or replaced since the parent snapshot. A file with several names that
  /// lost one leaves its other names stale; so may a directory removed from a tree that holds such files.
  func checkRemoved(in path: BytePath, old: [Node], now: [([UInt8], FileStat)]) throws {
    guard !old.isEmpty else { return }
    var present: [[UInt8]: FileStat] = [:]
    for (n, st) in now { present[n] = st }
    for o in old {
      let st = present[o.name]
      let replaced = st.map { $0.inode != o.inode } ?? true
      guard replaced else { continue }
      if o.type == .file && o.links > 1 {
        throw JournalDoubt(reason: "\(path.appending(o.name)) had \(o.links) names and was removed or replaced")
      }
      if o.type == .dir && hardLinks {
        throw JournalDoubt(
          reason: "\(path.appending(o.name)) was removed or replaced, and the tree holds files with several names")
      }
    }
  }
}

extension Backup {
  /// A directory in a journal-driven backup.
  func journalDirectory(path: BytePath, node: Node, parentNode: Node?, plan: JournalPlan) async throws -> PendingNode {
    // Nothing is known of a directory that is new here, was made or moved in since, or is not the same one.
    guard let old = parentNode, old.type == .dir, let oldTree = old.subtree, old.inode == node.inode,
      !plan.fresh.contains(path)
    else {
      return try await directory(path: path, node: node, parentNode: parentNode, journal: false)
    }
    if plan.dirty.contains(path) {
      return try await directory(path: path, node: node, parentNode: parentNode, journal: true)
    }
    if plan.ancestors.contains(path) {
      return try await passThrough(path: path, node: node, oldTree: oldTree)
    }
    // Untouched below. Its own entries unchanged means its modification and change times are too: a directory
    // whose times moved without an event (a chmod, say) is walked.
    guard old.mtime == node.mtime, old.ctime == node.ctime else {
      return try await directory(path: path, node: node, parentNode: parentNode, journal: false)
    }
    var n = node
    n.subtree = oldTree
    state.withLock { $0.dirsUnmodified += 1 }
    return .ready(n)
  }

  /// A directory above changed ones, itself unchanged: its entries are the parent snapshot's, except the
  /// directories on the way down to a change, which are looked at again.
  func passThrough(path: BytePath, node: Node, oldTree: BlobID) async throws -> PendingNode {
    guard let plan = journal else { preconditionFailure("passThrough outside a journal-driven backup") }
    let tree = try await repo.loadTree(oldTree)
    var children: [PendingNode] = []
    children.reserveCapacity(tree.nodes.count)
    for old in tree.nodes {
      let childPath = path.appending(old.name)
      guard old.type == .dir,
        plan.dirty.contains(childPath) || plan.ancestors.contains(childPath) || plan.fresh.contains(childPath)
      else {
        children.append(.ready(old))
        continue
      }
      let names = self.names
      let found: (FileStat, Node)? = try await Blocking.run {
        guard let st = try? Sys.lstat(childPath) else { return nil }
        return (st, try Node.from(path: childPath, name: old.name, stat: st, names: names))
      }
      guard let (st, fresh) = found else {
        throw JournalDoubt(reason: "\(childPath) is gone but \(path) did not change")
      }
      children.append(
        try await entry(path: childPath, name: old.name, stat: st, parentNode: old, node: fresh, journal: true))
    }
    return assemble(node: node, children: children, parentSubtree: oldTree)
  }
}
