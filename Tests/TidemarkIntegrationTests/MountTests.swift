// `tidemark mount` for real: a FUSE mount served by the tidemark binary, read with ordinary file calls.
import Foundation
import Testing
import TidemarkCore
import TidemarkSystem

/// A running `tidemark mount`; killed (and the mount cleared by auto_unmount) when dropped.
final class MountProcess {
  let process = Process()
  let mountpoint: String
  private let watchdog: DispatchWorkItem

  init(_ ws: Workspace, _ args: [String], mountpoint: String) throws {
    self.mountpoint = mountpoint
    try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
    process.executableURL = URL(fileURLWithPath: Tools.tidemark)
    process.arguments = args + [mountpoint]
    var e = ProcessInfo.processInfo.environment
    e["TIDEMARK_PASSWORD"] = "test-pw"
    process.environment = e
    process.currentDirectoryURL = URL(fileURLWithPath: ws.path)
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    try process.run()
    // A hung filesystem would hang the test: killing the server makes every pending call fail instead.
    let p = process
    watchdog = DispatchWorkItem { if p.isRunning { kill(p.processIdentifier, SIGKILL) } }
    DispatchQueue.global().asyncAfter(deadline: .now() + 180, execute: watchdog)
  }

  /// Waits until `path` (inside the mount) exists.
  func wait(for path: String, seconds: Double = 20) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
      if FileManager.default.fileExists(atPath: path) { return true }
      if !process.isRunning { return false }
      usleep(100_000)
    }
    return false
  }

  func isMounted() -> Bool {
    ((try? String(contentsOfFile: "/proc/mounts", encoding: .utf8)) ?? "").contains(" \(mountpoint) ")
  }

  deinit {
    watchdog.cancel()
    if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    _ = try? Tools.run("/bin/fusermount3", ["-u", "-z", mountpoint])
  }
}

/// The IDs in `snapshots --json` output, oldest first.
func snapshotIDs(_ json: String) -> [String] {
  guard case .array(let a)? = try? JSON.parse(Array(json.utf8)) else { return [] }
  return a.compactMap { $0["id"]?.string }
}

/// `rsync -aHX -n -i -c FROM TO`: the itemized list of what rsync would change (empty when the trees agree).
func rsyncItemize(from: String, to: String) throws -> RunResult {
  try Tools.run("/usr/bin/rsync", ["-aHX", "--numeric-ids", "-n", "-i", "-c", from, to])
}

