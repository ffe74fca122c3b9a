// Directories: made first (private), their metadata applied last, deepest first.
import TidemarkCore
import TidemarkSystem

extension Restore {
  /// Decides which of the snapshot's directories are missing and lists every directory change; returns the
  /// missing ones by depth, for `makeDirectories`. The target itself is compared first, when it stands for a
  /// directory.
  func decideDirectories(_ run: RunContext) async throws -> [Int: [BytePath]] {
    let target = options.target
    if let root = options.rootNode, let st = try? await Blocking.run({ try Sys.lstat(target) }), st.isDirectory {
      let c = (try? await Blocking.run { self.metadataChanges(target, st, root) }) ?? []
      if !c.isEmpty { note(c.code(".", "d"), [], dir: true, action: "updated") }
    }
    let items = run.items
    let real = run.real
    // nil: the directory is to be made (nothing, or something else, stands there).
    let looked: [(Int, Changes?)] = try await Blocking.run { [items] in
      items.indices.filter { items[$0].node.type == .dir }.map { k in
        let p = self.path(items[k].components)
        guard real.contains(items[k].components), let st = try? Sys.lstat(p), st.isDirectory else { return (k, nil) }
        return (k, self.metadataChanges(p, st, items[k].node))
      }
    }
    var made: [Int: [BytePath]] = [:]  // by depth
    for (k, c) in looked {
      if let c {
        if !c.isEmpty { note(c.code(".", "d"), items[k].components, dir: true, action: "updated") }
      } else {
        note("cd+++++++++", items[k].components, dir: true, action: "created")
        made[items[k].components.count, default: []].append(path(items[k].components))
      }
    }
    return options.dryRun ? [:] : made
  }

  /// Makes the missing directories (`decideDirectories`), private until their metadata is applied at the end. A
  /// file or link in the way is replaced, never followed. Only paths the snapshot has as directories are
  /// touched: this runs beside the files' decisions, which touch only paths it has as files.
  func makeDirectories(_ made: [Int: [BytePath]]) async throws {
    // Parents before children: depth by depth, each depth shared among the cores.
    let cores = Restore.packLimit
    for depth in made.keys.sorted() {
      let dirs = made[depth]!
      try await forEachConcurrently(Restore.shares(dirs, among: cores), limit: cores) { share in
        try await Blocking.run { for p in share { try Restore.ensureDirectory(p) } }
      }
    }
  }

  /// Directory metadata goes last, so restoring contents does not disturb their times; deepest first, so a mode
  /// without search permission does not lock a user out of what is below before it is done. The directories of
  /// one depth do not touch each other (chmod, chown and utimensat change only the directory's own inode): each
  /// depth is shared among the cores, in one blocking hop per share.
  func applyDirectoryMetadata(_ run: RunContext) async {
    var byDepth: [Int: [(BytePath, Node)]] = [:]
    for item in run.items where item.node.type == .dir {
      byDepth[item.components.count, default: []].append((path(item.components), item.node))
    }
    let cores = Restore.packLimit
    for depth in byDepth.keys.sorted(by: >) {
      let dirs = byDepth[depth]!
      try? await forEachConcurrently(Restore.shares(dirs, among: cores), limit: cores) { share in
        try? await Blocking.run { for (p, n) in share { self.applyMetadata(p, n) } }
      }
    }
    let target = options.target
    if let root = options.rootNode { try? await Blocking.run { self.applyMetadata(target, root) } }
  }

  static func ensureDirectory(_ p: BytePath) throws {
    // Mostly nothing stands there: one mkdir, and a look only when something does.
    if try Sys.makeDirectory(p, 0o700) { return }
    if let st = try? Sys.lstat(p), st.isDirectory { return }
    // A file or symlink stands where the snapshot has a directory: replace it (never follow it).
    try Sys.unlink(p)
    try Sys.mkdir(p, 0o700)
  }
}
