// One ParsableCommand per verb. Each: open, lock, call into TidemarkOperations, print.
import ArgumentParser
import Foundation
import TidemarkCore
import TidemarkEngine
import TidemarkOperations
import TidemarkSystem

struct Init: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Create a new repository.",
    discussion: "Creates a restic-compatible repository (format version 2) at --repo.")
  @OptionGroup var global: GlobalOptions
  @Flag(help: "Use the chunker polynomial of --from-repo, so the two repositories deduplicate against each other.")
  var copyChunkerParams = false
  @OptionGroup var from: FromRepositoryOptions
  @Option(help: "Repository format version: 1 or 2 (latest).") var repositoryVersion: String = "2"

  func run() async throws {
    let backend = try global.backend()
    let pw = try await global.password(prompt: "enter password for new repository: ")
    var poly: Polynomial? = nil
    if copyChunkerParams {
      poly = try await from.open(global, needFor: "--copy-chunker-params").config.chunkerPolynomial
    }
    let version: Int
    switch repositoryVersion {
    case "1": version = 1
    case "2", "latest", "stable": version = 2
    default: throw TidemarkError(.usage, "unknown repository version \(repositoryVersion)", hint: "use 1 or 2")
    }
    let repo = try await Repository.initialize(
      backend: backend, password: pw, version: version, polynomial: poly)
    if global.json {
      Out.line(
        "{\"message_type\":\"initialized\",\"id\":\"\(repo.config.id)\",\"repository\":\(Out.jsonString(backend.location))}"
      )
    } else if !global.quiet {
      Out.line("created tidemark repository \(repo.config.id.prefix(10)) at \(backend.location)")
      Out.line("")
      Out.line("Please note that knowledge of your password is required to access")
      Out.line("the repository. Losing your password means that your data is")
      Out.line("irrecoverably lost.")
    }
  }
}

struct Unlock: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Remove stale locks.",
    discussion: "A lock is stale when it is older than 30 minutes, or its process on this host is gone.")
  @OptionGroup var global: GlobalOptions
  @Flag(help: "Remove all locks, even those of running processes.") var removeAll = false

  func run() async throws {
    let repo = try await global.open()
    let n = try await RepositoryLock.unlock(repo, all: removeAll)
    if global.json {
      Out.line("{\"removed\":\(n)}")
    } else if !global.quiet {
      Out.line(n == 0 ? "no locks removed" : "successfully removed \(n) lock\(n == 1 ? "" : "s")")
    }
  }
}

struct Snapshots: AsyncParsableCommand {
  static let configuration = CommandConfiguration(abstract: "List snapshots.")
  @OptionGroup var global: GlobalOptions
  @Option(name: [.customShort("H"), .long], help: "Only snapshots of this host (repeatable).") var host: [String] = []
  @Option(help: "Only snapshots with these tags (comma-separated for all of them; repeatable for any).") var tag:
    [String] = []
  @Option(help: "Only snapshots with this path (repeatable).") var path: [String] = []
  @Option(help: "Only the latest N snapshots of each host and path set.") var latest: Int?
  @Argument(help: "Snapshot IDs (default: all).") var ids: [String] = []

  func run() async throws {
    let repo = try await global.open()
    var snaps = SnapshotFilter(hosts: host, tags: tag, paths: path).apply(try await repo.listSnapshots())
    if !ids.isEmpty { snaps = snaps.filter { s in ids.contains { s.id!.hex.hasPrefix($0) || ($0 == "latest") } } }
    if let n = latest {
      var groups: [String: [Snapshot]] = [:]
      for s in snaps { groups[s.hostname + "\0" + s.paths.sorted().joined(separator: "\0"), default: []].append(s) }
      snaps = groups.values.flatMap { $0.suffix(n) }.sorted { $0.time < $1.time }
    }
    if global.json {
      var w = JSONWriter()
      w.raw("[")
      for (i, s) in snaps.enumerated() {
        if i > 0 { w.comma() }
        s.listingJSON(into: &w)
      }
      w.raw("]\n")
      Out.raw(w.out)
      return
    }
    let rows = snaps.map { s in
      [s.id!.short, Out.time(s.time), s.hostname, s.tags.joined(separator: ","), s.paths.joined(separator: "\n")]
    }
    printTable(header: ["ID", "Time", "Host", "Tags", "Paths"], rows: rows)
    Out.line("\(snaps.count) snapshots")
  }
}

