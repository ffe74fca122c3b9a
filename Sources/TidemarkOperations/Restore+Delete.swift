// Deletion: what stands in the snapshot's directories on disk but not in the snapshot, and our own
// leftover temp files. Deleting never follows a symlink.
import TidemarkSystem

extension Restore {
  /// Lists, in one blocking hop, every directory of the snapshot that is a real directory on disk
  /// reached through real directories (recorded in `run.real`): where a symlink stands for a directory
  /// of the snapshot, what it points to is none of our business (`createDirectories` replaces the link).
  func listRealDirectories(_ run: inout RunContext) async throws -> [([[UInt8]], [[UInt8]])] {
    var dirs: [[[UInt8]]] = options.only == nil ? [[]] : []
    for item in run.items where item.node.type == .dir { dirs.append(item.components) }
    let (real, listings) = try await Blocking.run { [dirs] in
      // Parents come before their children (`plan` is depth first, pre-order).
      var real: Set<[[UInt8]]> = [[]]
      var listings: [([[UInt8]], [[UInt8]])] = []
      for comps in dirs {
        if !comps.isEmpty {
          guard real.contains(Array(comps.dropLast())), let st = try? Sys.lstat(self.path(comps)), st.isDirectory
          else { continue }
          real.insert(comps)
        }
        listings.append((comps, (try? Sys.readDirectory(self.path(comps))) ?? []))
      }
      return (real, listings)
    }
    run.real = real
    return listings
  }

  /// Deletions come first (they free space): in each listed directory, what the snapshot does not have
  /// goes with `delete`, unless filters exclude it; our own temp files left by an interrupted restore go
  /// with or without it.
  func deleteExtraneous(_ listings: [([[UInt8]], [[UInt8]])], known: [[[UInt8]]: Set<[UInt8]>]) async {
    let dry = options.dryRun
    for (comps, local) in listings {
      let p = path(comps)
      let keep = known[comps] ?? []
      for name in local.sorted(by: { $0.lexicographicallyPrecedes($1) }) where !keep.contains(name) {
        let c = comps + [name]
        let ours = name.starts(with: Restore.tempPrefix)
        if !ours {
          guard options.delete else { continue }
          let isDir = (try? Sys.lstat(p.appending(name)))?.isDirectory ?? false
          let (take, descend) = selected(c, isDir: isDir)
          guard take || (descend && options.includes.isEmpty) else { continue }
          note("*deleting  ", c, dir: isDir, action: "deleted")
        }
        // Counted as listed: one per removed name (a directory counts once, whatever it held).
        if !ours { state.withLock { $0.entriesDeleted += 1 } }
        if dry { continue }
        do {
          _ = try await Blocking.run { try Sys.removeTree(p.appending(name)) }
        } catch {
          fail("\(p.appending(name)): cannot delete: \(error)")
        }
      }
    }
  }
}
