// Compatibility with the real restic (Debian's 0.14): each tool reads, checks and restores what the other wrote.
import Foundation
import Testing
import TidemarkBackends
import TidemarkCore
import TidemarkSystem

@Suite(.serialized) struct InteropTests {
  @Test func tidemarkBackupPassesResticCheckAndRestoresWithBoth() throws {
    let ws = try Workspace("t2r")
    try makeAwkwardTree(in: ws.path, nonUTF8LinkTarget: true)
    #expect(try ws.tidemark(["-r", "repo", "init"]).status == 0)
    let b = try ws.tidemark(["-r", "repo", "backup", "src", "--json"])
    #expect(b.status == 0, "\(b.stderr)")
    #expect(b.out.contains("\"message_type\":\"summary\""))

    let check = try ws.restic(["-r", "repo", "check", "--read-data"])
    #expect(check.status == 0, "restic check failed: \(check.out) \(check.stderr)")
    #expect(check.out.contains("no errors were found"))

    let source = try describeTree(ws.sub("src"))
    #expect(source.count > 20)

    let rr = try ws.restic(["-r", "repo", "restore", "latest", "--target", "by-restic"])
    #expect(rr.status == 0, "\(rr.stderr)")
    // restic 0.14 reads only the lossy UTF-8 `linktarget` (it predates `linktarget_raw`).
    let d1 = differences(source, try describeTree(ws.sub("by-restic/src")), ignoreLinkTargetOf: ["badtarget"])
    #expect(d1.isEmpty, "restic restore differs:\n\(d1.joined(separator: "\n"))")

    let tr = try ws.tidemark(["-r", "repo", "restore", "latest", "--target", "by-tidemark"])
    #expect(tr.status == 0, "\(tr.stderr)")
    let d2 = differences(source, try describeTree(ws.sub("by-tidemark/src")))
    #expect(d2.isEmpty, "tidemark restore differs:\n\(d2.joined(separator: "\n"))")

    // The sparse file comes back sparse from tidemark.
    let sparse = try Sys.lstat(BytePath(ws.sub("by-tidemark/src/sparse")))
    #expect(sparse.blocks * 512 < 1 << 20)
  }

  @Test func resticBackupRestoresWithTidemarkAndListsTheSame() throws {
    let ws = try Workspace("r2t")
    try makeAwkwardTree(in: ws.path, nonUTF8LinkTarget: false)
    #expect(try ws.restic(["-r", "repo", "init"]).status == 0)
    let b = try ws.restic(["-r", "repo", "backup", "src"])
    #expect(b.status == 0, "\(b.stderr)")

    let tr = try ws.tidemark(["-r", "repo", "restore", "latest", "--target", "out"])
    #expect(tr.status == 0, "\(tr.stderr)")
    let d = differences(try describeTree(ws.sub("src")), try describeTree(ws.sub("out/src")))
    #expect(d.isEmpty, "tidemark restore of a restic snapshot differs:\n\(d.joined(separator: "\n"))")

    let rl = try ws.restic(["-r", "repo", "ls", "latest"])
    let tl = try ws.tidemark(["-r", "repo", "ls", "latest"])
    #expect(tl.status == 0)
    let resticLines = rl.stdout.split(separator: 10).dropFirst().map { Array($0) }  // restic prints a header line
    let tidemarkLines = tl.stdout.split(separator: 10).map { Array($0) }
    #expect(resticLines.count > 20)
    #expect(tidemarkLines == resticLines)

    // A subpath restore and an include filter.
    let sub = try ws.tidemark(["-r", "repo", "restore", "latest:src/sub", "--target", "only-sub"])
    #expect(sub.status == 0, "\(sub.stderr)")
    #expect(FileManager.default.fileExists(atPath: ws.sub("only-sub/numbers.txt")))
    #expect(!FileManager.default.fileExists(atPath: ws.sub("only-sub/file.txt")))
    let inc = try ws.tidemark(["-r", "repo", "restore", "latest", "--target", "inc", "--include", "*.txt"])
    #expect(inc.status == 0)
    #expect(FileManager.default.fileExists(atPath: ws.sub("inc/src/sub/numbers.txt")))
    #expect(!FileManager.default.fileExists(atPath: ws.sub("inc/src/sub/random.bin")))
  }

