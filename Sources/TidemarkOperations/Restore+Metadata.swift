// Metadata: what differs from the snapshot (rsync's itemize letters), and applying it: ownership as
// root, xattrs, mode, then times. Blocking, best effort.
import Foundation
import Synchronization
import TidemarkCore
import TidemarkSystem

extension Restore {
  /// What differs between an existing entry and its node, as rsync's itemize letters.
  struct Changes: OptionSet, Sendable {
    let rawValue: Int
    static let content = Changes(rawValue: 1)
    static let size = Changes(rawValue: 2)
    static let time = Changes(rawValue: 4)
    static let perms = Changes(rawValue: 8)
    static let owner = Changes(rawValue: 16)
    static let group = Changes(rawValue: 32)
    static let xattrs = Changes(rawValue: 64)

    func code(_ y: Character, _ x: Character) -> String {
      var c = [y, x, ".", ".", ".", ".", ".", ".", ".", ".", "."]
      if contains(.content) { c[2] = "c" }
      if contains(.size) { c[3] = "s" }
      if contains(.time) { c[4] = "t" }
      if contains(.perms) { c[5] = "p" }
      if contains(.owner) { c[6] = "o" }
      if contains(.group) { c[7] = "g" }
      if contains(.xattrs) { c[10] = "x" }
      return String(c)
    }
  }

  /// Blocking: metadata differences (mode, ownership as root, mtime, user xattrs) of an existing entry.
  func metadataChanges(_ p: BytePath, _ st: FileStat, _ n: Node, times: Bool = true) -> Changes {
    var c: Changes = []
    if st.mode & 0o7777 != GoMode.permissions(n.mode) && n.type != .symlink { c.insert(.perms) }
    if isRoot {
      var uid = n.uid
      var gid = n.gid
      if let u = names.uid(named: n.user) { uid = u }
      if let g = names.gid(named: n.group) { gid = g }
      if st.uid != uid { c.insert(.owner) }
      if st.gid != gid { c.insert(.group) }
    }
    if times && (st.mtime.0 != n.mtime.seconds || Int64(st.mtime.1) != Int64(n.mtime.nanoseconds)) {
      c.insert(.time)
    }
    if n.type != .symlink {
      let have = ((try? Sys.extendedAttributes(p)) ?? []).filter { !$0.name.starts(with: Array("security.".utf8)) }
      let want = n.xattrs
      if have.count != want.count
        || !want.allSatisfy({ w in have.contains { $0.name == w.name && $0.value == w.value } })
      {
        c.insert(.xattrs)
      }
    }
    return c
  }

  /// Entries that stayed get their differing metadata after everything was written.
  func applyKeptMetadata(_ run: RunContext) async {
    for (item, _) in run.keeps {
      let p = path(item.components)
      let n = item.node
      try? await Blocking.run { self.applyMetadata(p, n) }
    }
  }

  /// The owner to give `n`: its user and group by name where this system knows them, else its uid and gid.
  private func owner(_ n: Node) -> (uid_t, gid_t) {
    (names.uid(named: n.user) ?? n.uid, names.gid(named: n.group) ?? n.gid)
  }

  /// Access and modification times of `n`, as utimensat and futimens take them.
  private static func times(_ n: Node) -> [timespec] {
    [
      timespec(tv_sec: Int(n.atime.seconds), tv_nsec: Int(n.atime.nanoseconds)),
      timespec(tv_sec: Int(n.mtime.seconds), tv_nsec: Int(n.mtime.nanoseconds)),
    ]
  }

  /// `applyMetadata` through the open descriptor of a regular file (`p` only names it in messages): the same
  /// steps in the same order, without looking the path up for each.
  func applyMetadata(fd: Int32, _ p: BytePath, _ n: Node) {
    if isRoot {
      let (uid, gid) = owner(n)
      if fchown(fd, uid, gid) != 0 { fail("\(p): lchown: \(String(cString: strerror(errno)))") }
    }
    for x in n.xattrs {
      let r = BytePath(bytes: x.name).withCString { name in x.value.withUnsafeBytes { v in Sys.setXattr(fd, name, v) } }
      if r != 0 && errno != ENOTSUP {
        fail("\(p): setxattr \(BytePath.display(x.name)): \(String(cString: strerror(errno)))")
      }
    }
    if fchmod(fd, mode_t(GoMode.permissions(n.mode))) != 0 { fail("\(p): chmod: \(String(cString: strerror(errno)))") }
    var times = Restore.times(n)
    if futimens(fd, &times) != 0 { fail("\(p): utimensat: \(String(cString: strerror(errno)))") }
  }

  /// Ownership (as root), xattrs, mode, then times. Best effort: failures are recorded, not fatal.
  func applyMetadata(_ p: BytePath, _ n: Node) {
    p.withCString { c in
      if isRoot {
        let (uid, gid) = owner(n)
        if lchown(c, uid, gid) != 0 { fail("\(p): lchown: \(String(cString: strerror(errno)))") }
      }
      if n.type != .symlink {
        for x in n.xattrs {
          let r = BytePath(bytes: x.name).withCString { name in
            x.value.withUnsafeBytes { v in Sys.setXattr(c, name, v) }
          }
          if r != 0 && errno != ENOTSUP {
            fail("\(p): setxattr \(BytePath.display(x.name)): \(String(cString: strerror(errno)))")
          }
        }
        if chmod(c, mode_t(GoMode.permissions(n.mode))) != 0 {
          fail("\(p): chmod: \(String(cString: strerror(errno)))")
        }
      }
      var times = Restore.times(n)
      if utimensat(AT_FDCWD, c, &times, AT_SYMLINK_NOFOLLOW) != 0 {
        fail("\(p): utimensat: \(String(cString: strerror(errno)))")
      }
    }
  }
}