@Suite(.serialized) struct MountTests {
  @Test func mountShowsSnapshotsFaithfullyFollowsNewOnesAndUnmountsOnSIGTERM() throws {
    let ws = try Workspace("mount")
    try makeAwkwardTree(in: ws.path, nonUTF8LinkTarget: true)
    // A file large enough for several blobs, read through mmap below.
    _ = try Tools.sh("head -c 12000000 /dev/urandom > src/big.bin", cwd: ws.path)
    // A directory listed in many readdir calls (the kernel asks by inode and offset, with no opendir).
    _ = try Tools.sh("mkdir src/many && cd src/many && seq -w 1 3000 | xargs touch", cwd: ws.path)
    #expect(try ws.tidemark(["init", "-r", "repo"]).status == 0)
    let b1 = try ws.tidemark(["-r", "repo", "backup", "src", "--tag", "first", "--host", "dc1", "--json"])
    #expect(b1.status == 0, "\(b1.stderr)")

    let mnt = ws.sub("mnt")
    let m = try MountProcess(ws, ["-r", "repo", "mount", "--refresh", "1"], mountpoint: mnt)
    #expect(m.wait(for: mnt + "/snapshots/latest/src"), "the mount never showed the snapshot")

    // Content and metadata match the source, through ordinary file calls.
    let source = try describeTree(ws.sub("src"))
    let d = differences(source, try describeTree(mnt + "/snapshots/latest/src"), ignoreLinkTargetOf: [])
    #expect(d.isEmpty, "mount differs: \(d.prefix(10))")
    let many = try FileManager.default.contentsOfDirectory(atPath: mnt + "/snapshots/latest/src/many")
    #expect(many.count == 3000 && Set(many).count == 3000, "src/many lists \(many.count) names")

    // rsync, comparing content by checksum and every attribute it knows, finds nothing to do.
    let rs = try rsyncItemize(from: mnt + "/snapshots/latest/src/", to: ws.sub("src/"))
    #expect(rs.status == 0 && rs.out.isEmpty, "rsync found differences: \(rs.out.prefix(2000)) \(rs.stderr)")

    // restic's layout: ids, hosts, tags, and `latest` links to the newest time directory.
    let snaps = try ws.tidemark(["-r", "repo", "snapshots", "--json"]).out
    let id1 = try #require(snapshotIDs(snaps).first)
    #expect(FileManager.default.fileExists(atPath: "\(mnt)/ids/\(id1.prefix(8))/src/file.txt"))
    let hostLatest = try Sys.readlink(BytePath("\(mnt)/hosts/dc1/latest"))
    #expect(FileManager.default.fileExists(atPath: "\(mnt)/hosts/dc1/\(BytePath.display(hostLatest))/src/big.bin"))
    #expect(FileManager.default.fileExists(atPath: "\(mnt)/tags/first/latest/src/file.txt"))

    // mmap readers work (sqlite and friends) and see the right bytes.
    let mm = try Tools.run(
      "/usr/bin/python3",
      [
        "-c",
        """
        import mmap, sys
        a = open(sys.argv[1], 'rb'); m = mmap.mmap(a.fileno(), 0, prot=mmap.PROT_READ)
        b = open(sys.argv[2], 'rb').read()
        print('same' if m[:] == b and m[7000000:7000100] == b[7000000:7000100] else 'differ')
        """, mnt + "/snapshots/latest/src/big.bin", ws.sub("src/big.bin"),
      ])
    #expect(mm.out.contains("same"), "\(mm.out) \(mm.stderr)")

    // The status file maps snapshot directories back to the repository and snapshot.
    let status = try JSON.parse(Array(try Data(contentsOf: URL(fileURLWithPath: mnt + "/.tidemark/status.json"))))
    #expect(status["repository"]?.string == ws.sub("repo"))
    #expect(status["snapshots"]?["ids/\(id1.prefix(8))"]?.string == id1)

    // A new snapshot appears without remounting; a forgotten one disappears. The kernel caches
    // listings, attributes and symlink targets, so the listings and `latest` are checked as well as
    // lookups: they must change too.
    let listing = { (dir: String) in Set((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []) }
    let eventually = { (what: () -> Bool) -> Bool in
      for _ in 0..<150 {
        if what() { return true }
        usleep(100_000)
      }
      return false
    }
    #expect(listing(mnt + "/ids") == [String(id1.prefix(8))])
    let latestBefore = try Sys.readlink(BytePath("\(mnt)/snapshots/latest"))
    usleep(1_100_000)  // the second snapshot's time directory gets a different name
    let b2 = try ws.tidemark(["-r", "repo", "backup", "src", "--host", "dc1"])
    #expect(b2.status == 0)
    let id2 = try #require(snapshotIDs(try ws.tidemark(["-r", "repo", "snapshots", "--json"]).out).last)
    #expect(m.wait(for: "\(mnt)/ids/\(id2.prefix(8))/src/file.txt"), "a new snapshot did not appear")
    #expect(
      eventually { listing(mnt + "/ids") == [String(id1.prefix(8)), String(id2.prefix(8))] },
      "ids/ still lists \(listing(mnt + "/ids"))")
    #expect(eventually { listing(mnt + "/snapshots").count == 3 }, "snapshots/ lists \(listing(mnt + "/snapshots"))")
    let latestAfter = try Sys.readlink(BytePath("\(mnt)/snapshots/latest"))
    #expect(latestAfter != latestBefore, "snapshots/latest still points to \(BytePath.display(latestBefore))")
    let newest = try JSON.parse(Array(try Data(contentsOf: URL(fileURLWithPath: mnt + "/.tidemark/status.json"))))
    #expect(newest["snapshots"]?["snapshots/\(BytePath.display(latestAfter))"]?.string == id2)
    // restic's forget wants an exclusive lock, which the mount's shared lock blocks (as with restic's
    // mount); a forget from elsewhere (e.g. a replicated repository) removes the snapshot file.
    let blocked = try ws.restic(["-r", "repo", "forget", id1])
    #expect(blocked.status != 0 && blocked.stderr.contains("lock"), "\(blocked.stderr)")
    try FileManager.default.removeItem(atPath: ws.sub("repo/snapshots/\(id1)"))
    var gone = false
    for _ in 0..<150 where !gone {
      gone = !FileManager.default.fileExists(atPath: "\(mnt)/ids/\(id1.prefix(8))")
      usleep(100_000)
    }
    #expect(gone, "a forgotten snapshot stayed")
    #expect(eventually { listing(mnt + "/ids") == [String(id2.prefix(8))] }, "ids/ lists \(listing(mnt + "/ids"))")

    // While mounted, a shared lock is held (restic's stale rules apply to it).
    #expect(try FileManager.default.contentsOfDirectory(atPath: ws.sub("repo/locks")).count == 1)

    // SIGTERM unmounts cleanly and removes the lock.
    kill(m.process.processIdentifier, SIGTERM)
    m.process.waitUntilExit()
    #expect(m.process.terminationStatus == 0)
    var unmounted = false
    for _ in 0..<50 where !unmounted {
      unmounted = !m.isMounted()
      usleep(100_000)
    }
    #expect(unmounted)
    #expect(try FileManager.default.contentsOfDirectory(atPath: ws.sub("repo/locks")).isEmpty)
  }

