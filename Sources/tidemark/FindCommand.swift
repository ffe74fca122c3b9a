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
      try c.validate()
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
    var document = FindMatchesJSON()
    var first = true
    for s in snaps {
      var hits = 0
      try await Find.matches(
        in: s, cache: cache, criteria: criteria,
        match: { path, node in
          if json {
            Out.raw(document.match(path, node, hit: hits))
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
        if json { Out.raw(document.snapshotEnd(s.id!, hits: hits)) }
      }
    }
    if json { Out.line(document.end) }
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
    var (data, trees) = (
      blob ? BlobSelector(refs: args) : BlobSelector(), tree ? BlobSelector(refs: args) : BlobSelector()
    )
    if pack { (data, trees) = BlobSelector.split(try await packBlobs(repo, args)) }
    let report = await Find.uses(data: data, trees: trees, in: snaps, repo: repo)
    let times = Dictionary(snaps.map { ($0.id!, $0.time) }, uniquingKeysWith: { a, _ in a })
    for (i, u) in report.uses.enumerated() {
      let time = times[u.snapshot]!
      if global.json {
        Out.raw(Array((i == 0 ? "[" : ",").utf8) + u.json(time: time))
      } else {
        var out = Array("Found \(u.type == .data ? "blob" : "tree") \(u.blob.hex)\n".utf8)
        if u.type == .data {
          out += Array(" ... in file ".utf8) + u.path + [10]
          out += Array("     (tree \(u.parentTree?.hex ?? ""))\n".utf8)
        } else {
          out += Array(" ... path ".utf8) + u.path + [10]
        }
        out += Array(" ... in snapshot \(u.snapshot.short) (\(GoFormat.localTime(time)))\n".utf8)
        Out.raw(out)
      }
    }
    if global.json { Out.line(report.uses.isEmpty ? "[]" : "]") }
    for e in report.unreadable {
      let msg = "Unable to load tree \(e.tree.hex)\n ... which belongs to snapshot \(e.snapshot.hex)\n"
      if global.json { Out.errRaw(msg) } else { Out.raw(Array(msg.utf8)) }
    }
    guard showPackId && (blob || tree) else { return }
    let type: BlobType = blob ? .data : .tree
    for location in Find.packLocations(of: blob ? data : trees, type: type, report: report, index: repo.index) {
      switch location {
      case .unparsable(let ref):
        Out.line("Note: cannot find pack for object '\(ref)', unable to parse ID: invalid length for hash")
      case .notIndexed(let id): Out.line("Object \(id.short) not found in the index")
      case .found(let id, let e):
        Out.line("Object belongs to pack \(e.pack.hex)")
        Out.line(
          " ... Pack \(e.pack.short): <Blob (\(type.name)) \(id.short), offset \(e.blob.offset), length \(e.blob.length), uncompressed length \(e.blob.uncompressedLength)>"
        )
      }
    }
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
}
