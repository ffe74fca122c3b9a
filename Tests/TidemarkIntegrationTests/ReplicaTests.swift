// The verbatim replica path of `tidemark replicate`, with restic as the oracle: after every sync the replica
// checks clean (`restic check --read-data`), lists the same snapshot IDs and restores the same files; a sync
// copies about what the last backup added; a sync killed at any moment leaves a clean replica and the next
// one copies only what is missing; a damaged pack of the source is never copied nor referenced.
import Foundation
import Testing
import TidemarkCore
import TidemarkSystem

/// The pack, index and snapshot files of a local repository (path inside it -> size). Temp files a killed
/// save left behind (`<id>-tmp-<n>`, never listed by the backend nor read by restic) are not repository files.
func storedFiles(_ ws: Workspace, _ repo: String) throws -> [String: Int64] {
  let r = try Tools.sh(
    "cd \(repo) && find data index snapshots -type f -printf '%p %s\\n' 2>/dev/null || true", cwd: ws.path)
  var out: [String: Int64] = [:]
  for line in r.out.split(separator: "\n") {
    let parts = line.split(separator: " ")
    guard parts.count == 2, let n = Int64(parts[1]), RawID(hex: parts[0].split(separator: "/").last ?? "") != nil
    else { continue }
    out[String(parts[0])] = n
  }
  return out
}

/// The numbers of a `replicate --json` summary.
func replicaSummary(_ r: RunResult) -> [String: Any] {
  guard let line = r.out.split(separator: "\n").last(where: { $0.contains("\"summary\"") }),
    let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
  else { return [:] }
  return obj
}

/// The snapshot IDs restic lists.
func resticSnapshotIDs(_ ws: Workspace, _ repo: String, password: String = "test-pw") throws -> Set<String> {
  let r = try ws.restic(["-r", repo, "snapshots", "--json"], password: password)
  guard r.status == 0, let list = try JSONSerialization.jsonObject(with: Data(r.stdout)) as? [[String: Any]] else {
    Issue.record("restic snapshots on \(repo): \(r.stderr)")
    return []
  }
  return Set(list.compactMap { $0["id"] as? String })
}

func writeRandom(_ path: String, bytes: Int) throws {
  var rng = SystemRandomNumberGenerator()
  try Data((0..<bytes).map { _ in UInt8.random(in: 0...255, using: &rng) }).write(to: URL(fileURLWithPath: path))
}