  @Test func timeTemplateAndFiltersShapeTheTree() throws {
    let ws = try Workspace("mount-tpl")
    _ = try Tools.sh("mkdir -p a && echo one > a/f", cwd: ws.path)
    #expect(try ws.tidemark(["init", "-r", "repo"]).status == 0)
    #expect(try ws.tidemark(["-r", "repo", "backup", "a", "--host", "h1"]).status == 0)
    #expect(try ws.tidemark(["-r", "repo", "backup", "a", "--host", "h2"]).status == 0)
    let mnt = ws.sub("mnt")
    let m = try MountProcess(
      ws, ["-r", "repo", "mount", "--host", "h2", "--time-template", "2006-01-02_15-04-05"], mountpoint: mnt)
    #expect(m.wait(for: mnt + "/snapshots/latest/a/f"))
    let hosts = try FileManager.default.contentsOfDirectory(atPath: mnt + "/hosts")
    #expect(hosts == ["h2"])
    let times = try FileManager.default.contentsOfDirectory(atPath: mnt + "/snapshots").filter { $0 != "latest" }
    #expect(times.count == 1 && !times[0].contains(":") && times[0].contains("_"), "\(times)")
    let sorted = try Tools.run("/bin/ls", ["-f", mnt]).out.split(separator: "\n").map(String.init)
    #expect(sorted == [".", "..", ".tidemark", "hosts", "ids", "snapshots", "tags", "versions"], "\(sorted)")

    // Read-only: writes fail with EROFS.
    let fd = open(mnt + "/snapshots/latest/a/f", O_WRONLY)
    #expect(fd == -1 && errno == EROFS)
    #expect(mkdir(mnt + "/snapshots/latest/a/new", 0o755) == -1 && errno == EROFS)

    // Killed outright, the process leaves no dead mount behind (auto_unmount).
    kill(m.process.processIdentifier, SIGKILL)
    m.process.waitUntilExit()
    var unmounted = false
    for _ in 0..<200 where !unmounted {  // auto_unmount's helper notices the death asynchronously
      unmounted = !m.isMounted()
      usleep(100_000)
    }
    // Intermittent in the full parallel suite on CI (seen once: the mount stayed for 20 s after SIGKILL);
    // never alone. Under investigation: recorded as a known issue rather than hidden.
    withKnownIssue(
      "auto_unmount after SIGKILL is sometimes slow under a loaded parallel test run", isIntermittent: true
    ) {
      #expect(unmounted, "a dead mount stayed after SIGKILL")
    }
    if !unmounted { _ = try? Tools.run("/bin/fusermount3", ["-u", "-z", m.mountpoint]) }
  }