  /// Small files are stored in batches that span directories: many of them, of every size up to one chunk,
  /// empty ones and copies among them, must come back byte for byte, and count as restic counts them.
  @Test func batchesOfSmallFilesAcrossDirectoriesRestoreExactly() throws {
    let ws = try Workspace("batches")
    let r = try Tools.sh(
      """
      python3 -c '
      import os, random
      g = random.Random(7)
      for d in range(6):
          os.makedirs(f"data/d{d}/sub", exist_ok=True)
          for i in range(120):
              n = g.choice([0, 1, 200, 4000, 70000, 524287])
              p = f"data/d{d}/sub/f{i}" if i % 3 else f"data/d{d}/f{i}"
              with open(p, "wb") as f: f.write(bytes(g.getrandbits(8) for _ in range(n)) if i % 7 else b"same" * 50)
      with open("data/large", "wb") as f: f.write(os.urandom(600000))
      '
      """, cwd: ws.path)
    #expect(r.status == 0, "\(r.stderr)")
    #expect(try ws.tidemark(["-r", "repo", "init"]).status == 0)
    let b = try ws.tidemark(["-r", "repo", "backup", "data", "--json"])
    #expect(b.status == 0, "\(b.stderr)")
    #expect(b.out.contains("\"files_new\":721"), "\(b.out)")
    let check = try ws.restic(["-r", "repo", "check", "--read-data"])
    #expect(check.status == 0, "restic check failed: \(check.out) \(check.stderr)")
    let rr = try ws.restic(["-r", "repo", "restore", "latest", "--target", "out"])
    #expect(rr.status == 0, "\(rr.stderr)")
    let d = differences(try describeTree(ws.sub("data")), try describeTree(ws.sub("out/data")))
    #expect(d.isEmpty, "restic restore differs:\n\(d.joined(separator: "\n"))")
    // Unchanged: every file is taken from the parent, none is read.
    let again = try ws.tidemark(["-r", "repo", "backup", "data", "--json"])
    #expect(again.out.contains("\"files_unmodified\":721"), "\(again.out)")
  }

  /// Subdirectories are walked beside the main walk, so the order in which a wide tree is read changes from
  /// run to run. The snapshot must not: every backup of the same tree, read in full (`--force`) or taken from
  /// its parent, has the root tree restic writes for it.
  @Test func aWideTreeWalkedInParallelGivesResticsTree() throws {
    let ws = try Workspace("wide")
    let r = try Tools.sh(
      """
      python3 -c '
      import os, random
      g = random.Random(11)
      for a in range(12):
          for b in range(6):
              for c in range(4):
                  d = f"data/a{a}/b{b}/c{c}"
                  os.makedirs(d, exist_ok=True)
                  for i in range(g.randrange(0, 6)):
                      with open(f"{d}/f{i}", "wb") as f: f.write(bytes(g.getrandbits(8) for _ in range(g.randrange(0, 3000))))
              if b % 2: os.symlink(f"../b{b - 1}", f"data/a{a}/b{b}/up")
      os.makedirs("data/empty/deeper", exist_ok=True)
      '
      find data -exec touch -h -d "2026-01-02 03:04:05" {} +
      """, cwd: ws.path)
    #expect(r.status == 0, "\(r.stderr)")
    #expect(try ws.tidemark(["-r", "repo", "init"]).status == 0)
    try expectResticsTree(ws, runs: [["--force"], ["--force"], []])
  }

