import ArgumentParser
import Foundation
import TidemarkCore
import TidemarkDaemon
import TidemarkFUSE
import TidemarkMount
import TidemarkSystem

struct MountCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "mount",
    abstract: "Browse the repository as a read-only filesystem.",
    discussion: """
      Serves the snapshots under MOUNTPOINT until interrupted (Ctrl-C, SIGTERM) or unmounted
      (`fusermount3 -u MOUNTPOINT`):

        ids/<short id>/  snapshots/<time>/  hosts/<host>/<time>/  tags/<tag>/<time>/

      with a `latest` link in every time directory, and

        versions/<host>/<absolute path>/<time>

      one path followed through all of a host's snapshots: a directory there lists every name
      seen at that path; a file is a directory of its versions (one per change of content),
      named by the time of the snapshot where each appeared, oldest first. New snapshots appear within --refresh seconds;
      forgotten ones disappear. `.tidemark/status.json` maps each snapshot directory back to the
      repository and snapshot ID (used by `tidemark restore PATH-IN-MOUNT`). Holds a shared lock
      (refreshed) unless --no-lock.

      `tidemark restore PATH-IN-THE-MOUNT`, run by root or by the user running the mount, takes
      the repository key from the mount (an abstract Unix socket named in status.json, credentials
      checked on both ends) instead of deriving it from the password again; --no-share-key turns
      that off, and restore then asks for the password as usual.
      """)
  @OptionGroup var global: GlobalOptions
  @Option(name: [.customShort("H"), .long], help: "Only snapshots of this host (repeatable).") var host: [String] = []
  @Option(help: "Only snapshots with these tags (comma-separated for all of them; repeatable for any).")
  var tag: [String] = []
  @Option(help: "Only snapshots with this path (repeatable).") var path: [String] = []
  @Option(
    name: .customLong("path-template"),
    help: "Where snapshots appear (repeatable; %i short ID, %I ID, %u user, %h host, %t tag, %T time).")
  var pathTemplate: [String] = []
  @Option(name: .customLong("time-template"), help: "Go time layout for %T (e.g. 2006-01-02_15-04-05).")
  var timeTemplate = "2006-01-02T15:04:05Z07:00"
  @Option(help: "Seconds between looks for new snapshots.") var refresh: Double = 30
  @Option(
    name: .customLong("cache-size"),
    help: ArgumentHelp(
      "Memory for the mount's caches together, e.g. 128M, 1G (a bare number is MiB).",
      discussion: """
        Shared out as: half for file contents and raw trees as read (read-ahead included), 5/16 for \
        parsed directory trees, 1/8 for directory listings, 1/32 for paths followed under versions/, 1/32 for \
        the block lists of files being read; \
        each cache lets its least recently used entries go when full and loads them again when wanted. \
        Outside it: about 40 bytes per file or directory the kernel holds (entries listed or looked up, \
        until the kernel forgets them under memory pressure), the repository index, and the allocator's \
        overhead. The kernel caches file pages and directory entries on top, in its own memory.
        """))
  var cacheSize = "128M"
  @Flag(name: .customLong("allow-other"), help: "Let other users access the mount.") var allowOther = false
  @Flag(
    name: .customLong("no-share-key"),
    help: "Do not hand the repository key to `tidemark restore PATH-IN-THE-MOUNT` (root or this user only).")
  var noShareKey = false
  @Argument(help: "Where to mount (an existing empty directory).") var mountpoint: String

  func run() async throws {
    guard let cacheBytes = CacheBudget.parse(cacheSize) else {
      throw TidemarkError(
        .usage, "invalid size \(cacheSize) for --cache-size",
        hint: "a number with k, M or G, e.g. 256M; a bare number is MiB")
    }
    guard Sys.exists(BytePath(mountpoint)), (try? Sys.lstat(BytePath(mountpoint)))?.isDirectory == true else {
      throw TidemarkError(
        .usage, "mountpoint \(mountpoint) is not a directory", hint: "create it: mkdir -p \(mountpoint)")
    }
    // Pack windows (a few MiB) come and go all the time: let malloc reuse them (see Sys.tuneMalloc).
    if ProcessInfo.processInfo.environment["TIDEMARK_NO_MALLOC_TUNING"] == nil {
      Sys.tuneMalloc(arenas: 4, mmapThreshold: 16 << 20, trimThreshold: 32 << 20)
    }
    let repo = try await global.open()
    var o = MountOptions()
    if !pathTemplate.isEmpty { o.pathTemplates = pathTemplate }
    o.timeTemplate = timeTemplate
    o.hosts = host
    o.tags = tag
    o.paths = path
    o.refresh = refresh
    o.cacheBytes = cacheBytes
    o.mountpoint = URL(fileURLWithPath: mountpoint).standardizedFileURL.path
    o.allowOther = allowOther
    try await MountService.serve(
      repo, options: o, shareKey: !noShareKey, lock: !global.noLock, lockRetry: try global.lockRetry,
      say: { [quiet = global.quiet] in if !quiet { Out.err($0) } })
  }
}