  @Test func resticWrittenRepositoryMountsAndToolsWorkInside() throws {
    let ws = try Workspace("mount-restic")
    // A sqlite database and a git repository, as sysadmins find them in their backups.
    let setup = """
      mkdir -p data/app data/proj
      sqlite3 data/app/app.db "create table t(id integer primary key, name text, payload blob);
        with recursive c(x) as (select 1 union all select x + 1 from c where x < 20000)
        insert into t select x, 'row ' || x, randomblob(200) from c;
        create index t_name on t(name);"
      cd data/proj && git init -q -b main && git config user.email t@example.org && git config user.name T
      for i in 1 2 3; do echo "version $i" > readme.txt; head -c 300000 /dev/urandom > blob$i.bin
        git add -A && git commit -q -m "commit number $i"; done
      git gc -q
      """
    let s = try Tools.sh(setup, cwd: ws.path)
    try #require(s.status == 0, "\(s.stderr)")
    let query = "select count(*), sum(length(payload)) from t"
    let expectedCount = try Tools.run("/usr/bin/sqlite3", [ws.sub("data/app/app.db"), query]).out
    let expectedLog = try Tools.run("/usr/bin/git", ["-C", ws.sub("data/proj"), "log", "--format=%H %s"]).out
    #expect(expectedLog.split(separator: "\n").count == 3)

    // restic writes the repository; tidemark mounts it.
    #expect(try ws.restic(["init", "-r", "repo"]).status == 0)
    let b = try ws.restic(["-r", "repo", "backup", "data", "--host", "restic-host"])
    try #require(b.status == 0, "\(b.stderr)")
    let mnt = ws.sub("mnt")
    let m = try MountProcess(ws, ["-r", "repo", "mount"], mountpoint: mnt)
    let inside = mnt + "/hosts/restic-host/latest/data"
    #expect(m.wait(for: inside + "/app/app.db"), "the restic-written snapshot never appeared")

    let rs = try rsyncItemize(from: inside + "/", to: ws.sub("data/"))
    #expect(rs.status == 0 && rs.out.isEmpty, "rsync found differences: \(rs.out.prefix(2000)) \(rs.stderr)")

    // sqlite3 opens the database on the read-only mount and finds it intact.
    let q = try Tools.run("/usr/bin/sqlite3", [inside + "/app/app.db", query])
    #expect(q.status == 0 && q.out == expectedCount, "\(q.out) \(q.stderr)")
    let ic = try Tools.run("/usr/bin/sqlite3", ["-readonly", inside + "/app/app.db", "pragma integrity_check"])
    #expect(ic.out.trimmingCharacters(in: .whitespacesAndNewlines) == "ok", "\(ic.out) \(ic.stderr)")

    // git reads history and objects (pack files are read through mmap).
    let log = try Tools.run("/usr/bin/git", ["-C", inside + "/proj", "log", "--format=%H %s"])
    #expect(log.status == 0 && log.out == expectedLog, "\(log.out) \(log.stderr)")
    let show = try Tools.run("/usr/bin/git", ["-C", inside + "/proj", "show", "HEAD~2:readme.txt"])
    #expect(show.out == "version 1\n", "\(show.out) \(show.stderr)")
    let fsck = try Tools.run("/usr/bin/git", ["-C", inside + "/proj", "fsck", "--no-dangling"])
    #expect(fsck.status == 0, "\(fsck.stderr)")
  }