  /// A file with several names (too large to batch) is read once per backup: its other names, with the same
  /// size and times, take the content of that read. restic reads every name; the snapshot must be the same.
  @Test func hardLinkedLargeFilesGiveResticsTree() throws {
    let ws = try Workspace("hardlinks")
    let r = try Tools.sh(
      """
      mkdir -p data/a data/b/c data/d
      head -c 3000000 /dev/urandom > data/a/big
      ln data/a/big data/b/big-too && ln data/a/big data/b/c/big-three && ln data/a/big data/d/big-four
      seq 1 300000 > data/b/numbers && ln data/b/numbers data/a/numbers-link
      head -c 3000000 /dev/urandom > data/d/single
      find data -exec touch -h -d "2026-01-02 03:04:05" {} +
      """, cwd: ws.path)
    #expect(r.status == 0, "\(r.stderr)")
    #expect(try ws.tidemark(["-r", "repo", "init"]).status == 0)
    try expectResticsTree(ws, runs: [["--force"], ["--force"]])
    // Read under one name: of the four names of `big` one is opened, of the two of `numbers` one.
    let traced = try Tools.run(
      "/usr/bin/strace",
      [
        "-f", "-qq", "-e", "trace=openat", "-o", ws.sub("opens"), Tools.tidemark, "-r", "repo", "backup", "data",
        "--force",
      ],
      env: ["TIDEMARK_PASSWORD": "test-pw"], cwd: ws.path)
    #expect(traced.status == 0, "\(traced.stderr)")
    let opens = try String(contentsOfFile: ws.sub("opens"), encoding: .utf8)
    func opened(_ names: [String]) -> [String] { names.filter { opens.contains("/data/\($0)\"") } }
    #expect(opened(["a/big", "b/big-too", "b/c/big-three", "d/big-four"]).count == 1, "\(opens.suffix(3000))")
    #expect(opened(["b/numbers", "a/numbers-link"]).count == 1)
    #expect(opened(["d/single"]).count == 1)
  }

