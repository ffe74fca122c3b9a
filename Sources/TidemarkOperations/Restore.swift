// Restore: make a directory equal a snapshot tree, rsync-style.
//
// Every entry is compared with what is on disk first; only differences are acted on. A missing file is
// fetched whole; an existing one that differs is chunked with the repository's chunker and hashed, so
// the blobs it still holds (wherever they moved to) are copied from it and only the others are fetched
// from the repository. Each needed pack is fetched once (ranged reads covering the blobs needed from
// it) and its blobs are fanned out to every file that needs them. A file is built under a temporary
// name and renamed into place when complete (or, with `inplace`, patched where it differs), then its
// metadata is applied; directories get theirs last, deepest first. Names are checked, symlinks on the
// way are replaced rather than followed, and nothing is deleted without `delete`.
//
// This file holds the type, its options and stats, and `run` as the sequence of its steps; each step
// lives in the Restore+*.swift file named for what it does.
import Foundation
import Synchronization
import TidemarkCore
import TidemarkSystem

/// When an existing file is replaced (restic 0.17's `--overwrite`).
public enum OverwritePolicy: String, Sendable, CaseIterable {
  /// Always make the file equal the snapshot (still writing only the blobs that differ).
  case always
  /// Trust an equal size and mtime; otherwise compare the contents (the default).
  case ifChanged = "if-changed"
  /// Only when the snapshot's file is newer than the one on disk.
  case ifNewer = "if-newer"
  /// Never touch an existing file.
  case never

  /// `restore --overwrite`, refused with the policies there are when unknown.
  public init(parsing text: String) throws {
    guard let p = OverwritePolicy(rawValue: text) else {
      throw TidemarkError(.usage, "--overwrite \(text): use always, if-changed, if-newer or never")
    }
    self = p
  }
}

public struct RestoreOptions: Sendable {
  public var target: BytePath
  public var includes: [PathPattern] = []
  public var excludes: [PathPattern] = []
  public var dryRun = false
  public var overwrite = OverwritePolicy.ifChanged
  /// Remove what the snapshot does not have, inside the restored tree only.
  public var delete = false
  /// Re-read what was written and check it against the blob IDs.
  public var verify = false
  /// Leave all-zero blobs of new files as holes.
  public var sparse = true
  /// Patch existing files where they differ instead of building a new copy beside them.
  public var inplace = false
  /// Restore only this entry of the tree (a file or directory picked by SNAPSHOT:PATH).
  public var only: [UInt8]? = nil
  /// The node of the directory being restored (SNAPSHOT:DIR): its metadata goes to the target itself.
  public var rootNode: Node? = nil
  /// Receives each change, in order, before it is made (the `--dry-run` list and `-v` output).
  public var itemize: (@Sendable (ItemizedChange) -> Void)? = nil
  public init(target: BytePath) { self.target = target }
}

/// One change, described like `rsync -i`: `>f+++++++++` new file, `>fcst......` content, size and time,
/// `.f...p.....` permissions only, `cd+++++++++` new directory, `cL+++++++++` new symlink,
/// `hf+++++++++` hard link, `*deleting  ` removal.
public struct ItemizedChange: Sendable {
  public var code: String
  /// Below the target, `/`-separated; directories end in `/`.
  public var path: [UInt8]
  public var size: Int64
  public var action: String
  public var linkTarget: [UInt8]? = nil

  /// restic's `restore --json --verbose` line for this change.
  public var json: String {
    var w = JSONWriter()
    let change = code.trimmingCharacters(in: .whitespaces)
    w.raw("{\"message_type\":\"verbose_status\",\"action\":\"\(action)\",\"change\":\"\(change)\",\"item\":")
    w.string(BytePath.display(path))
    w.raw(",\"size\":\(size)}")
    return String(decoding: w.out, as: UTF8.self)
  }
}

public struct RestoreStats: Sendable {
  /// Files created or updated.
  public var filesRestored = 0
  /// Plaintext bytes fetched from the repository and written.
  public var bytesRestored: Int64 = 0
  public var totalFiles = 0
  public var totalBytes: Int64 = 0
  public var filesCreated = 0
  public var filesUpdated = 0
  public var filesUnchanged = 0
  /// Entries removed (`delete`), counting everything below a removed directory.
  public var entriesDeleted = 0
  /// Bytes of existing files kept: copied from the old file or left in place.
  public var bytesReused: Int64 = 0
  public var bytesVerified: Int64 = 0
  public var errors: [String] = []

