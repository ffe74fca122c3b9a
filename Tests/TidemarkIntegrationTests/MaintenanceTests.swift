// prune and check against restic as the oracle: prune's result checks clean and restores bit-exact,
// a prune killed at any point leaves a repository restic accepts, and check names damaged packs.
import Foundation
import Testing
import TidemarkBackends
import TidemarkCore
import TidemarkSystem

/// A repository with history: `rounds` backups by restic and tidemark alternately of a tree in which a
/// quarter of the files change each round (so old snapshots hold data nobody else needs). Keeps a copy of
/// the source as of each snapshot under `states/<short snapshot id>`.
func makeChurnedRepository(_ ws: Workspace, rounds: Int, files: Int = 24) throws -> [String: String] {
  var states: [String: String] = [:]
  #expect(try ws.tidemark(["init", "-r", "repo"]).status == 0)
  try FileManager.default.createDirectory(atPath: ws.sub("src/sub"), withIntermediateDirectories: true)
  var rng = SystemRandomNumberGenerator()
  for r in 0..<rounds {
    for i in 0..<files where r == 0 || i % 4 == r % 4 {
      let n = Int.random(in: 1000...600_000, using: &rng)
      let bytes = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
      try Data(bytes).write(to: URL(fileURLWithPath: ws.sub("src/\(i % 3 == 0 ? "sub/" : "")f\(i)")))
    }
    try Data("round \(r)\n".utf8).write(to: URL(fileURLWithPath: ws.sub("src/round.txt")))
    let b =
      r % 2 == 0
      ? try ws.restic(["-r", "repo", "backup", "--json", "src"])
      : try ws.tidemark(["-r", "repo", "backup", "--json", "src"])
    #expect(b.status == 0, "\(b.stderr)")
    guard let line = b.out.split(separator: "\n").last(where: { $0.contains("\"summary\"") }),
      let range = line.range(of: "\"snapshot_id\":\"")
    else {
      Issue.record("no snapshot id in \(b.out)")
      continue
    }
    let id = String(line[range.upperBound...].prefix { $0 != "\"" })
    _ = try Tools.sh("mkdir -p states && cp -a src states/\(id)", cwd: ws.path)
    states[id] = ws.sub("states/\(id)")
  }
  return states
}

@Suite(.serialized) struct MaintenanceTests {
  @Test func forgetPruneThenResticChecksAndEveryKeptSnapshotRestoresExactly() throws {
    let ws = try Workspace("prune")
    let states = try makeChurnedRepository(ws, rounds: 8)
    let before = try ws.size("repo")
    let f = try ws.tidemark(["-r", "repo", "forget", "--keep-last", "3", "--prune", "--max-unused", "0%"])
    #expect(f.status == 0, "\(f.out) \(f.stderr)")
    let after = try ws.size("repo")
    let listing = try Tools.sh("find repo -type f -printf '%P %s\\n' | sort", cwd: ws.path).out
    #expect(after < before * 2 / 3, "prune freed too little: \(before) -> \(after) bytes; \(f.out)\n\(listing)")

    let check = try ws.restic(["-r", "repo", "check", "--read-data"])
    #expect(check.status == 0, "\(check.out) \(check.stderr)")
    #expect(!check.out.contains("additional files"), "\(check.out)")
    let own = try ws.tidemark(["-r", "repo", "check", "--read-data"])
    #expect(own.status == 0 && own.out.contains("no errors were found"), "\(own.out) \(own.stderr)")

    let left = try ws.restic(["-r", "repo", "snapshots", "--json"]).out
    let kept = states.keys.filter { left.contains("\"short_id\":\"\($0)\"") }
    #expect(kept.count == 3)
    for id in kept {
      let r = try ws.restic(["-r", "repo", "restore", id, "--target", "r-\(id.prefix(8))"])
      #expect(r.status == 0, "\(r.stderr)")
      let d = differences(try describeTree(states[id]!), try describeTree(ws.sub("r-\(id.prefix(8))/src")))
      #expect(d.isEmpty, "\(id.prefix(8)): \(d.prefix(5))")
    }
    // Nothing left to do: a second prune changes nothing.
    let again = try ws.tidemark(["-r", "repo", "prune", "--json"])
    #expect(again.status == 0 && again.out.contains("\"pruned_size\":0"), "\(again.out) \(again.stderr)")
  }

