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
    let version = try Repository.formatVersion(repositoryVersion)
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
    if !ids.isEmpty {
      // `latest` is the newest snapshot the filters leave, as in restic; other arguments are ID prefixes.
      let newest = snaps.max { $0.time < $1.time }?.id
      snaps = snaps.filter { s in ids.contains { $0 == "latest" ? s.id == newest : s.id!.hex.hasPrefix($0) } }
    }
    if let n = latest { snaps = Listing.latest(snaps, perGroup: n) }
    if global.json { return Out.raw(Listing.snapshotsJSON(snaps)) }
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
      Out.raw(Listing.snapshotJSON(snap))
    } else if !global.quiet {
      FileHandle.standardError.write(
        Data("snapshot \(snap.id!.short) of [\(snap.paths.joined(separator: " "))] at \(Out.time(snap.time)):\n".utf8))
    }
    try await Listing.walk(repo, snap.tree, filter: ListingFilter(dirs: dirs, recursive: recursive), visit: printNode)
  }

  func printNode(_ path: [UInt8], _ n: Node) {
    if global.json {
      Out.raw(Listing.nodeJSON(n, path: path))
    } else if long {
      let owner = (n.user.isEmpty ? String(n.uid) : n.user).padding(toLength: 8, withPad: " ", startingAt: 0)
      let group = (n.group.isEmpty ? String(n.gid) : n.group).padding(toLength: 8, withPad: " ", startingAt: 0)
      let mode = Listing.permissions(n.mode)
      let line = "\(mode) \(owner) \(group) \(String(n.size).leftPadded(10)) \(Out.time(n.mtime)) "
      Out.raw(Array(line.utf8) + path + (n.type == .symlink ? Array(" -> ".utf8) + n.linkTarget : []) + [10])
    } else {
      Out.raw(path + [10])
    }
  }
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
    switch try await RepositoryObject.load(repo, type: type, id: id) {
    case .json(let b): Out.line(prettyJSON(b))
    case .text(let b): Out.raw(b + [10])
    case .binary(let b): Out.raw(b)
    }
  }
}

/// Indents JSON the way `restic cat` does (two spaces).
func prettyJSON(_ b: [UInt8]) -> String {
  guard let obj = try? JSONSerialization.jsonObject(with: Data(b)),
    let d = try? JSONSerialization.data(
      withJSONObject: obj, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
  else { return String(decoding: b, as: UTF8.self) }
  return String(decoding: d, as: UTF8.self)
}