  public init() {}

  /// Adds the counts of another restore (one of several paths restored in one command).
  public mutating func add(_ o: RestoreStats) {
    filesRestored += o.filesRestored
    bytesRestored += o.bytesRestored
    totalFiles += o.totalFiles
    totalBytes += o.totalBytes
    filesCreated += o.filesCreated
    filesUpdated += o.filesUpdated
    filesUnchanged += o.filesUnchanged
    entriesDeleted += o.entriesDeleted
    bytesReused += o.bytesReused
    bytesVerified += o.bytesVerified
    errors += o.errors
  }

  /// restic's `restore --json` summary line (with tidemark's reuse and verify counts), for a restore to `target`
  /// that took `seconds`.
  /// Several in-place paths restored by one command add `targets`, all of them (`target` is the first).
  public func summaryJSON(dryRun: Bool, target: BytePath, seconds: Double, targets: [BytePath] = []) -> String {
    var w = JSONWriter()
    w.string(target.description)
    var more = ""
    if targets.count > 1 {
      more =
        ",\"targets\":["
        + targets.map { t -> String in
          var tw = JSONWriter()
          tw.string(t.description)
          return String(decoding: tw.out, as: UTF8.self)
        }.joined(separator: ",") + "]"
    }
    return
      "{\"message_type\":\"summary\",\"dry_run\":\(dryRun),\"target\":\(String(decoding: w.out, as: UTF8.self))\(more),\"seconds_elapsed\":\(String(format: "%.3f", seconds)),\"total_files\":\(totalFiles),\"files_restored\":\(filesRestored),\"files_created\":\(filesCreated),\"files_updated\":\(filesUpdated),\"files_unchanged\":\(filesUnchanged),\"files_skipped\":\(filesUnchanged),\"files_deleted\":\(entriesDeleted),\"total_bytes\":\(totalBytes),\"bytes_restored\":\(bytesRestored),\"bytes_fetched\":\(bytesRestored),\"bytes_reused\":\(bytesReused),\"bytes_verified\":\(bytesVerified),\"error_count\":\(errors.count)}"
  }
}

public final class Restore: Sendable {
  let repo: Repository
  let options: RestoreOptions
  let names = NameCache()
  let state = Mutex(RestoreStats())
  /// Pack ranges in flight (4 MiB, or one larger blob) and decompression scratch (up to 8 MiB each).
  let packBuffers = BufferPool(keep: Restore.packLimit)
  let blobBuffers = BufferPool(keep: Restore.packLimit)
  /// Restores are bound by the filesystem's inode and page-cache work: more than `cores` packs in
  /// flight only adds memory (measured).
  static let packLimit = max(2, ProcessInfo.processInfo.activeProcessorCount)
  static let tempPrefix = Array(".tidemark-restore-".utf8)
  /// This restore's part of its temp names (see `tempPath`), and their counter.
  let tempTag = Array("\(UInt32.random(in: 0...UInt32.max))-".utf8)
  let tempCounter = Atomic<UInt64>(0)
  /// Large copies into a new file are made, and their writeback started, in pieces of this size.
  static let writebackPiece = 8 << 20
  /// Starts writeback of copied pieces off the restore's threads (see `FileJob.open`).
  let writeback = DispatchQueue(label: "tidemark-restore-writeback")
  /// Whether new files can be written unnamed (see `FileJob.unnamedFiles`).
  let unnamedFiles: UnnamedFiles
  let isRoot = getuid() == 0

  public init(repository: Repository, options: RestoreOptions) {
    repo = repository
    self.options = options
    unnamedFiles = UnnamedFiles(probeName: Restore.tempPrefix + tempTag + Array("probe".utf8))
  }

  public var stats: RestoreStats { state.withLock { $0 } }

  /// One entry to recreate: its path below the target and its node.
  struct Item: Sendable {
    var components: [[UInt8]]
    var node: Node
  }