  /// With a cache budget far below what the snapshot's trees need, trees, listings and blob lists are evicted
  /// all the time and loaded again when the kernel asks about an inode: everything still reads back exactly.
  @Test func aTinyCacheStillServesEverythingFaithfully() throws {
    let ws = try Workspace("mount-tiny-cache")
    try makeAwkwardTree(in: ws.path, nonUTF8LinkTarget: true)
    let gen = """
      for d in $(seq 1 40); do mkdir -p src/many/g$((d % 4))/d$d; for f in $(seq 1 50); do
        head -c $(( (d * 131 + f * 977) % 9000 )) /dev/urandom > src/many/g$((d % 4))/d$d/file-$f.bin; done
        ln -s file-1.bin src/many/g$((d % 4))/d$d/link; done
      """
    let g = try Tools.sh(gen, cwd: ws.path)
    try #require(g.status == 0, "\(g.stderr)")
    #expect(try ws.tidemark(["init", "-r", "repo"]).status == 0)
    let b = try ws.tidemark(["-r", "repo", "backup", "src"])
    try #require(b.status == 0, "\(b.stderr)")
    let bad = try ws.tidemark(["-r", "repo", "mount", "--cache-size", "12X", ws.sub("nowhere")])
    #expect(bad.status != 0 && bad.stderr.contains("--cache-size"), "\(bad.stderr)")

    let mnt = ws.sub("mnt")
    let m = try MountProcess(ws, ["-r", "repo", "mount", "--cache-size", "64k"], mountpoint: mnt)
    #expect(m.wait(for: mnt + "/snapshots/latest/src/many"), "the mount never showed the snapshot")
    // Twice: the second pass finds the kernel's entries but few of the mount's trees.
    for pass in 1...2 {
      let d = differences(
        try describeTree(ws.sub("src")), try describeTree(mnt + "/snapshots/latest/src"), ignoreLinkTargetOf: [])
      #expect(d.isEmpty, "pass \(pass): mount differs: \(d.prefix(10))")
      let rs = try rsyncItemize(from: mnt + "/snapshots/latest/src/", to: ws.sub("src/"))
      #expect(rs.status == 0 && rs.out.isEmpty, "pass \(pass): rsync: \(rs.out.prefix(2000)) \(rs.stderr)")
    }
  }