  /// restic backs up `data`, then tidemark once per entry of `runs` (extra arguments); every tidemark snapshot
  /// must have restic's root tree.
  func expectResticsTree(_ ws: Workspace, runs: [[String]]) throws {
    let rb = try ws.restic(["-r", "repo", "backup", "data", "--json"])
    #expect(rb.status == 0, "\(rb.stderr)")
    func snapshotID(_ out: String) -> String? {
      out.split(separator: "\n").compactMap { line -> String? in
        guard line.contains("\"message_type\":\"summary\""),
          let v = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
          let id = v["snapshot_id"] as? String
        else { return nil }
        return id
      }.last
    }
    guard let resticSnap = snapshotID(rb.out) else {
      Issue.record("no summary from restic: \(rb.out)")
      return
    }
    func tree(_ json: String) -> String? {
      (try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])?["tree"] as? String
    }
    let resticTree = tree(try ws.restic(["-r", "repo", "cat", "snapshot", resticSnap]).out)
    #expect(resticTree != nil)
    for args in runs {
      let b = try ws.tidemark(["-r", "repo", "backup", "data", "--json"] + args)
      #expect(b.status == 0, "\(b.stderr)")
      guard let snap = snapshotID(b.out) else {
        Issue.record("no summary from tidemark: \(b.out)")
        continue
      }
      let cat = try ws.restic(["-r", "repo", "cat", "snapshot", snap])
      #expect(tree(cat.out) == resticTree, "backup \(args): \(cat.out)")
    }
  }

  @Test func unchangedDataDeduplicatesAcrossTheTools() throws {
    let ws = try Workspace("dedup")
    let r = try Tools.sh(
      "mkdir -p data/a data/b && head -c 6000000 /dev/urandom > data/a/r1 && seq 1 400000 > data/b/n && head -c 2000000 /dev/urandom > data/b/r2",
      cwd: ws.path)
    #expect(r.status == 0)
    let corpus = try ws.size("data")

    // tidemark first, then restic into the same repository.
    #expect(try ws.tidemark(["-r", "tm", "init"]).status == 0)
    #expect(try ws.tidemark(["-r", "tm", "backup", "data"]).status == 0)
    let before = try ws.size("tm")
    let rb = try ws.restic(["-r", "tm", "backup", "data", "--force"])
    #expect(rb.status == 0, "\(rb.stderr)")
    let grew = try ws.size("tm") - before
    #expect(grew < 64 << 10, "restic added \(grew) bytes to a tidemark repository holding the same \(corpus) bytes")

    // restic first, then tidemark (reading every file: --force) into the same repository.
    #expect(try ws.restic(["-r", "rs", "init"]).status == 0)
    #expect(try ws.restic(["-r", "rs", "backup", "data"]).status == 0)
    let before2 = try ws.size("rs")
    let tb = try ws.tidemark(["-r", "rs", "backup", "data", "--force", "--json"])
    #expect(tb.status == 0, "\(tb.stderr)")
    let grew2 = try ws.size("rs") - before2
    #expect(grew2 < 64 << 10, "tidemark added \(grew2) bytes to a restic repository holding the same \(corpus) bytes")
    #expect(tb.out.contains("\"data_blobs\":0"))
    #expect(try ws.restic(["-r", "rs", "check"]).status == 0)
  }

  @Test func chunkBoundariesMatchResticOn64MiB() async throws {
    let ws = try Workspace("chunk")
    // 64 MiB of deterministic, mixed content: random runs and repeated text.
    let gen = """
      import random
      r = random.Random(1234)
      with open('big.bin', 'wb') as f:
          for i in range(64):
              if i % 4 == 3:
                  f.write((b'tidemark line %d\\n' % i) * (1048576 // 16) + b'x' * (1048576 - 16 * (1048576 // 16)))
              else:
                  f.write(r.randbytes(1048576))
      """
    #expect(try Tools.run("/usr/bin/env", ["python3", "-c", gen], cwd: ws.path).status == 0)
    #expect(try ws.restic(["-r", "rs", "init"]).status == 0)
    #expect(try ws.restic(["-r", "rs", "backup", "big.bin"]).status == 0)

    /// The blobs of big.bin in the latest snapshot of the repository `dir`.
    func content(_ dir: String) async throws -> [BlobID] {
      let repo = try await Repository.open(
        backend: LocalBackend(path: BytePath(ws.sub(dir))), password: Array("test-pw".utf8))
      try await repo.loadIndex()
      let snap = try #require(try await repo.listSnapshots().last)
      return try #require(try await repo.loadTree(snap.tree).node(named: Array("big.bin".utf8))?.content)
    }
    let resticIDs = try await content("rs")
    #expect(resticIDs.count > 20)

    // tidemark, in a repository that copied restic's chunker polynomial, stores the same blobs.
    #expect(
      try ws.tidemark(
        ["-r", "tm", "init", "--copy-chunker-params", "--from-repo", "rs"], env: ["TIDEMARK_FROM_PASSWORD": "test-pw"]
      ).status == 0)
    #expect(try ws.tidemark(["-r", "tm", "backup", "big.bin"]).status == 0)
    #expect(try await content("tm") == resticIDs)

    // Read with a cold page cache, the file goes straight from the disk (O_DIRECT) into the same blobs, and the
    // backup leaves none of it in the page cache.
    let drop = """
      import os
      fd = os.open('big.bin', os.O_RDONLY)
      os.fsync(fd)
      os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
      """
    #expect(try Tools.run("/usr/bin/env", ["python3", "-c", drop], cwd: ws.path).status == 0)
    #expect(
      try ws.tidemark(
        ["-r", "cold", "init", "--copy-chunker-params", "--from-repo", "rs"], env: ["TIDEMARK_FROM_PASSWORD": "test-pw"]
      ).status == 0)
    #expect(try ws.tidemark(["-r", "cold", "backup", "big.bin"]).status == 0)
    let resident = try Tools.run(
      "/usr/bin/fincore", ["--bytes", "--noheadings", "--output", "RES", "big.bin"], cwd: ws.path)
    let residentBytes =
      Int(String(decoding: resident.stdout, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
    #expect(residentBytes >= 0 && residentBytes < 1 << 20, "\(residentBytes) bytes stayed in the page cache")
    #expect(try await content("cold") == resticIDs)
    #expect(try ws.restic(["-r", "cold", "check", "--read-data"]).status == 0)
  }
}

