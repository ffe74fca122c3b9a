// The virtual top of the mount: directories made from path templates, `latest` links, the status file.
import Foundation
import TidemarkCore
import TidemarkFUSE

struct VirtualEntry: Sendable {
  enum Kind: Sendable {
    case dir([[UInt8]: UInt64])
    case snapshot(Snapshot)
    /// `versions/<host>/`: the host's snapshots, followed path by path below (Versions.swift).
    case history(HostHistory)
    case link([UInt8])
    case file([UInt8])
  }
  var kind: Kind
  var attributes: FUSEAttributes
}

struct Top: Sendable {
  var entries: [UInt64: VirtualEntry] = [:]

  static func build(snapshots: [Snapshot], options: MountOptions, repository: String, time: Timestamp) -> Top {
    var b = Builder(time: time)
    b.dir(SnapshotFS.rootIno)
    // Each template places every snapshot at one path (or one per tag for %t).
    var placed: [(path: [[UInt8]], snapshot: Snapshot)] = []
    for template in options.pathTemplates {
      // The template's fixed leading directories exist even when no snapshot lands there (`tags/`).
      let fixed = template.split(separator: "/").prefix { !$0.contains("%") }.map { Array($0.utf8) }
      if !fixed.isEmpty && fixed.count < template.split(separator: "/").count {
        _ = b.parents(fixed + [[]])
      }
      var names: [[UInt8]: [(Snapshot, [[UInt8]])]] = [:]  // parent path (joined) → snapshots with their paths
      for s in snapshots {
        for p in expand(template, s, timeTemplate: options.timeTemplate) where !p.isEmpty {
          let parent = Array(Array(p.dropLast()).joined(separator: [47]))
          names[parent, default: []].append((s, p))
        }
      }
      for (_, group) in names {
        // Equal names within one directory get -1, -2, … in time order; `latest` marks the newest.
        var seen: [[UInt8]: Int] = [:]
        for (s, p) in group.sorted(by: { ($0.0.time, $0.0.id!) < ($1.0.time, $1.0.id!) }) {
          var path = p
          let n = seen[p.last!, default: 0]
          seen[p.last!] = n + 1
          if n > 0 { path[path.count - 1] += Array("-\(n)".utf8) }
          placed.append((path, s))
        }
        if template.hasSuffix("%T"), let newest = group.max(by: { ($0.0.time, $0.0.id!) < ($1.0.time, $1.0.id!) }) {
          // The newest name, with the suffix it got above (the last of equal names).
          let last = placed.last {
            $0.snapshot.id == newest.0.id && Array($0.path.dropLast()) == Array(newest.1.dropLast())
          }
          if let last { b.link(Array(last.path.dropLast()) + [Array("latest".utf8)], target: last.path.last!) }
        }
      }
    }
    // versions/<host>/ for every host (the directory exists with no snapshots too).
    let versions = Array("versions".utf8)
    _ = b.parents([versions, []])
    var byHost: [[UInt8]: [Snapshot]] = [:]
    for s in snapshots where !s.hostname.isEmpty {
      // One path component, whatever the host name holds.
      let name = Array(s.hostname.utf8).map { $0 == 0 || $0 == 47 ? UInt8(ascii: "_") : $0 }
      byHost[name, default: []].append(s)
    }
    for (host, list) in byHost {
      b.history([versions, host], HostHistory(snapshots: list, timeTemplate: options.timeTemplate))
    }
    var status: [(String, Snapshot)] = []
    for (path, s) in placed {
      b.snapshot(path, s)
      status.append((String(decoding: Array(path.joined(separator: [47])), as: UTF8.self), s))
    }
    b.file([Array(".tidemark".utf8), Array("status.json".utf8)], MountStatus.json(repository, options, status))
    return b.top
  }