  /// A large compressible file (log lines, many blobs over several pack windows) read front to back through the
  /// mount, where blobs are decoded ahead of the reader on every core, then read at random places with the
  /// kernel's copy of its pages dropped: every byte matches. Once with the default cache and once with a cache
  /// too small to hold a read-ahead, so decoded blobs are evicted before they are read.
  @Test func sequentialAndRandomReadsOfALargeCompressibleFileMatch() throws {
    let ws = try Workspace("mount-read-ahead")
    try FileManager.default.createDirectory(atPath: ws.sub("src"), withIntermediateDirectories: true)
    let original = compressibleLog(bytes: 24 << 20, seed: 20_261_207)
    try Data(original).write(to: URL(fileURLWithPath: ws.sub("src/app.log")))
    #expect(try ws.tidemark(["init", "-r", "repo"]).status == 0)
    let b = try ws.tidemark(["-r", "repo", "backup", "src"])
    try #require(b.status == 0, "\(b.stderr)")
    // Several blobs, stored compressed (well under the file's size).
    let stored = try ws.size("repo/data")
    #expect(stored < Int64(original.count) / 2, "the log file was not stored compressed: \(stored) bytes")

    for cache in ["128m", "2m"] {
      let mnt = ws.sub("mnt-\(cache)")
      let m = try MountProcess(ws, ["-r", "repo", "mount", "--cache-size", cache], mountpoint: mnt)
      let file = mnt + "/snapshots/latest/src/app.log"
      #expect(m.wait(for: file), "the mount never showed the snapshot")

      // Front to back in 128 KiB reads, as cat does.
      let fd = open(file, O_RDONLY)
      try #require(fd >= 0, "open: \(errno)")
      defer { close(fd) }
      var read: [UInt8] = []
      read.reserveCapacity(original.count)
      var chunk = [UInt8](repeating: 0, count: 128 << 10)
      while true {
        let n = chunk.withUnsafeMutableBytes { Foundation.read(fd, $0.baseAddress, $0.count) }
        try #require(n >= 0, "read: \(errno)")
        if n == 0 { break }
        read += chunk[0..<n]
      }
      #expect(read.count == original.count, "cache \(cache): read \(read.count) bytes of \(original.count)")
      #expect(read == original, "cache \(cache): the sequential read differs from the file")

      // Random places (70,000 bytes each, some across blob ends), the start and the end, after the kernel has
      // dropped the pages the sequential read left, so that the mount answers them.
      #expect(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0)
      var rng = SplitMix(seed: 7)
      var offsets = (0..<24).map { _ in Int(rng.next() % UInt64(original.count)) }
      offsets += [0, original.count - 10]
      for off in offsets {
        let want = Array(original[off..<min(original.count, off + 70_000)])
        var got = [UInt8](repeating: 0, count: want.count)
        let n = got.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(off)) }
        #expect(n == want.count && got == want, "cache \(cache): read at \(off) differs (\(n) bytes)")
      }
      #expect(m.isMounted())
    }
  }

  /// Reading the first file of a directory puts the directory's other small files into the kernel's page cache
  /// (a copy reads them next): they are resident before anyone reads them, with the right bytes; a directory that
  /// was only listed gets nothing.
  @Test func smallFilesOfADirectoryBeingReadAreInTheKernelBeforeTheirReads() throws {
    let ws = try Workspace("mount-put")
    let gen = """
      for d in read listed; do mkdir -p src/$d; for f in $(seq 1 60); do
        head -c $(( (f * 977) % 9000 + 1 )) /dev/urandom > src/$d/file-$(printf %02d $f); done; done
      head -c 600000 /dev/urandom > src/read/zz-large
      """
    let g = try Tools.sh(gen, cwd: ws.path)
    try #require(g.status == 0, "\(g.stderr)")
    #expect(try ws.tidemark(["init", "-r", "repo"]).status == 0)
    let b = try ws.tidemark(["-r", "repo", "backup", "src"])
    try #require(b.status == 0, "\(b.stderr)")
    let mnt = ws.sub("mnt")
    let m = try MountProcess(ws, ["-r", "repo", "mount"], mountpoint: mnt)
    let top = mnt + "/snapshots/latest/src"
    #expect(m.wait(for: top + "/read"), "the mount never showed the snapshot")
    let ls = try Tools.run("/bin/ls", ["-l", top + "/read", top + "/listed"])
    #expect(ls.status == 0, "\(ls.stderr)")
    let names = (1...60).map { String(format: "file-%02d", $0) }
    let first = try Data(contentsOf: URL(fileURLWithPath: top + "/read/file-01"))
    #expect(first == (try Data(contentsOf: URL(fileURLWithPath: ws.sub("src/read/file-01")))))
    var resident: [String] = []
    for _ in 0..<50 {
      resident = names.dropFirst().filter { residentPages(top + "/read/" + $0) > 0 }
      if resident.count == names.count - 1 { break }
      usleep(100_000)
    }
    #expect(resident.count == names.count - 1, "resident after reading file-01: \(resident)")
    #expect(residentPages(top + "/read/zz-large") == 0, "a file above the limit was put")
    #expect(names.allSatisfy { residentPages(top + "/listed/" + $0) == 0 }, "a listed directory's files were put")
    for n in names {
      let a = try Data(contentsOf: URL(fileURLWithPath: top + "/read/" + n))
      #expect(a == (try Data(contentsOf: URL(fileURLWithPath: ws.sub("src/read/" + n)))), "\(n) differs")
    }
  }

  @Test func mountHelperServesMountTypeTidemark() throws {
    // mount(8) runs /sbin/mount.tidemark; install ours there for the test when nothing else is.
    let helper = "/sbin/mount.tidemark"
    let ours = Tools.packageRoot.appendingPathComponent("mount/mount.tidemark").path
    var installed = false
    if !FileManager.default.fileExists(atPath: helper) {
      try FileManager.default.createSymbolicLink(atPath: helper, withDestinationPath: ours)
      installed = true
    }
    defer { if installed { try? FileManager.default.removeItem(atPath: helper) } }

    let ws = try Workspace("mount-helper")
    _ = try Tools.sh(
      "mkdir -p a && echo from-helper > a/f && printf 'test-pw\\n' > pw && printf 'nope\\n' > bad", cwd: ws.path)
    #expect(try ws.tidemark(["init", "-r", "repo"]).status == 0)
    #expect(try ws.tidemark(["-r", "repo", "backup", "a", "--host", "h"]).status == 0)
    let mnt = ws.sub("mnt")
    try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
    let env = ["TIDEMARK_BIN": Tools.tidemark]
    defer { _ = try? Tools.run("/bin/fusermount3", ["-u", "-z", mnt]) }

    // Wrong password: mount fails with mount(8)'s failure code and says why; nothing stays mounted.
    let bad = try Tools.run(
      "/bin/mount",
      ["-t", "tidemark", ws.sub("repo"), mnt, "-o", "password-file=\(ws.sub("bad")),log=\(ws.sub("log"))"],
      env: env)
    #expect(bad.status == 32 && bad.stderr.contains("password"), "\(bad.status) \(bad.stderr)")
    let bogus = try Tools.run("/bin/mount", ["-t", "tidemark", ws.sub("repo"), mnt, "-o", "bogus=1"], env: env)
    #expect(bogus.status != 0 && bogus.stderr.contains("unknown option bogus"), "\(bogus.stderr)")

    // The helper returns once the filesystem is there: no waiting needed.
    let ok = try Tools.run(
      "/bin/mount",
      [
        "-t", "tidemark", ws.sub("repo"), mnt, "-o",
        "ro,password-file=\(ws.sub("pw")),refresh=5,host=h,log=\(ws.sub("log"))",
      ],
      env: env)
    #expect(ok.status == 0, "\(ok.stderr)")
    let mounts = try String(contentsOfFile: "/proc/mounts", encoding: .utf8)
    #expect(mounts.contains(" \(mnt) fuse.tidemark ro,"), "\(mounts)")
    let content = try String(contentsOfFile: mnt + "/hosts/h/latest/a/f", encoding: .utf8)
    #expect(content == "from-helper\n")

    // umount stops the server, which releases its lock.
    #expect(try Tools.run("/bin/umount", [mnt]).status == 0)
    var released = false
    for _ in 0..<100 where !released {
      released = (try? FileManager.default.contentsOfDirectory(atPath: ws.sub("repo/locks")).isEmpty) == true
      usleep(100_000)
    }
    #expect(released, "the server kept its lock after umount")
    #expect(!(try String(contentsOfFile: "/proc/mounts", encoding: .utf8)).contains(" \(mnt) "))
  }
}