  /// How a file's new content comes together.
  enum FileMode: Sendable {
    /// A new file: unnamed and linked at the path when nothing stood there, else a temp file beside the path
    /// renamed over it, when complete.
    case fresh
    /// Like `fresh`, but ranges the old file still holds are copied from it first.
    case rebuild(old: BytePath, copies: [(from: Int64, to: Int64, count: Int)])
    /// The existing file, patched where it differs, then cut to size.
    case inplace
  }

  /// What one run learns, handed from step to step: the snapshot's entries, what stands on disk, and
  /// the work decided for each entry (all of it listed before anything is written).
  struct RunContext {
    /// The entries to restore, depth first, pre-order (parents before their children).
    var items: [Item] = []
    /// For every directory visited, the names the snapshot has in it (what `delete` must leave alone).
    var known: [[[UInt8]]: Set<[UInt8]>] = [:]
    /// Directories of the snapshot that are real directories on disk, reached through real directories:
    /// only below these is what stands on disk looked at (anything else may lie behind a symlink).
    var real: Set<[[UInt8]]> = [[]]
    /// Files whose content is written.
    var jobs: [FileJob] = []
    /// For jobs that reuse part of the old file: which of their blobs are fetched.
    var fetchMask: [ObjectIdentifier: [Bool]] = [:]
    /// Further names of a hard-linked file, with the path of its first name.
    var hardlinks: [(Item, BytePath)] = []
    /// First names of hard-linked files that are written anew (not patched in place): they get a new inode,
    /// so their other names must follow.
    var renewed: Set<[UInt8]> = []
    /// Entries that are neither directories nor files (symlinks, fifos, devices, sockets).
    var others: [Item] = []
    /// Entries that stay, but whose metadata differs.
    var keeps: [(Item, Changes)] = []
    /// Symlinks, fifos and devices to make.
    var specials: [Item] = []
    /// Hard links to make once their first name is complete.
    var links: [(Item, BytePath)] = []
  }

  /// Makes the target equal `tree`. The order matters: deletions free space first, every change is
  /// decided (and listed) before anything is written, and metadata comes last so writing cannot disturb it.
  public func run(tree: BlobID) async throws -> RestoreStats {
    var run = try await planRun(tree: tree)
    if !options.dryRun {
      let target = options.target
      try await Blocking.run { try Sys.mkdirAll(target, 0o700) }
    }
    let listings = try await listRealDirectories(&run)
    await deleteExtraneous(listings, known: run.known)
    // The missing directories are made while the files are decided and their blobs sorted by pack: the two
    // touch different paths (see `makeDirectories`), and the decisions are mostly work on one core.
    let missing = try await decideDirectories(run)
    async let directories: Void = makeDirectories(missing)
    try await queueFiles(&run)
    await decideSpecials(&run)
    await decideHardLinks(&run)
    if options.dryRun {
      try await directories
      countDryRunBytes(run)
      return stats
    }
    let content = planContent(run)
    try await directories
    try await writeContent(content)
    await makeSpecials(run)
    await makeHardLinks(run)
    await applyKeptMetadata(run)
    await applyDirectoryMetadata(run)
    await verifyWritten(run)
    return stats
  }

  func path(_ comps: [[UInt8]]) -> BytePath {
    var p = options.target
    for c in comps { p = p.appending(c) }
    return p
  }

  func fail(_ msg: String) { state.withLock { $0.errors.append(msg) } }

  /// `items` cut into `n` contiguous shares of nearly equal size (fewer when there are fewer items): work on
  /// many small entries spread over the cores, one blocking hop per share.
  static func shares<T>(_ items: [T], among n: Int) -> [[T]] {
    let size = max(1, (items.count + n - 1) / n)
    return stride(from: 0, to: items.count, by: size).map { Array(items[$0..<min(items.count, $0 + size)]) }
  }

  static func rel(_ comps: [[UInt8]], dir: Bool = false) -> [UInt8] {
    var out: [UInt8] = []
    for (i, c) in comps.enumerated() {
      if i > 0 { out.append(47) }
      out += c
    }
    if dir { out.append(47) }
    return comps.isEmpty ? [46, 47] : out
  }

  func note(
    _ code: String, _ comps: [[UInt8]], dir: Bool = false, size: Int64 = 0, action: String, link: [UInt8]? = nil
  ) {
    options.itemize?(
      ItemizedChange(
        code: code, path: Restore.rel(comps, dir: dir), size: size, action: action, linkTarget: link))
  }
}