  /// Directories keep the times they had in `old` while their listing stays the same; one whose listing
  /// changed (or that is new) gets `now`, so `ls -l` shows when snapshots last came or went (and a cache
  /// that goes by mtime sees the change).
  mutating func carryTimes(from old: Top, now: Timestamp) {
    guard !old.entries.isEmpty else { return }  // the first build: the mount's start time
    let t = (now.seconds, Int64(now.nanoseconds))
    for (ino, e) in entries {
      guard case .dir(let children) = e.kind else { continue }
      if let o = old.entries[ino], case .dir(let before) = o.kind, before == children {
        entries[ino]!.attributes.mtime = o.attributes.mtime
      } else {
        entries[ino]!.attributes.mtime = t
      }
      entries[ino]!.attributes.atime = entries[ino]!.attributes.mtime
      entries[ino]!.attributes.ctime = entries[ino]!.attributes.mtime
    }
  }

  /// The paths a template gives one snapshot (several for `%t`, none for `%t` without tags).
  static func expand(_ template: String, _ s: Snapshot, timeTemplate: String) -> [[[UInt8]]] {
    var results: [String] = [""]
    var chars = Array(template)
    var i = 0
    while i < chars.count {
      let c = chars[i]
      if c == "%" && i + 1 < chars.count {
        i += 1
        let v: [String]
        switch chars[i] {
        case "i": v = [String(s.id!.hex.prefix(8))]
        case "I": v = [s.id!.hex]
        case "u": v = [s.username]
        case "h": v = [s.hostname]
        case "t": v = s.tags
        case "T": v = [GoTime.format(s.time, layout: timeTemplate)]
        case "%": v = ["%"]
        default: v = ["%", String(chars[i])]
        }
        results = results.flatMap { r in v.map { r + $0 } }
      } else {
        results = results.map { $0 + String(c) }
      }
      i += 1
    }
    chars = []
    return results.map { r in
      r.split(separator: "/").map { Array($0.utf8) }.map { $0.map { $0 == 0 ? UInt8(ascii: "_") : $0 } }
    }.filter { !$0.isEmpty }
  }

  struct Builder {
    var top = Top()
    let time: Timestamp

    init(time: Timestamp) { self.time = time }

    mutating func attributes(_ ino: UInt64, mode: UInt32, at t: Timestamp? = nil) -> FUSEAttributes {
      var a = FUSEAttributes(ino: ino, mode: mode)
      let w = t ?? time
      a.mtime = (w.seconds, Int64(w.nanoseconds))
      a.atime = a.mtime
      a.ctime = a.mtime
      a.nlink = mode & 0o170000 == 0o040000 ? 2 : 1
      a.uid = getuid()
      a.gid = getgid()
      a.timeout = 1  // the top of the tree changes on refresh
      return a
    }

    mutating func dir(_ ino: UInt64) {
      if top.entries[ino] == nil {
        top.entries[ino] = VirtualEntry(kind: .dir([:]), attributes: attributes(ino, mode: 0o040555))
      }
    }

    /// Makes the directories of `path` (all but its last name); returns the inode of the last one.
    mutating func parents(_ path: [[UInt8]]) -> UInt64 {
      var cur = SnapshotFS.rootIno
      for name in path.dropLast() {
        let ino = SnapshotFS.hashInode(SnapshotFS.le(cur) + name)
        dir(ino)
        add(name, ino, to: cur)
        cur = ino
      }
      return cur
    }

    mutating func add(_ name: [UInt8], _ ino: UInt64, to parent: UInt64) {
      guard case .dir(var children) = top.entries[parent]?.kind else { return }
      children[name] = ino
      top.entries[parent]!.kind = .dir(children)
    }

    mutating func snapshot(_ path: [[UInt8]], _ s: Snapshot) {
      let parent = parents(path)
      // The snapshot's ID is part of the number: when a name passes to another snapshot (a forget
      // renumbers duplicates), nothing the kernel or we cached for the old one is served for it.
      let ino = SnapshotFS.hashInode(SnapshotFS.le(parent) + path.last! + (s.id?.raw.bytes ?? []))
      top.entries[ino] = VirtualEntry(kind: .snapshot(s), attributes: attributes(ino, mode: 0o040555, at: s.time))
      add(path.last!, ino, to: parent)
    }

