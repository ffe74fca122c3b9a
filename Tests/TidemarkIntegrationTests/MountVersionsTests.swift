// `versions/<host>/<absolute path>` in a real mount: one path followed through every snapshot of a host.
import Foundation
import Testing
import TidemarkBackends
import TidemarkCore
import TidemarkSystem

/// The entries of `dir` in the order the filesystem lists them (`ls -f`, no sorting), without "." and "..".
private func listed(_ dir: String) throws -> [String] {
  let r = try Tools.run("/bin/ls", ["-f", dir])
  guard r.status == 0 else { throw TidemarkError(.general, "ls \(dir): \(r.stderr)") }
  return r.out.split(separator: "\n").map(String.init).filter { $0 != "." && $0 != ".." }
}

private func contents(_ path: String) throws -> [UInt8] { try Sys.readFile(BytePath(path)) }

/// Repeats `what` for up to 15 s until it holds.
private func eventually(_ what: () throws -> Bool) -> Bool {
  for _ in 0..<150 {
    if (try? what()) == true { return true }
    usleep(100_000)
  }
  return false
}

@Suite(.serialized) struct MountVersionsTests {
  /// Three backups of an absolute path in which `conf.txt` changed twice, `gone.txt` was deleted, `flip.txt` went
  /// A, B, A, `same.txt` never changed, `mixed` went from a file to a directory and `link` changed its target.
  private func threeBackups(_ ws: Workspace) throws -> String {
    let src = ws.sub("src")
    try FileManager.default.createDirectory(atPath: src, withIntermediateDirectories: true)
    #expect(try ws.tidemark(["init", "-r", "repo"]).status == 0)
    let steps = [
      "printf 'first\\n' > conf.txt; printf 'old\\n' > gone.txt; printf A > flip.txt; printf same > same.txt;"
        + " printf x > mixed; ln -s target-one link",
      "printf 'second, longer\\n' > conf.txt; rm gone.txt; printf B > flip.txt;"
        + " rm mixed; mkdir mixed; printf y > mixed/inner; ln -sfn target-two link",
      "printf 'third\\n' > conf.txt; printf A > flip.txt",
    ]
    for (k, step) in steps.enumerated() {
      if k > 0 { usleep(1_100_000) }  // each snapshot's time gets its own name
      let s = try Tools.sh(step, cwd: src)
      try #require(s.status == 0, "\(s.stderr)")
      let b = try ws.tidemark(["-r", "repo", "backup", src, "--host", "vh"])
      try #require(b.status == 0, "\(b.stderr)")
    }
    return src
  }

  /// The names of the host's snapshot directories in the mount, oldest first.
  private func snapshotTimes(_ mnt: String) throws -> [String] {
    try listed(mnt + "/hosts/vh").filter { $0 != "latest" }.sorted()
  }

