// Symlinks, fifos, devices and hard links: decided and listed with the files, made after their contents.
import Foundation
import TidemarkCore
import TidemarkSystem

extension Restore {
  /// Compares symlinks, fifos and devices with the disk; those that differ are listed now, before
  /// anything is written, and made once the file contents are.
  func decideSpecials(_ run: inout RunContext) async {
    let real = run.real
    for item in run.others {
      let p = path(item.components)
      let n = item.node
      let st: FileStat? =
        real.contains(Array(item.components.dropLast())) ? try? await Blocking.run { try Sys.lstat(p) } : nil
      if let st {
        if st.isDirectory && !options.delete {
          fail("\(p): a directory stands where the snapshot has a \(n.type.rawValue); add --delete to replace it")
          continue
        }
        let same: Bool
        switch n.type {
        case .symlink: same = st.isSymlink && (try? Sys.readlink(p)) == n.linkTarget
        case .fifo: same = st.fileType == 0o010000
        case .dev: same = st.fileType == 0o060000 && st.rdev == n.device
        case .chardev: same = st.fileType == 0o020000 && st.rdev == n.device
        default: same = true
        }
        if same {
          let c = (try? await Blocking.run { self.metadataChanges(p, st, n, times: n.type != .symlink) }) ?? []
          if !c.isEmpty && n.type != .symlink {
            note(c.code(".", n.type == .symlink ? "L" : "D"), item.components, action: "updated")
            run.keeps.append((item, c))
          }
          continue
        }
      }
      if n.type == .socket { continue }
      let x: Character = n.type == .symlink ? "L" : n.type == .fifo ? "S" : "D"
      note("c\(x)+++++++++", item.components, action: "created", link: n.type == .symlink ? n.linkTarget : nil)
      state.withLock { $0.filesCreated += 1 }
      run.specials.append(item)
    }
  }

  /// Decides the further names of hard-linked files: each becomes a link to the first name unless it
  /// already is one and that name keeps its inode.
  func decideHardLinks(_ run: inout RunContext) async {
    let target = options.target
    let real = run.real
    let renewed = run.renewed
    for (item, first) in run.hardlinks {
      let p = path(item.components)
      let same: Bool =
        renewed.contains(first.bytes) || !real.contains(Array(item.components.dropLast()))
        ? false
        : (try? await Blocking.run {
          guard let a = try? Sys.lstat(p), let b = try? Sys.lstat(first) else { return false }
          return a.isRegular && a.inode == b.inode && a.device == b.device
        }) ?? false
      if same { continue }
      let shown = Array(first.bytes.dropFirst(target.bytes.count + (target.bytes == [47] ? 0 : 1)))
      note("hf+++++++++", item.components, action: "created", link: shown)
      state.withLock { $0.filesCreated += 1 }
      run.links.append((item, first))
    }
  }

  /// Makes the symlinks, fifos and devices that differ from the snapshot.
  func makeSpecials(_ run: RunContext) async {
    for item in run.specials { await makeSpecial(item) }
  }

  /// Hard links are made last: their first name must be complete.
  func makeHardLinks(_ run: RunContext) async {
    for (item, first) in run.links {
      let p = path(item.components)
      do {
        try await Blocking.run {
          let tmp = self.tempPath(p, item.components.last!)
          _ = try first.withCString { a in
            try tmp.withCString { b in try check("link", p.description) { link(a, b) } }
          }
          do {
            try Sys.rename(tmp, p)
          } catch {
            try? Sys.unlink(tmp)
            throw error
          }
        }
        state.withLock { $0.filesRestored += 1 }
      } catch {
        fail("\(p): \(error)")
      }
    }
  }

  func makeSpecial(_ item: Item) async {
    let p = path(item.components)
    let n = item.node
    do {
      let delete = options.delete
      let removed: Int = try await Blocking.run {
        var removed = 0
        if let st = try? Sys.lstat(p), st.isDirectory {
          guard delete else { throw SystemError(EISDIR, "replace", p.description) }
          removed = try Sys.removeTree(p)
        }
        // Made under a temporary name and renamed over whatever stands at the path (atomic).
        let tmp = self.tempPath(p, item.components.last!)
        switch n.type {
        case .symlink:
          _ = try BytePath(bytes: n.linkTarget).withCString { t in
            try tmp.withCString { c in try check("symlink", p.description) { symlink(t, c) } }
          }
        case .fifo:
          _ = try tmp.withCString { c in try check("mkfifo", p.description) { mkfifo(c, 0o600) } }
        case .dev, .chardev:
          let kind: UInt32 = n.type == .dev ? 0o060000 : 0o020000
          _ = try tmp.withCString { c in
            try check("mknod", p.description) { mknod(c, mode_t(kind | 0o600), dev_t(n.device)) }
          }
        case .socket:
          return removed  // sockets are not restorable; restic skips them too
        default:
          return removed
        }
        do {
          try Sys.rename(tmp, p)
        } catch {
          try? Sys.unlink(tmp)
          throw error
        }
        self.applyMetadata(p, n)
        return removed
      }
      _ = removed
      state.withLock { $0.filesRestored += 1 }
    } catch {
      fail("\(p): \(error)")
    }
  }
}