@Suite(.serialized) struct InterruptionTests {
  /// A backup killed with SIGKILL after its first pack landed leaves a repository restic checks clean,
  /// and the next backup completes. The backup reads standard input from a pipe the test keeps open, so it
  /// is certainly still running when it is killed.
  @Test func killedBackupLeavesACheckableRepository() async throws {
    let ws = try Workspace("kill")
    #expect(try Tools.sh("mkdir data && head -c 40000000 /dev/urandom > data/big", cwd: ws.path).status == 0)
    #expect(try ws.tidemark(["-r", "repo", "init", "--compression", "off"]).status == 0)

    let p = Process()
    p.executableURL = URL(fileURLWithPath: Tools.tidemark)
    p.arguments = ["-r", "repo", "backup", "-q", "--stdin", "--stdin-filename", "big"]
    p.currentDirectoryURL = URL(fileURLWithPath: ws.path)
    p.environment = ["TIDEMARK_PASSWORD": "test-pw", "PATH": "/usr/bin:/bin"]
    let input = Pipe()
    p.standardInput = input
    try p.run()
    input.fileHandleForWriting.write(try Data(contentsOf: URL(fileURLWithPath: ws.sub("data/big"))))
    // The backup has read 40 MB and waits for more: wait for its first pack, then kill it without warning.
    var sawPack = false
    for _ in 0..<1000 where !sawPack {
      let n = try Tools.sh("find repo/data -type f | wc -l", cwd: ws.path).out.trimmingCharacters(
        in: .whitespacesAndNewlines)
      sawPack = n != "0"
      if !sawPack { try await Task.sleep(for: .milliseconds(10)) }
    }
    #expect(p.isRunning)
    kill(p.processIdentifier, SIGKILL)
    p.waitUntilExit()
    try? input.fileHandleForWriting.close()
    #expect(sawPack)
    #expect(p.terminationReason == .uncaughtSignal)
    #expect(
      try ws.tidemark(["-r", "repo", "snapshots", "--json"]).out.trimmingCharacters(in: .whitespacesAndNewlines) == "[]"
    )

    // restic 0.14 does not skip stale locks when it locks (it asks for `unlock`); tidemark's unlock removes
    // the dead process's lock and only that.
    let unlock = try ws.tidemark(["-r", "repo", "unlock"])
    #expect(unlock.status == 0 && unlock.out.contains("removed 1 lock"))
    let check = try ws.restic(["-r", "repo", "check", "--read-data"])
    #expect(check.status == 0, "restic check after an interrupted backup: \(check.out) \(check.stderr)")
    let again = try ws.tidemark(["-r", "repo", "backup", "data"])
    #expect(again.status == 0, "\(again.stderr)")
    #expect(try ws.restic(["-r", "repo", "check"]).status == 0)
    let rs = try ws.tidemark(["-r", "repo", "restore", "latest", "--target", "out"])
    #expect(rs.status == 0)
    #expect(try Tools.sh("cmp data/big out/data/big", cwd: ws.path).status == 0)
    // --stdin from a pipe stores exactly what was piped in.
    let piped = try ws.tidemark(
      ["-r", "repo", "backup", "--stdin", "--stdin-filename", "piped.bin"], stdin: Array("0123456789".utf8))
    #expect(piped.status == 0, "\(piped.stderr)")
    let cat = try ws.tidemark(["-r", "repo", "restore", "latest", "--target", "piped"])
    #expect(cat.status == 0)
    #expect(try Sys.readFile(BytePath(ws.sub("piped/piped.bin"))) == Array("0123456789".utf8))
  }
}