    mutating func history(_ path: [[UInt8]], _ h: HostHistory) {
      let parent = parents(path)
      let ino = SnapshotFS.hashInode(SnapshotFS.le(parent) + path.last!)
      let a = attributes(ino, mode: 0o040555, at: h.snapshots.last?.time)
      top.entries[ino] = VirtualEntry(kind: .history(h), attributes: a)
      add(path.last!, ino, to: parent)
    }

    mutating func link(_ path: [[UInt8]], target: [UInt8]) {
      let parent = parents(path)
      // The target is part of the number: the kernel keeps symlink targets (FUSE_CAP_CACHE_SYMLINKS),
      // so when `latest` moves to a newer snapshot it must become another inode, not the same one.
      let ino = SnapshotFS.hashInode(SnapshotFS.le(parent) + path.last! + [0] + target)
      var a = attributes(ino, mode: 0o120777)
      a.size = Int64(target.count)
      top.entries[ino] = VirtualEntry(kind: .link(target), attributes: a)
      add(path.last!, ino, to: parent)
    }

    mutating func file(_ path: [[UInt8]], _ data: [UInt8]) {
      let parent = parents(path)
      let ino = SnapshotFS.hashInode(SnapshotFS.le(parent) + path.last!)
      // Rebuilt on every refresh: a new mtime makes the kernel drop pages cached from the old content.
      var a = attributes(ino, mode: 0o100444, at: Timestamp.now())
      a.size = Int64(data.count)
      a.blocks = (Int64(data.count) + 511) / 512
      top.entries[ino] = VirtualEntry(kind: .file(data), attributes: a)
      add(path.last!, ino, to: parent)
    }
  }
}

/// Go's time layouts (the tokens restic users put in `--time-template`).
enum GoTime {
  static func format(_ t: Timestamp, layout: String) -> String {
    let c = t.civil
    let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    func pad(_ v: Int, _ w: Int) -> String {
      let s = String(v)
      return String(repeating: "0", count: max(0, w - s.count)) + s
    }
    func zone(colon: Bool, z: Bool) -> String {
      if z && t.offset == 0 { return "Z" }
      let o = abs(Int(t.offset)) / 60
      return (t.offset < 0 ? "-" : "+") + pad(o / 60, 2) + (colon ? ":" : "") + pad(o % 60, 2)
    }
    // Longest tokens first.
    let tokens: [(String, () -> String)] = [
      ("Z07:00", { zone(colon: true, z: true) }), ("-07:00", { zone(colon: true, z: false) }),
      ("Z0700", { zone(colon: false, z: true) }), ("-0700", { zone(colon: false, z: false) }),
      ("2006", { pad(c.year, 4) }), ("January", { "" }), ("Jan", { months[c.month - 1] }),
      ("01", { pad(c.month, 2) }), ("02", { pad(c.day, 2) }), ("15", { pad(c.hour, 2) }),
      ("03", { pad(c.hour % 12 == 0 ? 12 : c.hour % 12, 2) }), ("04", { pad(c.minute, 2) }),
      ("05", { pad(c.second, 2) }), ("06", { pad(c.year % 100, 2) }), ("PM", { c.hour < 12 ? "AM" : "PM" }),
    ]
    var out = ""
    var rest = Substring(layout)
    outer: while !rest.isEmpty {
      for (tok, f) in tokens where rest.hasPrefix(tok) {
        out +=
          tok == "January"
          ? [
            "January", "February", "March", "April", "May", "June", "July", "August",
            "September", "October", "November", "December",
          ][c.month - 1] : f()
        rest = rest.dropFirst(tok.count)
        continue outer
      }
      out.append(rest.removeFirst())
    }
    return out
  }
}
