// `tidemark find`: files and directories by name pattern, or the places that use given blobs, trees or packs.
import ArgumentParser
import TidemarkCore
import TidemarkEngine
import TidemarkOperations

struct FindCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "find",
    abstract: "Find a file, a directory or restic IDs.",
    discussion: """
      PATTERN is a glob (*, ?, [...], ** for any number of directories) matched with restic's rules: a pattern \
      without / matches any path with a component it matches (so `cache` lists /srv/cache and everything in \
      it); one with / matches consecutive components; one starting with / matches from the root.

      With --blob, --tree or --pack the arguments are IDs (64 hex digits, or the 8-digit short form): find the \
      files whose content uses those data blobs, the directories stored as those trees, or the files and \
      directories that use any blob of those packs (e.g. to name what a damaged pack affects).

      Examples:
        tidemark find '*.conf' --long
        tidemark find --json /srv/data/www -s latest
        tidemark find --pack 025c1d06
      """)
  @OptionGroup var global: GlobalOptions
  @Option(name: [.customShort("O"), .long], help: "Only entries modified at or after this time (2006-01-02 15:04:05).")
  var oldest: String?
  @Option(name: [.customShort("N"), .long], help: "Only entries modified at or before this time.")
  var newest: String?
  @Option(name: [.customShort("s"), .long], help: "Search only this snapshot (repeatable; `latest` works).")
  var snapshot: [String] = []
  @Flag(help: "The arguments are blob IDs.") var blob = false
  @Flag(help: "The arguments are tree IDs.") var tree = false
  @Flag(help: "The arguments are pack IDs.") var pack = false
  @Flag(help: "Show the pack each blob or tree belongs to (with --blob or --tree).") var showPackId = false
  @Flag(name: [.customShort("i"), .long], help: "Ignore case in patterns.") var ignoreCase = false
  @Flag(name: [.customShort("l"), .long], help: "Long listing: mode, owner, size, time.") var long = false
  @Option(name: [.customShort("H"), .long], help: "Only snapshots of this host (repeatable).") var host: [String] = []
  @Option(help: "Only snapshots with these tags (comma-separated for all of them; repeatable for any).")
  var tag: [String] = []
  @Option(help: "Only snapshots with this (absolute) path (repeatable).") var path: [String] = []
  @Argument(help: "Patterns, or IDs with --blob/--tree/--pack.") var patterns: [String] = []

  func run() async throws {
    guard !patterns.isEmpty else { throw TidemarkError(.usage, "wrong number of arguments", hint: "give a pattern") }
    if [blob, tree, pack].filter({ $0 }).count > 1 { throw TidemarkError(.usage, "cannot have several ID types") }
    let args = ignoreCase ? patterns.map { String(decoding: goLowercased(Array($0.utf8)), as: UTF8.self) } : patterns
    var criteria: FindCriteria? = nil
    if !(blob || tree || pack) {
      var c = FindCriteria(patterns: patterns, ignoreCase: ignoreCase)
      for (flag, value) in [("--oldest", oldest), ("--newest", newest)] {
        guard let value else { continue }
        guard let t = GoFormat.parseTime(value) else {
          throw TidemarkError(
            .usage, "unable to parse time: \"\(value)\"", hint: "\(flag) takes e.g. 2006-01-02 15:04:05")
        }
        if flag == "--oldest" { c.oldest = t } else { c.newest = t }
      }
      for p in c.patterns {
        do {
          _ = try p.matches(Array("/x".utf8))
        } catch {
          throw TidemarkError(.usage, "\(error)")
        }
      }
      criteria = c
    }
    let repo = try await global.open()
    try await global.withLock(repo, exclusive: false, overlap: true, prepare: { try await repo.loadIndex() }) {
      let snaps = try await selectSnapshots(
        repo, ids: snapshot, filter: SnapshotFilter(hosts: host, tags: tag, paths: path)
      ).sorted { $0.time < $1.time }
      if let criteria {
        try await findPatterns(repo, snaps, criteria)
      } else {
        try await findIDs(repo, snaps, args)
      }
    }
  }

  // MARK: Patterns

  func findPatterns(_ repo: Repository, _ snaps: [Snapshot], _ criteria: FindCriteria) async throws {
    let cache = TreeCache(repo: repo)
    let json = global.json
    let verbose = !global.quiet
    var opened = false  // JSON: "[" written
    var first = true
    for s in snaps {
      var hits = 0
      try await Find.matches(
        in: s, cache: cache, criteria: criteria,
        match: { path, node in
          if json {
            var w = JSONWriter()
            if hits == 0 {
              w.raw(opened ? ",{\"matches\":[" : "[{\"matches\":[")
              opened = true
            } else {
              w.raw(",")
            }
            FindCommand.nodeJSON(&w, path, node)
            Out.raw(w.out)
          } else {
            if hits == 0 && verbose {
              if !first { Out.line("") }
              Out.line("Found matching entries in snapshot \(s.id!.short) from \(GoFormat.localTime(s.time))")
            }
            Out.raw(long ? FindCommand.longLine(path, node) : path + [10])
          }
          hits += 1
        },
        unreadable: { _, tree, _ in
          let msg = "Unable to load tree \(tree.hex)\n ... which belongs to snapshot \(s.id!.hex)\n"
          if json { Out.errRaw(msg) } else { Out.raw(Array(msg.utf8)) }
        })
      if hits > 0 {
        first = false
        if json { Out.raw(Array("],\"hits\":\(hits),\"snapshot\":\"\(s.id!.hex)\"}".utf8)) }
      }
    }
    if json { Out.line(opened ? "]" : "[]") }
  }

  /// restic's `find --json` node: path and permissions, then the node's fields but name, inode, extended
  /// attributes, device, content and subtree.
  static func nodeJSON(_ w: inout JSONWriter, _ path: [UInt8], _ n: Node) {
    w.raw("{\"path\":")
    w.string(path)
    w.raw(",\"permissions\":")
    w.string(GoFormat.fileMode(n.mode))
    w.raw(",\"type\":\"\(n.type.rawValue)\"")
    if n.mode != 0 { w.raw(",\"mode\":\(n.mode)") }
    w.raw(",\"mtime\":\"\(n.mtime.rfc3339Nano)\",\"atime\":\"\(n.atime.rfc3339Nano)\"")
    w.raw(",\"ctime\":\"\(n.ctime.rfc3339Nano)\",\"uid\":\(n.uid),\"gid\":\(n.gid)")
    if !n.user.isEmpty {
      w.raw(",\"user\":")
      w.string(n.user)
    }
    if !n.group.isEmpty {
      w.raw(",\"group\":")
      w.string(n.group)
    }
    if n.deviceID != 0 { w.raw(",\"device_id\":\(n.deviceID)") }
    if n.size != 0 { w.raw(",\"size\":\(n.size)") }
    if n.links != 0 { w.raw(",\"links\":\(n.links)") }
    if !n.linkTarget.isEmpty {
      w.raw(",\"linktarget\":")
      w.string(n.linkTarget)
    }
    w.raw("}")
  }

  /// restic's `find --long` line: mode, uid, gid, size, mtime, path (and a symlink's target).
  static func longLine(_ path: [UInt8], _ n: Node) -> [UInt8] {
    var typeBits: UInt32 = 0
    switch n.type {
    case .dir: typeBits = GoMode.dir
    case .symlink: typeBits = GoMode.symlink
    case .dev: typeBits = GoMode.device
    case .chardev: typeBits = GoMode.device | GoMode.charDevice
    case .fifo: typeBits = GoMode.namedPipe
    case .socket: typeBits = GoMode.socket
    default: break
    }
    let head =
      "\(GoFormat.fileMode(typeBits | n.mode)) \(GoFormat.right(n.uid, 5)) \(GoFormat.right(n.gid, 5)) "
      + "\(GoFormat.right(n.size, 6)) \(GoFormat.localTime(n.mtime)) "
    var line = Array(head.utf8) + path
    if n.type == .symlink { line += Array(" -> ".utf8) + n.linkTarget }
    return line + [10]
  }

  // MARK: IDs

  func findIDs(_ repo: Repository, _ snaps: [Snapshot], _ args: [String]) async throws {
    var data = BlobSelector()
    var trees = BlobSelector()
    func add(_ a: String, to s: inout BlobSelector) {
      if let id = BlobID(hex: a) { s.ids.insert(id) } else { s.shortIDs.insert(a) }
    }
    if blob { for a in args { add(a, to: &data) } }
    if tree { for a in args { add(a, to: &trees) } }
    if pack {
      for b in try await packBlobs(repo, args) {
        if b.type == .data { data.ids.insert(b.id) } else { trees.ids.insert(b.id) }
      }
    }
    let report = await Find.uses(data: data, trees: trees, in: snaps, repo: repo)
    let times = Dictionary(snaps.map { ($0.id!, $0.time) }, uniquingKeysWith: { a, _ in a })
    var count = 0
    for u in report.uses {
      let time = times[u.snapshot]!
      let kind = u.type == .data ? "blob" : "tree"
      if global.json {
        var w = JSONWriter()
        w.raw(count == 0 ? "[" : ",")
        w.raw("{\"object_type\":\"\(kind)\",\"id\":\"\(u.blob.hex)\",\"path\":")
        w.string(u.path)
        if let p = u.parentTree, u.type == .data { w.raw(",\"parent_tree\":\"\(p.hex)\"") }
        w.raw(",\"snapshot\":\"\(u.snapshot.hex)\",\"time\":\"\(time.rfc3339Nano)\"}")
        Out.raw(w.out)
      } else {
        var out = Array("Found \(kind) \(u.blob.hex)\n".utf8)
        if u.type == .data {
          out += Array(" ... in file ".utf8) + u.path + [10]
          out += Array("     (tree \(u.parentTree?.hex ?? ""))\n".utf8)
        } else {
          out += Array(" ... path ".utf8) + u.path + [10]
        }
        out += Array(" ... in snapshot \(u.snapshot.short) (\(GoFormat.localTime(time)))\n".utf8)
        Out.raw(out)
      }
      count += 1
    }
    if global.json { Out.line(count == 0 ? "[]" : "]") }
    for e in report.unreadable {
      let msg = "Unable to load tree \(e.tree.hex)\n ... which belongs to snapshot \(e.snapshot.hex)\n"
      if global.json { Out.errRaw(msg) } else { Out.raw(Array(msg.utf8)) }
    }
    if showPackId && (blob || tree) { showPacks(repo, blob ? data : trees, blob ? .data : .tree, report) }
  }

  /// The blobs of the packs named (Find.packBlobs), with restic's notes on stderr.
  func packBlobs(_ repo: Repository, _ refs: [String]) async throws -> [PackedBlob] {
    let r = try await Find.packBlobs(repo, refs)
    if !r.fromIndex.isEmpty {
      Out.err(
        "some pack files are missing from the repository, getting their blobs from the repository index: [\(r.fromIndex.map(\.hex).joined(separator: " "))]\n"
      )
    }
    if !r.damaged.isEmpty {
      Out.err(
        "the header of some pack files cannot be read, getting their blobs from the repository index: \(r.damaged.joined(separator: ", "))\n"
      )
    }
    return r.blobs
  }

  /// `--show-pack-id`: for each ID searched (short ones resolved through what was found), its pack.
  func showPacks(_ repo: Repository, _ sel: BlobSelector, _ type: BlobType, _ report: BlobUseReport) {
    var refs = Set(sel.ids.map(\.hex))
    for s in sel.shortIDs {
      if let u = report.uses.first(where: { $0.type == type && $0.blob.short == s }) {
        refs.insert(u.blob.hex)
      } else {
        refs.insert(s)
      }
    }
    for ref in refs.sorted() {
      guard let id = BlobID(hex: ref) else {
        Out.line("Note: cannot find pack for object '\(ref)', unable to parse ID: invalid length for hash")
        continue
      }
      guard let e = repo.index.lookup(id), e.blob.type == type else {
        Out.line("Object \(id.short) not found in the index")
        continue
      }
      let b = e.blob
      Out.line("Object belongs to pack \(e.pack.hex)")
      Out.line(
        " ... Pack \(e.pack.short): <Blob (\(type.name)) \(id.short), offset \(b.offset), length \(b.length), uncompressed length \(b.uncompressedLength)>"
      )
    }
  }
}