  @Test func pruneMatchesResticsPlan() throws {
    // The same repository, pruned by restic and by tidemark with the same limit, ends with the same blobs.
    let ws = try Workspace("prune-plan")
    _ = try makeChurnedRepository(ws, rounds: 6)
    #expect(try ws.restic(["-r", "repo", "forget", "--keep-last", "2"]).status == 0)
    _ = try Tools.sh("cp -a repo repo2", cwd: ws.path)
    for limit in ["5%"] {
      let t = try ws.tidemark(["-r", "repo", "prune", "--max-unused", limit, "--dry-run", "-v"])
      let r = try ws.restic(["-r", "repo2", "prune", "--max-unused", limit, "--dry-run", "-v"])
      #expect(t.status == 0 && r.status == 0, "\(t.stderr) \(r.stderr)")
      // restic's statistics lines (blob counts and sizes) are ours too.
      func stats(_ s: String) -> [String] {
        let labels = [
          "used:", "unused:", "total:", "to repack:", "this removes:", "to delete:", "total prune:", "remaining:",
        ]
        return s.split(separator: "\n").map(String.init).filter { line in labels.contains { line.hasPrefix($0) } }
      }
      #expect(stats(t.out) == stats(r.out), "tidemark:\n\(t.out)\nrestic:\n\(r.out)")
    }
  }

  @Test func pruneKilledAnywhereLeavesARepositoryResticAccepts() throws {
    let ws = try Workspace("prune-kill")
    _ = try makeChurnedRepository(ws, rounds: 6)
    #expect(try ws.restic(["-r", "repo", "forget", "--keep-last", "2"]).status == 0)
    _ = try Tools.sh("cp -a repo pristine", cwd: ws.path)
    // Kill after increasing, jittered delays: before, during and after the repack, index rewrite and deletions.
    for (i, base) in [40, 120, 200, 280, 360, 450, 600, 800].enumerated() {
      let delayMs = base + Int.random(in: 0..<60)
      _ = try Tools.sh("rm -rf repo && cp -a pristine repo", cwd: ws.path)
      let script = """
        TIDEMARK_PASSWORD=test-pw "\(Tools.tidemark)" -q -r repo prune --max-unused 0% & pid=$!
        sleep \(Double(delayMs) / 1000); kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null; true
        """
      _ = try Tools.sh(script, cwd: ws.path)
      _ = try Tools.sh("rm -f repo/locks/*", cwd: ws.path)  // the killed prune's lock (restic would wait 30 min)
      let check = try ws.restic(["-r", "repo", "check", "--read-data"])
      #expect(check.status == 0, "kill #\(i) after \(delayMs) ms: \(check.out) \(check.stderr)")
      // The next prune finishes the job.
      let p = try ws.tidemark(["-r", "repo", "prune", "--max-unused", "0%"])
      #expect(p.status == 0, "\(p.stderr)")
      let after = try ws.restic(["-r", "repo", "check"])
      #expect(after.status == 0 && !after.out.contains("additional files"), "\(after.out)")
    }
  }

  /// The state a prune killed between writing the new index and deleting the old leaves: every pack named by two
  /// index files. Prune and check must treat a pack once, however many index files name it.
  @Test func packsNamedByTwoIndexFilesArePrunedOnce() async throws {
    let ws = try Workspace("prune-dup-index")
    _ = try makeChurnedRepository(ws, rounds: 4, files: 8)
    #expect(try ws.restic(["-r", "repo", "forget", "--keep-last", "1"]).status == 0)
    let repo = try await Repository.open(
      backend: LocalBackend(path: BytePath(ws.sub("repo"))), password: Array("test-pw".utf8))
    var merged = IndexFile()
    for f in try await repo.backend.list(.index) {
      merged.packs += try IndexFile(json: try await repo.loadUnpacked(Handle(.index, f.name))).packs
    }
    _ = try await repo.saveUnpacked(.index, json: merged.encode())
    let p = try ws.tidemark(["-r", "repo", "prune", "--max-unused", "0%"])
    #expect(p.status == 0, "\(p.out) \(p.stderr)")
    let check = try ws.restic(["-r", "repo", "check", "--read-data"])
    #expect(check.status == 0 && !check.out.contains("additional files"), "\(check.out) \(check.stderr)")
    #expect(try ws.tidemark(["-r", "repo", "check"]).status == 0)
  }