@Suite(.serialized) struct ReplicaTests {
  @Test func replicaFollowsEveryBackupLocallyAndOverSFTP() throws {
    let ws = try Workspace("replica")
    let server = try SSHServer(ws)
    #expect(try ws.tidemark(["init", "-r", "dc"]).status == 0)
    try FileManager.default.createDirectory(atPath: ws.sub("src/sub"), withIntermediateDirectories: true)
    let targets: [(name: String, repo: String, options: [String])] = [
      ("local", "dr-local", []),
      ("sftp", "sftp://root@127.0.0.1:\(server.port)/" + ws.sub("dr-sftp"), server.options),
    ]
    var before: [String: Int64] = [:]
    for cycle in 0..<3 {
      // A small tree that changes: new files, changed files, a removed file.
      for i in 0..<6 where cycle == 0 || i % 3 == cycle % 3 {
        try writeRandom(ws.sub("src/\(i % 2 == 0 ? "sub/" : "")f\(i)"), bytes: 20_000 + 70_000 * i)
      }
      try writeRandom(ws.sub("src/new\(cycle)"), bytes: 150_000)
      if cycle == 2 { try FileManager.default.removeItem(atPath: ws.sub("src/new0")) }
      try Data("cycle \(cycle)\n".utf8).write(to: URL(fileURLWithPath: ws.sub("src/cycle.txt")))
      let b = try ws.tidemark(["-r", "dc", "backup", "-q", "src"])
      #expect(b.status == 0, "\(b.stderr)")

      let now = try storedFiles(ws, "dc")
      let added = now.filter { before[$0.key] == nil }.values.reduce(0, +)
      before = now
      let sourceIDs = try resticSnapshotIDs(ws, "dc")
      #expect(sourceIDs.count == cycle + 1)
      for t in targets {
        let r = try ws.tidemark(["-r", "dc", "replicate", "--to", t.repo, "--json"] + t.options)
        #expect(r.status == 0, "\(t.name) cycle \(cycle): \(r.out) \(r.stderr)")
        let s = replicaSummary(r)
        let copied = (s["bytes_copied"] as? Int).map(Int64.init) ?? -1
        #expect(copied > 0 && Double(copied) <= 1.2 * Double(added), "\(t.name) cycle \(cycle): \(copied) vs \(added)")
        #expect(s["created"] as? Bool == (cycle == 0), "\(r.out)")
        #expect(s["snapshots_copied"] as? Int == 1, "\(r.out)")

        // restic on the replica (the SFTP one is a directory on this machine too).
        let dir = "dr-\(t.name)"
        let check = try ws.restic(["-r", dir, "check", "--read-data"])
        #expect(check.status == 0, "\(t.name) cycle \(cycle): \(check.out) \(check.stderr)")
        #expect(try resticSnapshotIDs(ws, dir) == sourceIDs)
        let restored = "r-\(t.name)-\(cycle)"
        let rr = try ws.restic(["-r", dir, "restore", "latest", "--target", restored])
        #expect(rr.status == 0, "\(rr.stderr)")
        let d = differences(try describeTree(ws.sub("src")), try describeTree(ws.sub(restored + "/src")))
        #expect(d.isEmpty, "\(t.name) cycle \(cycle): \(d.prefix(5))")
      }
    }
    // The replica holds exactly the source's files, under the same names, with the same config.
    let source = try storedFiles(ws, "dc")
    #expect(try storedFiles(ws, "dr-local") == source)
    #expect(try storedFiles(ws, "dr-sftp") == source)
    let config = try Data(contentsOf: URL(fileURLWithPath: ws.sub("dc/config")))
    #expect(try Data(contentsOf: URL(fileURLWithPath: ws.sub("dr-local/config"))) == config)
    #expect(try Data(contentsOf: URL(fileURLWithPath: ws.sub("dr-sftp/config"))) == config)
    // Nothing new: nothing copied.
    let again = try ws.tidemark(["-r", "dc", "replicate", "--to", "dr-local", "--json"])
    #expect(again.status == 0 && replicaSummary(again)["bytes_copied"] as? Int == 0, "\(again.out)")
  }