/// A restic-style table: columns padded to width, a rule under the header and at the end.
func printTable(header: [String], rows: [[String]], leading: String = "") {
  var widths = header.map(\.count)
  for r in rows {
    for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.split(separator: "\n").map(\.count).max() ?? 0) }
  }
  func fmt(_ cells: [String]) -> String {
    cells.enumerated().map { i, c in
      i == cells.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0)
    }
    .joined(separator: "  ")
  }
  let h = leading + fmt(header)
  let ruleLen = widths.reduce(0, +) + 2 * (widths.count - 1) + leading.count + 6
  Out.line(h)
  Out.line(String(repeating: "-", count: ruleLen))
  for r in rows {
    let lines = r.map { $0.split(separator: "\n", omittingEmptySubsequences: false).map(String.init) }
    let height = lines.map(\.count).max() ?? 1
    for k in 0..<height {
      let cells = lines.map { k < $0.count ? $0[k] : "" }
      Out.line((k == 0 ? "" : String(repeating: " ", count: leading.count)) + fmt(cells))
    }
  }
  Out.line(String(repeating: "-", count: ruleLen))
}

struct Ls: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "List the files in a snapshot.",
    discussion:
      "SNAPSHOT is an ID, a unique ID prefix or `latest`. PATH arguments limit the listing to those directories.")
  @OptionGroup var global: GlobalOptions
  @Flag(name: [.customShort("l"), .long], help: "Long listing (mode, owner, size, time).") var long = false
  @Flag(help: "Descend into subdirectories of the given PATHs.") var recursive = false
  @Option(name: [.customShort("H"), .long], help: "With `latest`: only this host.") var host: String?
  @Argument(help: "Snapshot ID or `latest`.") var snapshot: String
  @Argument(help: "Only these directories (absolute paths in the snapshot).") var dirs: [String] = []

  func run() async throws {
    let repo = try await global.openIndexed()
    let snap = try await repo.findSnapshot(snapshot, host: host)
    if global.json {
      var w = JSONWriter()
      var body = snap.encode()
      body.removeLast()
      w.out = body
      w.raw(",\"id\":\"\(snap.id!.hex)\",\"short_id\":\"\(snap.id!.short)\",\"struct_type\":\"snapshot\"}\n")
      Out.raw(w.out)
    } else if !global.quiet {
      FileHandle.standardError.write(
        Data("snapshot \(snap.id!.short) of [\(snap.paths.joined(separator: " "))] at \(Out.time(snap.time)):\n".utf8))
    }
    let filters = dirs.map { Array($0.utf8).split(separator: 47).map(Array.init) }
    try await walk(repo, snap.tree, prefix: [], filters: filters)
  }

  func wanted(_ comps: [[UInt8]], _ filters: [[[UInt8]]]) -> (show: Bool, descend: Bool) {
    if filters.isEmpty { return (true, true) }
    var show = false
    var descend = false
    for f in filters {
      if comps.count <= f.count && Array(f.prefix(comps.count)) == comps { descend = true }  // on the way
      if comps.count > f.count && Array(comps.prefix(f.count)) == f {
        if recursive || comps.count == f.count + 1 { show = true }
        if recursive { descend = true }
      }
    }
    return (show, descend)
  }

  func walk(_ repo: Repository, _ tree: BlobID, prefix: [[UInt8]], filters: [[[UInt8]]]) async throws {
    let t = try await repo.loadTree(tree)
    for n in t.nodes {
      let comps = prefix + [n.name]
      let (show, descend) = wanted(comps, filters)
      let path = [47] + Array(comps.joined(separator: [47]))
      if show { printNode(n, path) }
      if descend, n.type == .dir, let sub = n.subtree { try await walk(repo, sub, prefix: comps, filters: filters) }
    }
  }

  func printNode(_ n: Node, _ path: [UInt8]) {
    if global.json {
      var w = JSONWriter()
      w.raw("{\"name\":")
      w.string(n.name)
      w.raw(",\"type\":\"\(n.type.rawValue)\",\"path\":")
      w.string(path)
      w.raw(",\"uid\":\(n.uid),\"gid\":\(n.gid)")
      if n.type == .file { w.raw(",\"size\":\(n.size)") }
      w.raw(",\"mode\":\(n.mode),\"permissions\":\"\(permissions(n.mode))\"")
      w.raw(
        ",\"mtime\":\"\(n.mtime.rfc3339Nano)\",\"atime\":\"\(n.atime.rfc3339Nano)\",\"ctime\":\"\(n.ctime.rfc3339Nano)\""
      )
      w.raw(",\"struct_type\":\"node\"}\n")
      Out.raw(w.out)
    } else if long {
      let owner = (n.user.isEmpty ? String(n.uid) : n.user).padding(toLength: 8, withPad: " ", startingAt: 0)
      let group = (n.group.isEmpty ? String(n.gid) : n.group).padding(toLength: 8, withPad: " ", startingAt: 0)
      var line = "\(permissions(n.mode)) \(owner) \(group) \(String(n.size).leftPadded(10)) \(Out.time(n.mtime)) "
      Out.raw(Array(line.utf8) + path)
      if n.type == .symlink {
        line = " -> "
        Out.raw(Array(line.utf8) + n.linkTarget)
      }
      Out.raw([10])
    } else {
      Out.raw(path + [10])
    }
  }
}