  @Test func checkNamesTheDamagedPackTheSnapshotsAndTheFiles() throws {
    let ws = try Workspace("check-damage")
    _ = try makeChurnedRepository(ws, rounds: 3, files: 8)
    let clean = try ws.tidemark(["-r", "repo", "check", "--read-data"])
    #expect(clean.status == 0, "\(clean.out) \(clean.stderr)")
    let ls = try ws.tidemark(["-r", "repo", "ls", "--json", "latest"]).out
    #expect(ls.contains("/src/f1"))
    // Flip one byte in the middle of the largest data pack.
    let packs = try Tools.sh("find repo/data -type f -printf '%s %p\\n' | sort -n | tail -1", cwd: ws.path).out
    let packPath = String(packs.split(separator: " ")[1]).trimmingCharacters(in: .whitespacesAndNewlines)
    let packID = String(packPath.split(separator: "/").last!)
    try flipByte(ws.sub(packPath), at: 1000)
    let bad = try ws.tidemark(["-r", "repo", "check", "--read-data"])
    #expect(bad.status == 1, "\(bad.out) \(bad.stderr)")
    #expect(bad.stderr.contains(packID), "\(bad.stderr)")
    #expect(bad.stderr.contains("snapshot "), "\(bad.stderr)")
    #expect(bad.stderr.contains("/src/"), "names no file: \(bad.stderr)")
    let j = try ws.tidemark(["-r", "repo", "check", "--read-data", "--json"])
    #expect(j.status == 1 && j.out.contains("\"ok\":false") && j.out.contains(packID), "\(j.out)")
    #expect(j.out.contains("\"paths\":[\"/src/"), "\(j.out)")
    // Without --read-data the structure is fine; restic agrees about the damage.
    #expect(try ws.tidemark(["-r", "repo", "check"]).status == 0)
    #expect(try ws.restic(["-r", "repo", "check", "--read-data"]).status != 0)
    // A subset that contains every pack finds it too; 1/1 is all packs.
    #expect(try ws.tidemark(["-r", "repo", "check", "--read-data-subset", "1/1"]).status == 1)
    #expect(try ws.tidemark(["-r", "repo", "check", "--read-data-subset", "100%"]).status == 1)
    let bogus = try ws.tidemark(["-r", "repo", "check", "--read-data-subset", "3/2"])
    #expect(bogus.status == 1 && bogus.stderr.contains("n/m"), "\(bogus.stderr)")
    // A missing pack is a structural error.
    _ = try Tools.sh("rm -f \(packPath)", cwd: ws.path)
    let missing = try ws.tidemark(["-r", "repo", "check"])
    #expect(missing.status == 1 && missing.stderr.contains("missing"), "\(missing.stderr)")
  }

  @Test func pruneRefusesWhileAnotherProcessHoldsALock() throws {
    let ws = try Workspace("prune-lock")
    _ = try makeChurnedRepository(ws, rounds: 2, files: 4)
    // A live shared lock (this test process's PID on this host, fresh): prune must refuse (11), not wait forever.
    let script = """
      mkdir -p mnt; TIDEMARK_PASSWORD=test-pw "\(Tools.tidemark)" -r repo mount mnt >/dev/null 2>&1 & pid=$!
      for i in $(seq 100); do mountpoint -q mnt && break; sleep 0.1; done
      rc=0; TIDEMARK_PASSWORD=test-pw "\(Tools.tidemark)" -r repo prune || rc=$?
      kill -TERM $pid; for i in $(seq 100); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
      kill -KILL $pid 2>/dev/null || true; wait $pid || true; echo "rc=$rc"
      """
    let r = try Tools.sh(script, cwd: ws.path)
    #expect(r.out.contains("rc=11"), "\(r.out) \(r.stderr)")
    #expect(r.stderr.contains("locked"), "\(r.stderr)")
    // check runs beside a shared lock holder.
    let both = """
      TIDEMARK_PASSWORD=test-pw "\(Tools.tidemark)" -r repo mount mnt >/dev/null 2>&1 & pid=$!
      for i in $(seq 100); do mountpoint -q mnt && break; sleep 0.1; done
      rc=0; TIDEMARK_PASSWORD=test-pw "\(Tools.tidemark)" -q -r repo check || rc=$?
      kill -TERM $pid; for i in $(seq 100); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
      kill -KILL $pid 2>/dev/null || true; wait $pid || true; echo "rc=$rc"
      """
    let c = try Tools.sh(both, cwd: ws.path)
    #expect(c.out.contains("rc=0"), "\(c.out) \(c.stderr)")
  }
}