  @Test func aFileShowsEachVersionOldestFirstAndADirectoryTheUnionOfNames() throws {
    let ws = try Workspace("mount-versions")
    let src = try threeBackups(ws)
    let mnt = ws.sub("mnt")
    let m = try MountProcess(ws, ["-r", "repo", "mount"], mountpoint: mnt)
    let dir = mnt + "/versions/vh" + src
    #expect(m.wait(for: dir + "/conf.txt"), "versions/ never showed the path")
    let times = try snapshotTimes(mnt)
    try #require(times.count == 3)
    #expect(try listed(mnt + "/versions") == ["vh"])

    // Two changes: three versions, oldest first, named by the times of the snapshots that first held them.
    let conf = try listed(dir + "/conf.txt")
    #expect(conf == times, "\(conf) vs \(times)")
    let read = try conf.map { String(decoding: try contents(dir + "/conf.txt/" + $0), as: UTF8.self) }
    #expect(read == ["first\n", "second, longer\n", "third\n"], "\(read)")
    #expect(try contents(dir + "/conf.txt/" + conf[2]) == contents(src + "/conf.txt"))

    // Each version has the size and mtime stored in its snapshot.
    for t in conf {
      let v = try Sys.lstat(BytePath(dir + "/conf.txt/" + t))
      let stored = try Sys.lstat(BytePath("\(mnt)/hosts/vh/\(t)\(src)/conf.txt"))
      #expect(v.isRegular && v.size == stored.size && v.mtime == stored.mtime, "\(t)")
    }

    // cp puts a version back.
    let cp = try Tools.run("/bin/cp", [dir + "/conf.txt/" + conf[0], ws.sub("restored")])
    #expect(cp.status == 0, "\(cp.stderr)")
    #expect(try contents(ws.sub("restored")) == Array("first\n".utf8))
    // So does `tidemark restore`, from the version's snapshot; a directory of versions is no restore source.
    let r = try ws.tidemark(["restore", dir + "/conf.txt/" + conf[1], "--target", ws.sub("rt")])
    #expect(r.status == 0, "\(r.stderr)")
    #expect(try contents(ws.sub("rt/conf.txt")) == Array("second, longer\n".utf8))
    let many = try ws.tidemark(["restore", dir + "/conf.txt", "--target", ws.sub("rt2")])
    #expect(many.status != 0 && many.stderr.contains("versions"), "\(many.stderr)")

    // The directory lists every name seen at its path: the deleted file too.
    #expect(Set(try listed(dir)) == ["conf.txt", "gone.txt", "flip.txt", "same.txt", "mixed", "link"])
    #expect(try listed(dir + "/gone.txt") == [times[0]])
    #expect(try contents(dir + "/gone.txt/" + times[0]) == Array("old\n".utf8))
    // Unchanged content is one version; content that comes back is a version again (A, B, A).
    #expect(try listed(dir + "/same.txt") == [times[0]])
    #expect(try listed(dir + "/flip.txt") == times)
    #expect(try contents(dir + "/flip.txt/" + times[2]) == Array("A".utf8))
    // A path that was a file, then a directory: its names and the file's version side by side.
    #expect(Set(try listed(dir + "/mixed")) == [times[0], "inner"])
    #expect(try contents(dir + "/mixed/" + times[0]) == Array("x".utf8))
    #expect(try listed(dir + "/mixed/inner") == [times[1]])
    // A symlink has a version per target, each a symlink.
    #expect(try listed(dir + "/link") == [times[0], times[1]])
    #expect(try Sys.readlink(BytePath(dir + "/link/" + times[1])) == Array("target-two".utf8))
    // Parents of the backed-up path are followed from the root as stored.
    #expect(try listed(mnt + "/versions/vh").contains(String(src.split(separator: "/")[0])))
    #expect(!FileManager.default.fileExists(atPath: dir + "/nothing-here"))

    // The mount is read-only here too; restic still reads the repository as before.
    #expect(mkdir(dir + "/new", 0o755) == -1 && errno == EROFS)
    let restic = try ws.restic(["-r", "repo", "--no-lock", "snapshots", "--json"])
    #expect(restic.status == 0 && snapshotIDs(restic.out).count == 3, "\(restic.stderr)")
  }