/// `drwxr-xr-x` from a Go FileMode.
func permissions(_ m: UInt32) -> String {
  var s: String
  if m & GoMode.dir != 0 {
    s = "d"
  } else if m & GoMode.symlink != 0 {
    s = "L"
  } else if m & GoMode.charDevice != 0 {
    s = "c"
  } else if m & GoMode.device != 0 {
    s = "D"
  } else if m & GoMode.namedPipe != 0 {
    s = "p"
  } else if m & GoMode.socket != 0 {
    s = "S"
  } else {
    s = "-"
  }
  let rwx = Array("rwxrwxrwx")
  for i in 0..<9 { s.append(m & (1 << (8 - i)) != 0 ? rwx[i] : "-") }
  return s
}

extension String {
  func leftPadded(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
}

struct Cat: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Print an object of the repository (decrypted).",
    discussion: "TYPE is one of config, masterkey, key, lock, snapshot, index, pack, blob, tree.")
  @OptionGroup var global: GlobalOptions
  @Argument(help: "Object type.") var type: String
  @Argument(help: "Object ID (a unique prefix is enough; `latest` for snapshot).") var id: String?

  func run() async throws {
    let repo = try await global.open()
    func need() throws -> String {
      guard let id else { throw TidemarkError(.usage, "cat \(type) needs an ID") }
      return id
    }
    switch type {
    case "config":
      Out.line(prettyJSON(repo.config.encode()))
    case "masterkey":
      Out.line(prettyJSON(repo.key.json))
    case "key":
      let name = try await repo.resolve(.key, prefix: try need())
      Out.line(prettyJSON(try await repo.backend.load(Handle(.key, name))))
    case "lock", "index":
      let t: FileType = type == "lock" ? .lock : .index
      let name = try await repo.resolve(t, prefix: try need())
      Out.raw(try await repo.loadUnpacked(Handle(t, name)) + [10])
    case "snapshot":
      let s = try await repo.findSnapshot(try need())
      Out.line(prettyJSON(s.encode()))
    case "pack":
      let name = try await repo.resolve(.pack, prefix: try need())
      Out.raw(try await repo.backend.load(Handle(.pack, name)))
    case "blob", "tree":
      try await repo.loadIndex()
      var bid: BlobID? = BlobID(hex: try need())
      if type == "tree", bid == nil {
        // snapshot[:path]
        let parts = try need().split(separator: ":", maxSplits: 1).map(String.init)
        let s = try await repo.findSnapshot(parts[0])
        bid = try await resolveTree(repo, s.tree, parts.count > 1 ? parts[1] : "")
      }
      guard let bid else { throw TidemarkError(.usage, "\(try need()) is not a blob ID (64 hex digits)") }
      Out.raw(try await repo.loadBlob(bid))
    default:
      throw TidemarkError(
        .usage, "unknown type \(type)", hint: "use config, masterkey, key, lock, snapshot, index, pack, blob or tree")
    }
  }
}

func resolveTree(_ repo: Repository, _ root: BlobID, _ path: String) async throws -> BlobID {
  var cur = root
  for comp in Array(path.utf8).split(separator: 47) {
    let t = try await repo.loadTree(cur)
    guard let n = t.node(named: Array(comp)), let sub = n.subtree else {
      throw TidemarkError(.notFound, "no directory \(path) in the snapshot")
    }
    cur = sub
  }
  return cur
}

/// Indents JSON the way `restic cat` does (two spaces).
func prettyJSON(_ b: [UInt8]) -> String {
  guard let obj = try? JSONSerialization.jsonObject(with: Data(b)),
    let d = try? JSONSerialization.data(
      withJSONObject: obj, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
  else { return String(decoding: b, as: UTF8.self) }
  return String(decoding: d, as: UTF8.self)
}