  @Test func snapshotsArriveOnTheReplicaOldestFirst() throws {
    let ws = try Workspace("replica-order")
    let server = try SSHServer(ws)
    try FileManager.default.createDirectory(atPath: ws.sub("src"), withIntermediateDirectories: true)
    #expect(try ws.tidemark(["init", "-r", "src-repo"], password: "pw").status == 0)
    // Snapshots whose names (random IDs) and times are in unrelated orders: a catch-up after an outage.
    for (i, year) in [2021, 2019, 2024, 2020, 2023, 2022, 2018, 2025].enumerated() {
      try Data("v\(i)".utf8).write(to: URL(fileURLWithPath: ws.sub("src/f")))
      let b = try ws.tidemark(
        ["-r", "src-repo", "backup", "-q", "--time", "\(year)-06-01 12:00:00", "src"], password: "pw")
      #expect(b.status == 0, "\(b.stderr)")
    }
    // Over SFTP each save takes a few round trips, so the files' modification times tell the order apart.
    let r = try ws.tidemark(
      ["-r", "src-repo", "replicate", "--to", "sftp://root@127.0.0.1:\(server.port)/" + ws.sub("dst")] + server.options,
      password: "pw")
    #expect(r.status == 0, "\(r.stderr)")
    // Each snapshot file was written after the one before it in time had been stored: modification times
    // (nanoseconds) rise with the snapshots' times.
    let out = try ws.restic(["-r", "dst", "snapshots", "--json"], password: "pw").out
    let list = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]] ?? []
    let byTime = list.sorted { ($0["time"] as? String ?? "") < ($1["time"] as? String ?? "") }
      .compactMap { $0["id"] as? String }
    #expect(byTime.count == 8)
    let mtimes = try byTime.map { id -> Double in
      Double(
        try Tools.sh("stat -c %.9Y dst/snapshots/\(id)", cwd: ws.path).out.trimmingCharacters(
          in: .whitespacesAndNewlines)) ?? -1
    }
    #expect(mtimes.allSatisfy { $0 > 0 } && mtimes == mtimes.sorted(), "\(mtimes)")
  }

  @Test func replicaHasItsOwnKeyAndRefusesUnrelatedRepositories() throws {
    let ws = try Workspace("replica-keys")
    try FileManager.default.createDirectory(atPath: ws.sub("src"), withIntermediateDirectories: true)
    try writeRandom(ws.sub("src/a"), bytes: 300_000)
    #expect(try ws.tidemark(["init", "-r", "dc"]).status == 0)
    #expect(try ws.tidemark(["-r", "dc", "backup", "-q", "src"]).status == 0)
    try "dr-secret\n".write(toFile: ws.sub("dr-pw"), atomically: true, encoding: .utf8)

    let r = try ws.tidemark(["-r", "dc", "replicate", "--to", "dr", "--to-password-file", ws.sub("dr-pw")])
    #expect(r.status == 0, "\(r.stderr)")
    #expect(r.out.contains("created replica"), "\(r.out)")
    // Its own key file (one, not a copy of the source's), opened by its own password only.
    let drKeys = try FileManager.default.contentsOfDirectory(atPath: ws.sub("dr/keys"))
    let dcKeys = try FileManager.default.contentsOfDirectory(atPath: ws.sub("dc/keys"))
    #expect(drKeys.count == 1 && !dcKeys.contains(drKeys[0]))
    #expect(try ws.tidemark(["-r", "dr", "snapshots"], password: "dr-secret").status == 0)
    #expect(try ws.tidemark(["-r", "dr", "snapshots"]).status == 12)
    #expect(try ws.restic(["-r", "dr", "check"], password: "dr-secret").status == 0)
    // The target password defaults to the source's, which opens no key of this replica.
    let wrong = try ws.tidemark(["-r", "dc", "replicate", "--to", "dr"])
    #expect(wrong.status == 12 && wrong.stderr.contains("--to-password-file"), "\(wrong.stderr)")

    // The source's only key is replaced (its old key file removed): the replica does not care.
    try "dc-new\n".write(toFile: ws.sub("dc-new-pw"), atomically: true, encoding: .utf8)
    let passwd = try ws.tidemark(["-r", "dc", "key", "passwd", "--new-password-file", ws.sub("dc-new-pw")])
    #expect(passwd.status == 0, "\(passwd.stderr)")
    #expect(try FileManager.default.contentsOfDirectory(atPath: ws.sub("dc/keys")).allSatisfy { !dcKeys.contains($0) })
    try writeRandom(ws.sub("src/b"), bytes: 200_000)
    #expect(try ws.tidemark(["-r", "dc", "backup", "-q", "src"], password: "dc-new").status == 0)
    let again = try ws.tidemark(
      ["-r", "dc", "replicate", "--to", "dr", "--to-password-file", ws.sub("dr-pw"), "--json"], password: "dc-new")
    #expect(again.status == 0, "\(again.stderr)")
    #expect(replicaSummary(again)["snapshots_copied"] as? Int == 1, "\(again.out)")
    #expect(try ws.restic(["-r", "dr", "check", "--read-data"], password: "dr-secret").status == 0)
    #expect(
      try resticSnapshotIDs(ws, "dr", password: "dr-secret") == (try resticSnapshotIDs(ws, "dc", password: "dc-new")))
    #expect(try FileManager.default.contentsOfDirectory(atPath: ws.sub("dr/keys")) == drKeys)

    // An unrelated repository (even one with the same password) is refused and left alone.
    #expect(try ws.tidemark(["init", "-r", "other"], password: "dc-new").status == 0)
    let otherFiles = try Tools.sh("find other -type f | sort", cwd: ws.path).out
    let refused = try ws.tidemark(["-r", "dc", "replicate", "--to", "other"], password: "dc-new")
    #expect(refused.status == 1 && refused.stderr.contains("not a replica"), "\(refused.stderr)")
    #expect(try Tools.sh("find other -type f | sort", cwd: ws.path).out == otherFiles)
    // So is a directory that holds repository files but no config.
    try FileManager.default.createDirectory(atPath: ws.sub("junk/data/00"), withIntermediateDirectories: true)
    try writeRandom(ws.sub("junk/data/00/00" + String(repeating: "ab", count: 31)), bytes: 100)
    let junk = try ws.tidemark(["-r", "dc", "replicate", "--to", "junk"], password: "dc-new")
    #expect(junk.status == 1 && junk.stderr.contains("not empty"), "\(junk.stderr)")
  }

  @Test func syncKilledAnywhereLeavesACleanReplicaAndTheRerunCopiesOnlyWhatIsMissing() throws {
    let ws = try Workspace("replica-kill")
    #expect(try ws.tidemark(["init", "-r", "dc"]).status == 0)
    try FileManager.default.createDirectory(atPath: ws.sub("src"), withIntermediateDirectories: true)
    for i in 0..<6 {
      try writeRandom(ws.sub("src/f\(i)"), bytes: 6_000_000)
      #expect(try ws.tidemark(["-r", "dc", "backup", "-q", "src"]).status == 0)
    }
    let source = try storedFiles(ws, "dc")
    let total = source.values.reduce(0, +)
    #expect(total > 30_000_000)
    // --limit-upload stretches the copy (36 MB at 30 MiB/s, after ~0.3 s of start-up and locking) so that
    // the kills land before, during and after it.
    var partial = 0
    for (i, delayMs) in [150, 400, 700, 1000, 1400].enumerated() {
      _ = try Tools.sh("rm -rf dr", cwd: ws.path)
      let script = """
        TIDEMARK_PASSWORD=test-pw "\(Tools.tidemark)" -q -r dc replicate --to dr --limit-upload 30720 & pid=$!
        sleep \(Double(delayMs) / 1000); kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null; true
        """
      _ = try Tools.sh(script, cwd: ws.path)
      // The killed process's locks (restic would wait 30 minutes for them).
      _ = try Tools.sh("rm -f dc/locks/* dr/locks/*", cwd: ws.path)
      let present = try storedFiles(ws, "dr")
      #expect(present.allSatisfy { source[$0.key] == $0.value }, "kill #\(i): a file the source does not have")
      if FileManager.default.fileExists(atPath: ws.sub("dr/config")) {
        let check = try ws.restic(["-r", "dr", "check", "--read-data"])
        #expect(check.status == 0, "kill #\(i) after \(delayMs) ms: \(check.out) \(check.stderr)")
      }
      let had = present.values.reduce(0, +)
      if had > 0 && had < total { partial += 1 }
      let rerun = try ws.tidemark(["-r", "dc", "replicate", "--to", "dr", "--json"])
      #expect(rerun.status == 0, "\(rerun.stderr)")
      let copied = (replicaSummary(rerun)["bytes_copied"] as? Int).map(Int64.init) ?? -1
      #expect(copied == total - had, "kill #\(i): copied \(copied), missing \(total - had)")
      if had > 0 { #expect(copied < total) }
      #expect(try storedFiles(ws, "dr") == source)
      let check = try ws.restic(["-r", "dr", "check", "--read-data"])
      #expect(check.status == 0 && !check.out.contains("additional files"), "\(check.out) \(check.stderr)")
      #expect(try resticSnapshotIDs(ws, "dr") == (try resticSnapshotIDs(ws, "dc")))
    }
    #expect(partial >= 1, "no kill landed in the middle of a copy")
  }

  @Test func aDamagedSourcePackIsNamedAndNothingReferencingItIsPublished() throws {
    let ws = try Workspace("replica-damage")
    try FileManager.default.createDirectory(atPath: ws.sub("src"), withIntermediateDirectories: true)
    try writeRandom(ws.sub("src/a"), bytes: 400_000)
    #expect(try ws.tidemark(["init", "-r", "dc"]).status == 0)
    #expect(try ws.tidemark(["-r", "dc", "backup", "-q", "src"]).status == 0)
    #expect(try ws.tidemark(["-r", "dc", "replicate", "--to", "dr"]).status == 0)
    let first = try storedFiles(ws, "dc")
    try writeRandom(ws.sub("src/b"), bytes: 2_000_000)
    #expect(try ws.tidemark(["-r", "dc", "backup", "-q", "src"]).status == 0)

    // Flip a byte of the new data pack (the largest new file under data/).
    let newPacks = try storedFiles(ws, "dc").filter { $0.key.hasPrefix("data/") && first[$0.key] == nil }
    let (packPath, _) = try #require(newPacks.max { $0.value < $1.value })
    let packID = String(packPath.split(separator: "/").last!)
    try flipByte(ws.sub("dc/" + packPath), at: 1000)

    let r = try ws.tidemark(["-r", "dc", "replicate", "--to", "dr"])
    #expect(r.status == 1, "\(r.out) \(r.stderr)")
    #expect(r.stderr.contains("pack \(packID)") && r.stderr.contains("damaged"), "\(r.stderr)")
    // Not copied; no index file naming it and no new snapshot on the replica; the replica checks clean.
    let dr = try storedFiles(ws, "dr")
    #expect(dr[packPath] == nil)
    for name in dr.keys where name.hasPrefix("index/") {
      let idx = try ws.tidemark(["-r", "dr", "cat", "index", String(name.split(separator: "/").last!)])
      #expect(idx.status == 0 && !idx.out.contains(packID), "\(name) names the damaged pack")
    }
    #expect(dr.keys.filter { $0.hasPrefix("snapshots/") }.count == 1)
    let check = try ws.restic(["-r", "dr", "check", "--read-data"])
    #expect(check.status == 0, "\(check.out) \(check.stderr)")
    let j = try ws.tidemark(["-r", "dc", "replicate", "--to", "dr", "--json"])
    #expect(j.status == 1 && replicaSummary(j)["ok"] as? Bool == false, "\(j.out)")
    #expect(replicaSummary(j)["packs_skipped"] as? Int == 1, "\(j.out)")
  }

  /// A new repository's key costs what restic's does; a replica's new key costs what the source's key costs
  /// (both wrap the same master key), and restic opens both.
  @Test func newKeysCostWhatResticsDoAndReplicaKeysWhatTheSourceKeyCosts() throws {
    let ws = try Workspace("replica-kdf")
    func params(_ repo: String) throws -> [UInt64] {
      let keys = try FileManager.default.contentsOfDirectory(atPath: ws.sub(repo + "/keys"))
      #expect(keys.count == 1)
      let k = try KeyFile(json: Array(try Data(contentsOf: URL(fileURLWithPath: ws.sub("\(repo)/keys/\(keys[0])")))))
      return [k.n, k.r, k.p]
    }
    // Through a shell, so the tests' cheap-key rewrap after `init` does not apply.
    let i = try Tools.run(
      "/bin/sh", ["-c", "exec \"$0\" init -r dc -q", Tools.tidemark], env: ["TIDEMARK_PASSWORD": "test-pw"],
      cwd: ws.path)
    #expect(i.status == 0, "\(i.stderr)")
    #expect(try params("dc") == [32768, 8, 5])
    try CheapKeys.rewrap(ws.sub("dc"), password: Array("test-pw".utf8))
    #expect(try params("dc") == [1024, 8, 1])
    let r = try ws.tidemark(["-r", "dc", "replicate", "--to", "dr"])
    #expect(r.status == 0, "\(r.stderr)")
    #expect(try params("dr") == [1024, 8, 1])
    #expect(try ws.restic(["-r", "dr", "snapshots", "-q"]).status == 0)
  }
}
