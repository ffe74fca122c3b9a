// Directories: made first (private), their metadata applied last, deepest first.
import TidemarkCore
import TidemarkSystem

extension Restore {
  /// Makes the snapshot's missing directories, private until their metadata is applied at the end. A
  /// file or link in the way is replaced, never followed. The target itself is compared first, when it
  /// stands for a directory.
  func createDirectories(_ run: RunContext) async throws {
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
    var made: [BytePath] = []
    for (k, c) in looked {
      if let c {
        if !c.isEmpty { note(c.code(".", "d"), items[k].components, dir: true, action: "updated") }
      } else {
        note("cd+++++++++", items[k].components, dir: true, action: "created")
        made.append(path(items[k].components))
      }
    }
    if !options.dryRun && !made.isEmpty {
      try await Blocking.run { [made] in for p in made { try Restore.ensureDirectory(p) } }
    }
  }

  /// Directory metadata goes last, deepest first, so restoring contents does not disturb their times.
  func applyDirectoryMetadata(_ run: RunContext) async {
    for item in run.items.reversed() where item.node.type == .dir {
      let p = path(item.components)
      let n = item.node
      try? await Blocking.run { self.applyMetadata(p, n) }
    }
    let target = options.target
    if let root = options.rootNode { try? await Blocking.run { self.applyMetadata(target, root) } }
  }

  static func ensureDirectory(_ p: BytePath) throws {
    if let st = try? Sys.lstat(p) {
      if st.isDirectory { return }
      // A file or symlink stands where the snapshot has a directory: replace it (never follow it).
      try Sys.unlink(p)
    }
    try Sys.mkdir(p, 0o700)
  }
}