  @Test func aNewSnapshotShowsUpAfterARefresh() throws {
    let ws = try Workspace("mount-versions-refresh")
    let src = try threeBackups(ws)
    let mnt = ws.sub("mnt")
    let m = try MountProcess(ws, ["-r", "repo", "mount", "--refresh", "1"], mountpoint: mnt)
    let dir = mnt + "/versions/vh" + src
    #expect(m.wait(for: dir + "/conf.txt"))
    let times = try snapshotTimes(mnt)
    #expect(try listed(dir + "/conf.txt") == times)

    usleep(1_100_000)
    let s = try Tools.sh("printf 'fourth\\n' > conf.txt; printf new > added.txt", cwd: src)
    try #require(s.status == 0)
    #expect(try ws.tidemark(["-r", "repo", "backup", src, "--host", "vh"]).status == 0)
    #expect(
      eventually { try listed(dir + "/conf.txt").count == 4 },
      "conf.txt lists \((try? listed(dir + "/conf.txt")) ?? [])")
    let conf = try listed(dir + "/conf.txt")
    #expect(Array(conf.prefix(3)) == times)
    #expect(try contents(dir + "/conf.txt/" + conf[3]) == Array("fourth\n".utf8))
    #expect(eventually { try listed(dir).contains("added.txt") }, "the new name did not appear")
  }

  /// 500 snapshots (five minutes apart), as a day and a half of a busy host gives: listing a file's versions must
  /// be quick once the trees are in memory. Each snapshot has a root tree of its own (as when anything anywhere
  /// changed), over the subtrees of three real backups.
  @Test func fiveHundredSnapshotsListQuicklyWithAWarmCache() async throws {
    let ws = try Workspace("mount-versions-500")
    let src = try threeBackups(ws)
    let repo = try await Repository.open(
      backend: LocalBackend(path: BytePath(ws.sub("repo"))), password: Array("test-pw".utf8))
    try await repo.loadIndex()
    let real = try await repo.listSnapshots().sorted { $0.time < $1.time }
    try #require(real.count == 3)
    var roots: [Tree] = []
    for s in real { roots.append(try await repo.loadTree(s.tree)) }
    let saver = BlobSaver(repository: repo)
    var snapshots: [Snapshot] = []
    let start = real[2].time.seconds + 3600
    for i in 0..<497 {
      // Runs of ten snapshots over one backup's subtrees, cycling third, first, second, …: the file's content
      // changes every ten snapshots, and the first run continues the third backup's version.
      var root = roots[(i / 10 + 2) % 3]
      var stamp = Node(name: Array("stamp-\(i)".utf8), type: .file)
      stamp.mode = 0o644
      stamp.content = []
      root.nodes.append(stamp)
      root.sort()
      let data = root.encode()
      let id = BlobID(RawID.hash(data))
      try await saver.save(.tree, data, id: id)
      var s = Snapshot(
        time: Timestamp(seconds: start + Int64(i) * 300, nanoseconds: 0, offset: 0), tree: id, paths: real[0].paths)
      s.hostname = "vh"
      s.username = real[0].username
      snapshots.append(s)
    }
    try await saver.finish()
    for s in snapshots { _ = try await repo.saveUnpacked(.snapshot, json: s.encode()) }
    let check = try ws.restic(["-r", "repo", "check"])
    #expect(check.status == 0, "\(check.out) \(check.stderr)")
    #expect(snapshotIDs(try ws.restic(["-r", "repo", "snapshots", "--json"]).out).count == 500)

    let mnt = ws.sub("mnt")
    let m = try MountProcess(ws, ["-r", "repo", "mount"], mountpoint: mnt)
    let file = mnt + "/versions/vh" + src + "/conf.txt"
    #expect(m.wait(for: mnt + "/versions/vh"))
    func timed(_ what: () throws -> [String]) rethrows -> (Double, [String]) {
      let t0 = Date()
      let r = try what()
      return (Date().timeIntervalSince(t0), r)
    }
    let (cold, first) = try timed { try listed(file) }
    let (warm, second) = try timed { try listed(file) }
    print("versions/ of one file across 500 snapshots: cold \(cold) s, warm \(warm) s")
    // Three versions from the backups, then one for each run of ten after the first: 3 + 49.
    #expect(first.count == 52, "\(first.count) versions")
    #expect(second == first)
    #expect(warm < 1, "warm listing took \(warm) s")
    let stats = try Tools.run("/bin/ls", ["-l", file])
    #expect(stats.status == 0 && stats.out.split(separator: "\n").count == 53, "\(stats.out.prefix(500))")
    #expect(
      Set(try listed(mnt + "/versions/vh" + src)) == ["conf.txt", "gone.txt", "flip.txt", "same.txt", "mixed", "link"])
  }
}
