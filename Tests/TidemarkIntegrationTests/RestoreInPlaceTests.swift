// rsync-style restore: in place, by delta, from a path in a live mount, and safe against hostile snapshots.
import Foundation
import Testing
import TidemarkBackends
import TidemarkCore
import TidemarkSystem

/// The summary object of `restore --json` (the last line).
func restoreSummary(_ r: RunResult) -> JSONValue? {
  guard let last = r.out.split(separator: "\n").last else { return nil }
  return try? JSON.parse(Array(last.utf8))
}

/// The itemized lines of a restore's output (everything but the JSON summary).
func itemized(_ r: RunResult) -> [String] {
  r.out.split(separator: "\n").map(String.init).filter { !$0.contains("\"message_type\":\"summary\"") }
}

@Suite(.serialized) struct RestoreInPlaceTests {
  @Test func divergedTreeIsRestoredInPlaceFetchingOnlyWhatChanged() throws {
    let ws = try Workspace("inplace")
    try makeAwkwardTree(in: ws.path, nonUTF8LinkTarget: false)
    // A large file whose middle is rewritten below, and files to edit, append to, truncate and delete.
    let setup = """
      head -c 40000000 /dev/urandom > src/large.img
      seq 1 200000 > src/sub/log.txt
      head -c 2000000 /dev/urandom > src/sub/trunc.bin
      mkdir -p src/olddir && echo old > src/olddir/keep.txt
      """
    _ = try Tools.sh(setup, cwd: ws.path)
    #expect(try ws.tidemark(["init", "-r", "repo"]).status == 0)
    let b = try ws.tidemark(["-r", "repo", "backup", "src"])
    try #require(b.status == 0, "\(b.stderr)")
    let snapshot = try describeTree(ws.sub("src"))

    let diverge = """
      dd if=/dev/urandom of=src/large.img bs=1048576 count=1 seek=17 conv=notrunc status=none
      printf 'edited' | dd of=src/file.txt bs=1 seek=2 conv=notrunc status=none
      echo appended >> src/sub/log.txt
      truncate -s 1000000 src/sub/trunc.bin
      rm src/sub/random.bin src/empty-file
      echo added > src/added.txt && mkdir -p src/newdir/deep && echo x > src/newdir/deep/y
      chmod 0700 src/sub/numbers.txt && chmod 0755 src/sub
      rm src/symlink && ln -s /etc/hostname src/symlink
      rm -rf src/olddir && echo now-a-file > src/olddir
      rm src/dangling && mkdir src/dangling
      """
    _ = try Tools.sh(diverge, cwd: ws.path)
    let inode = try Sys.lstat(BytePath(ws.sub("src/large.img"))).inode

    // The dry run changes nothing and lists exactly what the real run then does.
    let before = try describeTree(ws.sub("src"))
    let dry = try ws.tidemark(["-r", "repo", "restore", "latest:src", "--in-place", "--delete", "--dry-run"])
    #expect(dry.status == 0, "\(dry.stderr)")
    #expect(
      differences(before, try describeTree(ws.sub("src")), ignoreRootMtime: false).isEmpty,
      "the dry run changed something")
    let dryJSON = try ws.tidemark(["-r", "repo", "restore", "latest:src", "--in-place", "--delete", "-n", "--json"])
    let real = try ws.tidemark(["-r", "repo", "restore", "latest:src", "--in-place", "--delete", "-v", "--json"])
    #expect(real.status == 0, "\(real.stderr)")
    #expect(itemized(dryJSON).count > 10)
    #expect(itemized(dryJSON) == itemized(real), "dry run:\n\(dryJSON.out)\nreal run:\n\(real.out)")
    #expect(
      restoreSummary(dryJSON)?["bytes_fetched"]?.int == restoreSummary(real)?["bytes_fetched"]?.int,
      "the dry run's fetch estimate differs")
    for line in [
      ">fc.t...... large.img", ">fcst...... sub/trunc.bin", ".f...p..... sub/numbers.txt",
      "hf+++++++++ hardlink => file.txt", "*deleting   added.txt", "*deleting   newdir/", ">f+++++++++ sub/random.bin",
      "cL+++++++++ symlink -> file.txt", "cd+++++++++ olddir/", ">f+++++++++ olddir/keep.txt",
    ] {
      #expect(itemized(dry).contains(where: { $0.hasPrefix(line) }), "missing \(line) in:\n\(dry.out)")
    }

    // Afterwards the tree equals the snapshot exactly.
    let d = differences(snapshot, try describeTree(ws.sub("src")), ignoreRootMtime: false)
    #expect(d.isEmpty, "after restore: \(d.prefix(8))")
    // The changed megabyte (and its neighbouring chunks), the deleted 3 MB file and the small files are
    // fetched; the other ~39 MB of the large file are reused from the old file.
    let s = try #require(restoreSummary(real))
    let fetched = s["bytes_fetched"]?.int ?? -1
    let reused = s["bytes_reused"]?.int ?? -1
    #expect(fetched > 3_000_000 && fetched < 16_000_000, "fetched \(fetched)")
    #expect(reused > 30_000_000, "reused \(reused)")
    #expect(s["files_deleted"]?.int == 2)
    // The default mode builds a new file and renames it over the old one (a new inode).
    #expect(try Sys.lstat(BytePath(ws.sub("src/large.img"))).inode != inode)

    // Again: nothing to do, nothing fetched.
    let again = try ws.tidemark(["-r", "repo", "restore", "latest:src", "--in-place", "--delete", "-v", "--json"])
    #expect(itemized(again).isEmpty, "\(again.out)")
    #expect(restoreSummary(again)?["bytes_fetched"]?.int == 0)

    // --inplace patches the file where it differs and keeps its inode; --verify reads it back.
    _ = try Tools.sh(
      "dd if=/dev/urandom of=src/large.img bs=1048576 count=1 seek=5 conv=notrunc status=none", cwd: ws.path)
    let kept = try Sys.lstat(BytePath(ws.sub("src/large.img"))).inode
    let patch = try ws.tidemark([
      "-r", "repo", "restore", "latest:src", "--in-place", "--inplace", "--verify", "--json",
    ])
    #expect(patch.status == 0, "\(patch.stderr)")
    #expect(try Sys.lstat(BytePath(ws.sub("src/large.img"))).inode == kept)
    #expect((restoreSummary(patch)?["bytes_verified"]?.int ?? 0) >= 40_000_000)
    #expect(differences(snapshot, try describeTree(ws.sub("src")), ignoreRootMtime: false).isEmpty)

    // Without --delete nothing is removed, and a directory in the way of a file is an error, not a deletion.
    _ = try Tools.sh("echo stray > src/stray && rm src/sub/numbers.txt && mkdir src/sub/numbers.txt", cwd: ws.path)
    let keep = try ws.tidemark(["-r", "repo", "restore", "latest:src", "--in-place"])
    #expect(keep.status == 1 && keep.stderr.contains("--delete"), "\(keep.stderr)")
    #expect(FileManager.default.fileExists(atPath: ws.sub("src/stray")))
  }

  @Test func pathInsideALiveMountIsPutBackWhereItCameFrom() throws {
    let ws = try Workspace("restore-mount")
    _ = try Tools.sh(
      "mkdir -p data/docs/deep data/other && echo a > data/docs/a && echo b > data/docs/deep/b && echo o > data/other/o",
      cwd: ws.path)
    #expect(try ws.tidemark(["init", "-r", "repo"]).status == 0)
    #expect(try ws.tidemark(["-r", "repo", "backup", "data"]).status == 0)
    let original = try describeTree(ws.sub("data/docs"))
    _ = try Tools.sh("rm -rf data/docs && echo changed > data/other/o && echo new > data/other/n", cwd: ws.path)

    let mnt = ws.sub("mnt")
    let m = try MountProcess(ws, ["-r", "repo", "mount"], mountpoint: mnt)
    #expect(m.wait(for: mnt + "/snapshots/latest/data/docs/a"))
    // No -r: the repository comes from the mount's status file; the place from the snapshot.
    let r = try Tools.run(
      Tools.tidemark, ["restore", mnt + "/snapshots/latest/data/docs"], env: ["TIDEMARK_PASSWORD": "test-pw"],
      cwd: "/")
    #expect(r.status == 0, "\(r.stderr)")
    #expect(differences(original, try describeTree(ws.sub("data/docs")), ignoreRootMtime: false).isEmpty)
    // With --config instead of a password in the environment: its password file serves the mount's repository.
    try "test-pw\n".write(toFile: ws.sub("pw"), atomically: true, encoding: .utf8)
    try "repository: \(ws.sub("repo"))\npassword-file: \(ws.sub("pw"))\n".write(
      toFile: ws.sub("c.yaml"), atomically: true, encoding: .utf8)
    let viaConfig = try Tools.run(
      Tools.tidemark, ["restore", mnt + "/snapshots/latest/data/docs", "--config", ws.sub("c.yaml")], cwd: "/")
    #expect(viaConfig.status == 0, "\(viaConfig.stderr)")
    // Exactly that directory: its siblings keep their local changes.
    #expect(try String(contentsOfFile: ws.sub("data/other/o"), encoding: .utf8) == "changed\n")
    #expect(FileManager.default.fileExists(atPath: ws.sub("data/other/n")))

    // A single file from the mount, under --target.
    let f = try Tools.run(
      Tools.tidemark,
      [
        "restore",
        mnt + "/ids/"
          + String(
            try #require(
              snapshotIDs(try ws.tidemark(["-r", "repo", "snapshots", "--json"]).out).first
            ).prefix(8)) + "/data/other/o",
        "--target", ws.sub("single"),
      ], env: ["TIDEMARK_PASSWORD": "test-pw"], cwd: "/")
    #expect(f.status == 0, "\(f.stderr)")
    #expect(try String(contentsOfFile: ws.sub("single/o"), encoding: .utf8) == "o\n")
  }

  /// `restore SNAPSHOT --in-place --delete` without a PATH puts back each of the snapshot's paths where it was:
  /// extra files inside them go, a sibling directory and the parent keep theirs; a relative backup path is
  /// found at its absolute place; a snapshot of `/` needs --no-preserve-root.
  @Test func wholeSnapshotInPlaceRestoresItsOwnPathsAndNothingBeside() throws {
    let ws = try Workspace("restore-paths")
    _ = try Tools.sh(
      """
      mkdir -p site/www/img site/sibling conf
      echo index > site/www/index.html && echo logo > site/www/img/logo.png && echo keep > site/sibling/s
      echo 'listen 80' > conf/nginx.conf
      """, cwd: ws.path)
    #expect(try ws.tidemark(["init", "-r", "repo"]).status == 0)
    // One absolute path and one relative one.
    let b = try Tools.run(
      Tools.tidemark, ["-r", ws.sub("repo"), "backup", ws.sub("site/www"), "conf"],
      env: ["TIDEMARK_PASSWORD": "test-pw"], cwd: ws.path)
    try #require(b.status == 0, "\(b.stderr)")
    let www = try describeTree(ws.sub("site/www"))
    let conf = try describeTree(ws.sub("conf"))

    _ = try Tools.sh(
      """
      echo changed > site/www/index.html && rm site/www/img/logo.png && echo extra > site/www/extra.html
      mkdir site/www/newdir && echo y > site/www/newdir/y
      echo 'listen 8080' > conf/nginx.conf && echo stray > conf/stray.conf
      echo changed > site/sibling/s && echo new > site/sibling/n && echo beside > site/beside.txt
      """, cwd: ws.path)
    let r = try ws.tidemark(["-r", "repo", "restore", "latest", "--in-place", "--delete", "--json", "-v"])
    #expect(r.status == 0, "\(r.stderr)")
    #expect(differences(www, try describeTree(ws.sub("site/www")), ignoreRootMtime: false).isEmpty)
    #expect(differences(conf, try describeTree(ws.sub("conf")), ignoreRootMtime: false).isEmpty)
    #expect(try String(contentsOfFile: ws.sub("site/sibling/s"), encoding: .utf8) == "changed\n")
    #expect(FileManager.default.fileExists(atPath: ws.sub("site/sibling/n")))
    #expect(FileManager.default.fileExists(atPath: ws.sub("site/beside.txt")))
    // Each change is named by its absolute path: two paths restored at once would otherwise both have `./`.
    let items = itemized(r).joined(separator: "\n")
    for path in ["site/www/extra.html", "site/www/newdir/", "conf/stray.conf", "conf/nginx.conf"] {
      #expect(items.contains("\"item\":\"\(ws.sub(path))\""), "\(path) not in:\n\(items)")
    }
    let summary = try #require(restoreSummary(r))
    #expect(summary["files_deleted"]?.int == 3, "\(r.out)")
    #expect(summary["targets"]?.array?.compactMap(\.string).sorted() == [ws.sub("conf"), ws.sub("site/www")].sorted())

    // A snapshot of `/` (everything excluded, so it is empty) is not restored with --delete by accident.
    #expect(try ws.tidemark(["-r", "repo", "backup", "/", "--exclude", "/*"]).status == 0)
    // `snapshots latest` is that newest snapshot alone, as in restic.
    let latest = try ws.tidemark(["-r", "repo", "snapshots", "latest", "--json"])
    #expect(snapshotIDs(latest.out).count == 1 && latest.out.contains(#""paths":["/"]"#), "\(latest.out)")
    let root = try ws.tidemark(["-r", "repo", "restore", "latest", "--in-place", "--delete", "--dry-run"])
    #expect(root.status == 1)
    #expect(
      root.stderr.contains("refusing --delete on /") && root.stderr.contains("--no-preserve-root"), "\(root.stderr)")
  }

  /// `tidemark mount` hands its master key to a restore from a path inside it (no password, no second key
  /// derivation), through an abstract socket that answers root and the mount's own user only.
  @Test func mountSharesItsKeyWithRestoreOnlyForRootAndItsUser() throws {
    let ws = try Workspace("restore-key")
    _ = try Tools.sh("mkdir -p data/d && echo a > data/d/a && echo b > data/d/b", cwd: ws.path)
    #expect(try ws.tidemark(["init", "-r", "repo"]).status == 0)
    #expect(try ws.tidemark(["-r", "repo", "backup", "data"]).status == 0)
    let mnt = ws.sub("mnt")
    let m = try MountProcess(ws, ["-r", "repo", "mount"], mountpoint: mnt)
    #expect(m.wait(for: mnt + "/snapshots/latest/data/d/a"))
    let status = try JSON.parse(Sys.readFile(BytePath(mnt + "/.tidemark/status.json")))
    let socket = try #require(status["key_socket"]?.string, "status.json names no key socket")

    // No password anywhere (Tools.run passes no TIDEMARK_*/RESTIC_* variables): the key comes from the mount.
    let r = try Tools.run(
      Tools.tidemark, ["restore", mnt + "/snapshots/latest/data/d", "--target", ws.sub("out")], cwd: "/")
    #expect(r.status == 0, "\(r.stderr)")
    #expect(try String(contentsOfFile: ws.sub("out/b"), encoding: .utf8) == "b\n")

    // The socket itself: root (this test) gets the master key; another user gets nothing.
    let probe =
      "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect('\\0'+sys.argv[1]); print(s.makefile('rb').read().decode())"
    let asRoot = try Tools.run("/usr/bin/python3", ["-c", probe, socket])
    #expect(asRoot.status == 0, "\(asRoot.stderr)")
    #expect(MasterKey(json: Array(asRoot.out.utf8)) != nil, "root did not get a master key: \(asRoot.out)")
    let asNobody = try Tools.run(
      "/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", probe, socket])
    #expect(asNobody.status == 0, "\(asNobody.stderr)")
    #expect(asNobody.out.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "another user got: \(asNobody.out)")

    // --no-share-key: no socket, and a restore without a password fails and writes nothing.
    let mnt2 = ws.sub("mnt2")
    let m2 = try MountProcess(ws, ["-r", "repo", "mount", "--no-share-key"], mountpoint: mnt2)
    #expect(m2.wait(for: mnt2 + "/snapshots/latest/data/d/a"))
    let status2 = try JSON.parse(Sys.readFile(BytePath(mnt2 + "/.tidemark/status.json")))
    #expect(status2["key_socket"] == nil)
    let denied = try Tools.run(
      Tools.tidemark, ["restore", mnt2 + "/snapshots/latest/data/d", "--target", ws.sub("out2")], cwd: "/")
    #expect(denied.status != 0)
    #expect(denied.stderr.contains("password"), "\(denied.stderr)")
    #expect(!FileManager.default.fileExists(atPath: ws.sub("out2")))
    withExtendedLifetime((m, m2)) {}
  }

  /// A symlink on disk where the snapshot has a directory is replaced, never followed: `--delete` neither
  /// lists nor removes what it points to, and the dry run does not look through it either.
  @Test func aSymlinkStandingForADirectoryIsReplacedNotFollowed() throws {
    let ws = try Workspace("restore-symlink-dir")
    _ = try Tools.sh("mkdir -p src/a/deep && echo x > src/a/x && echo y > src/a/deep/y", cwd: ws.path)
    #expect(try ws.tidemark(["init", "-r", "repo"]).status == 0)
    #expect(try ws.tidemark(["-r", "repo", "backup", "src"]).status == 0)
    let snapshot = try describeTree(ws.sub("src"))
    let outside = """
      rm -rf src/a && mkdir -p victim/deep && echo keep > victim/precious && echo x > victim/x
      echo old > victim/deep/y && ln -s \(ws.sub("victim")) src/a
      """
    _ = try Tools.sh(outside, cwd: ws.path)
    let victim = try describeTree(ws.sub("victim"))

    let dry = try ws.tidemark(["-r", "repo", "restore", "latest:src", "--in-place", "--delete", "-n"])
    #expect(dry.status == 0, "\(dry.stderr)")
    #expect(!dry.out.contains("deleting"), "the dry run looked through the link: \(dry.out)")
    let real = try ws.tidemark(["-r", "repo", "restore", "latest:src", "--in-place", "--delete", "-v"])
    #expect(real.status == 0, "\(real.stderr)")
    #expect(itemized(dry) == itemized(real))
    #expect(differences(victim, try describeTree(ws.sub("victim")), ignoreRootMtime: false).isEmpty)
    #expect(try Sys.lstat(BytePath(ws.sub("src/a"))).isDirectory)
    #expect(differences(snapshot, try describeTree(ws.sub("src")), ignoreRootMtime: true).isEmpty)
  }

  @Test func hostileSnapshotsCannotWriteOutsideTheTarget() async throws {
    let ws = try Workspace("hostile")
    #expect(try ws.tidemark(["init", "-r", "repo"]).status == 0)
    let repo = try await Repository.open(
      backend: LocalBackend(path: BytePath(ws.sub("repo"))), password: Array("test-pw".utf8))
    let saver = BlobSaver(repository: repo)
    func file(_ name: String, _ text: String) async throws -> Node {
      let data = Array(text.utf8)
      _ = try await saver.save(.data, data)
      var n = Node(name: Array(name.utf8), type: .file)
      n.mode = 0o644
      n.size = UInt64(data.count)
      n.content = [BlobID(RawID.hash(data))]
      return n
    }
    func tree(_ nodes: [Node]) async throws -> BlobID {
      let json = Tree(nodes: nodes).encode()
      _ = try await saver.save(.tree, json)
      return BlobID(RawID.hash(json))
    }
    func dir(_ name: String, _ sub: BlobID) -> Node {
      var n = Node(name: Array(name.utf8), type: .dir)
      n.mode = GoMode.dir | 0o755
      n.subtree = sub
      return n
    }
    // 1. Names that climb or contain a slash.
    let climbing = try await tree([
      try await file("..", "dotdot"), try await file("../escape", "slash"), try await file("fine", "ok"),
    ])
    // 2. A symlink out of the target and a directory of the same name with a file beneath it.
    var link = Node(name: Array("evil".utf8), type: .symlink)
    link.linkTarget = Array(ws.sub("outside").utf8)
    let twins = try await tree([link, dir("evil", try await tree([try await file("pwned", "gotcha")]))])
    // 3. A plain directory, restored where a symlink out of the target already stands.
    let plain = try await tree([dir("evil", try await tree([try await file("pwned", "gotcha")]))])
    try await saver.finish()
    var ids: [String] = []
    for t in [climbing, twins, plain] {
      ids.append(try await repo.saveSnapshot(Snapshot(time: .now(), tree: t, paths: [ws.sub("x")])).hex)
    }
    try FileManager.default.createDirectory(atPath: ws.sub("outside"), withIntermediateDirectories: true)

    let r1 = try ws.tidemark(["-r", "repo", "restore", ids[0], "--target", ws.sub("t1/inner")])
    #expect(r1.status == 1 && r1.stderr.contains("unsafe name"), "\(r1.stderr)")
    #expect(try String(contentsOfFile: ws.sub("t1/inner/fine"), encoding: .utf8) == "ok")
    #expect(!FileManager.default.fileExists(atPath: ws.sub("t1/escape")))
    #expect(try FileManager.default.contentsOfDirectory(atPath: ws.sub("t1")) == ["inner"])

    let r2 = try ws.tidemark(["-r", "repo", "restore", ids[1], "--target", ws.sub("t2")])
    #expect(r2.status == 1 && r2.stderr.contains("two entries named evil"), "\(r2.stderr)")

    try FileManager.default.createDirectory(atPath: ws.sub("t3"), withIntermediateDirectories: true)
    try FileManager.default.createSymbolicLink(atPath: ws.sub("t3/evil"), withDestinationPath: ws.sub("outside"))
    let r3 = try ws.tidemark(["-r", "repo", "restore", ids[2], "--target", ws.sub("t3")])
    #expect(r3.status == 0, "\(r3.stderr)")
    #expect(try FileManager.default.contentsOfDirectory(atPath: ws.sub("outside")).isEmpty, "wrote through the link")
    #expect(try Sys.lstat(BytePath(ws.sub("t3/evil"))).isDirectory)
    #expect(try String(contentsOfFile: ws.sub("t3/evil/pwned"), encoding: .utf8) == "gotcha")
  }

  @Test func killedRestoreLeavesEveryFileOldOrNewAndARerunFinishes() throws {
    let ws = try Workspace("restore-kill")
    _ = try Tools.sh(
      "mkdir -p src && for i in $(seq 1 24); do head -c 4000000 /dev/urandom > src/f$i; done", cwd: ws.path)
    #expect(try ws.tidemark(["init", "-r", "repo"]).status == 0)
    #expect(try ws.tidemark(["-r", "repo", "backup", "src"]).status == 0)
    let new = try describeTree(ws.sub("src"))

    for delay in [150_000, 300_000, 450_000, 700_000] as [UInt32] {
      // Every file rewritten, so every file must be rebuilt: the restore is killed at some point in that.
      _ = try Tools.sh("for f in src/f*; do head -c 4000000 /dev/urandom > $f; done", cwd: ws.path)
      let before = try describeTree(ws.sub("src"))
      let p = Process()
      p.executableURL = URL(fileURLWithPath: Tools.tidemark)
      p.arguments = ["-r", "repo", "restore", "latest:src", "--in-place", "-q"]
      p.environment = ["TIDEMARK_PASSWORD": "test-pw", "PATH": "/usr/bin:/bin"]
      p.currentDirectoryURL = URL(fileURLWithPath: ws.path)
      try p.run()
      usleep(delay)
      kill(p.processIdentifier, SIGKILL)
      p.waitUntilExit()
      // Every file is whole: the state before the restore or the snapshot's, never a mix.
      let now = try describeTree(ws.sub("src"))
      for (name, facts) in now where name.hasPrefix("f") {
        #expect(facts.content == before[name]?.content || facts.content == new[name]?.content, "\(name) is torn")
      }
      // A rerun finishes the job and clears the temp files the killed run left.
      let again = try ws.tidemark(["-r", "repo", "restore", "latest:src", "--in-place"])
      #expect(again.status == 0, "\(again.stderr)")
      let d = differences(new, try describeTree(ws.sub("src")), ignoreRootMtime: false)
      #expect(d.isEmpty, "after the rerun: \(d.prefix(5))")
    }
  }

  @Test func killedRestoreOfNewFilesLeavesEachWholeOrAbsentAndNoTempFiles() throws {
    let ws = try Workspace("restore-kill-new")
    _ = try Tools.sh(
      "mkdir -p src && for i in $(seq 1 24); do head -c 4000000 /dev/urandom > src/f$i; done", cwd: ws.path)
    #expect(try ws.tidemark(["init", "-r", "repo"]).status == 0)
    #expect(try ws.tidemark(["-r", "repo", "backup", "src"]).status == 0)
    let snapshot = try describeTree(ws.sub("src"))
    let p = Process()
    p.executableURL = URL(fileURLWithPath: Tools.tidemark)
    p.arguments = ["-r", "repo", "restore", "latest:src", "--target", "out", "-q"]
    p.environment = ["TIDEMARK_PASSWORD": "test-pw", "PATH": "/usr/bin:/bin"]
    p.currentDirectoryURL = URL(fileURLWithPath: ws.path)
    try p.run()
    // Killed as soon as the first file has a name, while the others are being written.
    let deadline = Date().addingTimeInterval(60)
    while Date() < deadline && p.isRunning {
      let names = (try? FileManager.default.contentsOfDirectory(atPath: ws.sub("out"))) ?? []
      if !names.isEmpty { break }
      usleep(500)
    }
    kill(p.processIdentifier, SIGKILL)
    p.waitUntilExit()
    // A new file is written unnamed and linked at its path when complete: whatever has a name is whole, and
    // no temp file is left.
    let names = try FileManager.default.contentsOfDirectory(atPath: ws.sub("out"))
    #expect(names.allSatisfy { $0.hasPrefix("f") }, "left behind: \(names)")
    #expect(!names.isEmpty && names.count < 24, "killed at \(names.count) of 24 files: not in the middle")
    let now = try describeTree(ws.sub("out"))
    for (name, facts) in now where name.hasPrefix("f") {
      #expect(facts.content == snapshot[name]?.content, "\(name) is torn")
    }
  }

  @Test func newFilesAreLinkedWithoutPrivilegeAndWhatAppearedAtTheirPathIsReplaced() throws {
    let ws = try Workspace("restore-unnamed")
    _ = try Tools.sh(
      "mkdir -p src/d && head -c 300000 /dev/urandom > src/d/big && echo small > src/d/small && echo x > src/x",
      cwd: ws.path)
    #expect(try ws.tidemark(["init", "-r", "repo"]).status == 0)
    #expect(try ws.tidemark(["-r", "repo", "backup", "src"]).status == 0)
    let snapshot = try describeTree(ws.sub("src"))

    // As a user without CAP_DAC_READ_SEARCH (new files named through /proc/self/fd where the kernel wants it).
    _ = try Tools.sh("mkdir out && chown 65534:65534 out && chmod 755 . && chown -R 65534:65534 repo", cwd: ws.path)
    let r = try Tools.run(
      "/usr/bin/setpriv",
      [
        "--reuid=65534", "--regid=65534", "--clear-groups", Tools.tidemark, "-r", "repo", "restore", "latest:src",
        "--target", "out",
      ],
      env: ["TIDEMARK_PASSWORD": "test-pw"], cwd: ws.path)
    #expect(r.status == 0, "\(r.stderr)")
    let asUser = try describeTree(ws.sub("out"))
    #expect(asUser["d/big"]?.content == snapshot["d/big"]?.content)
    #expect(asUser["d/small"]?.content == snapshot["d/small"]?.content)
    #expect(asUser["x"]?.content == snapshot["x"]?.content)

    // A symlink standing where the snapshot has a file is replaced (the unnamed file cannot be linked over it,
    // so it is named beside and renamed), never followed.
    _ = try Tools.sh(
      "echo keep > precious && rm src/x && ln -s \(ws.sub("precious")) src/x && rm src/d/small && ln -s ../../precious src/d/small",
      cwd: ws.path)
    let again = try ws.tidemark(["-r", "repo", "restore", "latest:src", "--in-place"])
    #expect(again.status == 0, "\(again.stderr)")
    #expect(differences(snapshot, try describeTree(ws.sub("src")), ignoreRootMtime: true).isEmpty)
    #expect(try String(contentsOfFile: ws.sub("precious"), encoding: .utf8) == "keep\n")
    let left = try Tools.sh("find src -name '.tidemark-restore-*' | wc -l", cwd: ws.path).out
    #expect(left.trimmingCharacters(in: .whitespacesAndNewlines) == "0")
  }
}