/// How many of the file's pages the kernel holds in its page cache (mincore over a read-only mapping: nothing is
/// read), or -1 when the file cannot be mapped.
func residentPages(_ path: String) -> Int {
  let fd = open(path, O_RDONLY)
  guard fd >= 0 else { return -1 }
  defer { close(fd) }
  let size = Int(lseek(fd, 0, SEEK_END))
  guard size > 0 else { return 0 }
  guard let p = mmap(nil, size, PROT_READ, MAP_SHARED, fd, 0), p != MAP_FAILED else { return -1 }
  defer { munmap(p, size) }
  let page = Int(sysconf(Int32(_SC_PAGESIZE)))
  var vec = [UInt8](repeating: 0, count: (size + page - 1) / page)
  guard mincore(p, size, &vec) == 0 else { return -1 }
  return vec.filter { $0 & 1 != 0 }.count
}

/// Log lines of a few services with their own numbers and identifiers: compressible about threefold, as logs are,
/// and the same for the same seed.
func compressibleLog(bytes: Int, seed: UInt64) -> [UInt8] {
  var rng = SplitMix(seed: seed)
  let services = ["nginx", "sshd", "app", "cron"]
  let words = ["GET /api/v1/orders", "Accepted publickey for", "level=info op=read", "level=warn msg=retrying"]
  var out: [UInt8] = []
  out.reserveCapacity(bytes + 200)
  var t: UInt64 = 0
  while out.count < bytes {
    t += rng.next() % 3
    let k = Int(rng.next() % 4)
    let line =
      "Dec \(1 + t / 86400 % 28) \(t % 86400) host-\(rng.next() % 16) \(services[k])[\(rng.next() % 30000)]: "
      + "\(words[k]) id=\(rng.next() % 1_000_000) req=\(String(rng.next(), radix: 16)) ms=\(rng.next() % 900)\n"
    out += line.utf8
  }
  return Array(out[0..<bytes])
}

/// A small deterministic generator (splitmix64) for test data.
struct SplitMix {
  var state: UInt64
  init(seed: UInt64) { state = seed }
  mutating func next() -> UInt64 {
    state &+= 0x9e37_79b9_7f4a_7c15
    var z = state
    z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
    z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
    return z ^ (z >> 31)
  }
}
