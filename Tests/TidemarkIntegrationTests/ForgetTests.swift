// `tidemark forget` against the real restic 0.14 on the same repository: for each policy, the same groups keep and
// remove the same snapshots for the same reasons (`forget --dry-run --json`, compared field by field); a real run
// leaves exactly the kept snapshots and a repository `restic check` accepts.
import Foundation
import Testing
import TidemarkBackends
import TidemarkCore
import TidemarkSystem

@Suite(.serialized) struct ForgetTests {
  /// A repository of 130 restic snapshots: 80 spread over 2023–2024 and 50 in its last four days (several an
  /// hour), from two hosts, of two path sets, with a mix of tags; all times distinct.
  static func makeRepository(_ ws: Workspace) throws {
    let setup = try Tools.sh("mkdir -p data etc && echo one > data/f && echo two > etc/g", cwd: ws.path)
    #expect(setup.status == 0)
    // tidemark's init takes the cheap test KDF, so each restic run below opens the repository quickly.
    #expect(try ws.tidemark(["-r", "repo", "init"]).status == 0)
    var rng: UInt64 = 0x5eed
    func next(_ n: UInt64) -> Int64 {
      rng = rng &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
      return Int64((rng >> 33) % n)
    }
    let start: Int64 = 1_672_531_200  // 2023-01-01T00:00:00Z
    var times: [Int64] = (0..<80).map { start + Int64($0) * 8 * 86400 + next(6 * 86400) }
    let dense: Int64 = 1_735_257_600  // 2024-12-27T00:00:00Z
    times += (0..<50).map { dense + Int64($0) * 6900 + next(1800) }
    #expect(Set(times).count == times.count)
    var commands: [String] = []
    for (i, t) in times.enumerated() {
      let host = i % 3 == 0 ? "beta" : "alpha"
      let paths = i % 4 == 1 ? "data etc" : "data"
      let tags =
        i % 11 == 0 ? [] : i % 7 == 0 ? ["weekly,important"] : i % 5 == 0 ? ["manual"] : i % 2 == 0 ? ["auto"] : []
      let time = goTime(t)
      let tagArgs = tags.map { " --tag '\($0)'" }.joined()
      commands.append("restic -r repo backup -q --time '\(time)' --host \(host)\(tagArgs) \(paths)")
    }
    // The first snapshot of each path set stores the data; the rest only add snapshot files, so they run in six
    // workers side by side. Each worker sees the repository through symlinks but has its own locks directory:
    // restic 0.14 retries, with back-off of up to 15 s, loading a lock that another process has just removed.
    var script = """
      export RESTIC_PASSWORD=test-pw
      \(commands[0])
      \(commands[1])
      pids=""
      """
    let workers = 6
    for w in 0..<workers {
      let mine = commands.dropFirst(2).enumerated().filter { $0.offset % workers == w }
        .map { $0.element.replacingOccurrences(of: "-r repo ", with: "-r view\(w) --no-cache ") }
      script += """

        mkdir -p view\(w)/locks
        for f in config keys data index snapshots; do ln -s ../repo/$f view\(w)/$f; done
        cat > cmds\(w) <<'EOF'
        \(mine.joined(separator: "\n"))
        EOF
        sh -e cmds\(w) & pids="$pids $!"
        """
    }
    script += "\nfor p in $pids; do wait $p; done\n"
    let r = try Tools.sh(script, cwd: ws.path)
    #expect(r.status == 0, "\(r.stderr)")
  }

  /// `forget --json` as comparable text: each group (by host, paths, tags) re-encoded with sorted keys.
  static func groups(_ r: RunResult) throws -> [String: String] {
    if r.stdout.isEmpty { return [:] }
    let list = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout)) as? [[String: Any]])
    var out: [String: String] = [:]
    for g in list {
      func enc(_ v: Any) throws -> String {
        String(decoding: try JSONSerialization.data(withJSONObject: v, options: [.sortedKeys]), as: UTF8.self)
      }
      let key = try enc(["host": g["host"] ?? NSNull(), "paths": g["paths"] ?? NSNull(), "tags": g["tags"] ?? NSNull()])
      out[key] = try enc(g)
    }
    return out
  }

  static func ids(_ r: RunResult, _ field: String) throws -> [String] {
    if r.stdout.isEmpty { return [] }
    let list = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout)) as? [[String: Any]])
    return list.flatMap { ($0[field] as? [[String: Any]] ?? []).compactMap { $0["short_id"] as? String } }.sorted()
  }

  static let policies: [[String]] = [
    ["--keep-last", "5"],
    ["--keep-hourly", "48", "--keep-daily", "7", "--keep-weekly", "4", "--keep-monthly", "12", "--keep-yearly", "3"],
    ["--keep-within", "1m15d"],
    ["--keep-within-hourly", "2d", "--keep-within-daily", "2m", "--keep-within-weekly", "6m"],
    ["--keep-within-monthly", "1y2m", "--keep-within-yearly", "5y", "--keep-last", "1"],
    ["--keep-tag", "manual", "--keep-tag", "weekly,important", "--keep-last", "2"],
    ["--group-by", "host", "--keep-daily", "5", "--keep-monthly", "3"],
    ["--group-by", "tags", "--keep-weekly", "3"],
    ["--group-by", "host,tags,paths", "--keep-last", "2", "--keep-within", "3d"],
    ["--group-by", "", "--keep-last", "10", "--keep-hourly", "5"],
    ["--host", "alpha", "--keep-monthly", "6", "--keep-daily", "2"],
    ["--tag", "auto", "--tag", "manual", "--keep-weekly", "2"],
    ["--path", "\(FileManager.default.currentDirectoryPath)/never", "--keep-last", "1"],
  ]

  @Test func policiesMatchResticAndARealRunLeavesTheKeptSnapshots() throws {
    let ws = try Workspace("forget")
    try Self.makeRepository(ws)
    let listed = try ws.restic(["-r", "repo", "snapshots", "--json"])
    let all = try #require(try JSONSerialization.jsonObject(with: Data(listed.stdout)) as? [Any])
    #expect(all.count == 130)

    for policy in Self.policies {
      let args = ["-r", "repo", "forget", "--dry-run", "--json"] + policy
      let r = try ws.restic(args)
      let t = try ws.tidemark(args)
      #expect(r.status == 0 && t.status == 0, "\(policy): \(r.stderr) \(t.stderr)")
      let (rg, tg) = (try Self.groups(r), try Self.groups(t))
      #expect(rg.keys.sorted() == tg.keys.sorted(), "\(policy): groups differ")
      for (key, value) in rg where tg[key] != value {
        Issue.record("\(policy), group \(key):\nrestic:   \(value)\ntidemark: \(tg[key] ?? "missing")")
      }
      #expect(try Self.ids(r, "keep") == Self.ids(t, "keep"), "\(policy)")
      #expect(try Self.ids(r, "remove") == Self.ids(t, "remove"), "\(policy)")
      if !policy.contains("--path") {
        // Every policy here both keeps and removes something, so the comparison is not vacuous.
        #expect(try !Self.ids(r, "keep").isEmpty && !Self.ids(r, "remove").isEmpty, "\(policy)")
      }
    }

    // The text output too, for one group (restic prints groups in random order).
    let text = ["-r", "repo", "forget", "--dry-run", "-g", "", "--keep-daily", "3", "--keep-tag", "manual"]
    let rt = try ws.restic(text)
    #expect(rt.out.contains("Applying Policy: keep 3 daily snapshots and all snapshots with tags [[manual]]"))
    #expect(try ws.tidemark(text).out == rt.out)

    // A real run removes what restic's dry run would, and nothing else.
    let policy = ["--keep-daily", "7", "--keep-weekly", "4", "--keep-monthly", "6", "--keep-tag", "manual"]
    let plan = try ws.restic(["-r", "repo", "forget", "--dry-run", "--json"] + policy)
    let keep = Set(try Self.ids(plan, "keep"))
    let remove = Set(try Self.ids(plan, "remove"))
    #expect(!keep.isEmpty && !remove.isEmpty && keep.count + remove.count == 130)
    let run = try ws.tidemark(["-r", "repo", "forget"] + policy)
    #expect(run.status == 0, "\(run.stderr)")
    #expect(run.out.contains("\(remove.count) / \(remove.count) files deleted"))
    let after = try ws.restic(["-r", "repo", "snapshots", "--json"])
    let left = try #require(try JSONSerialization.jsonObject(with: Data(after.stdout)) as? [[String: Any]])
    #expect(Set(left.compactMap { $0["short_id"] as? String }) == keep)
    let check = try ws.restic(["-r", "repo", "check"])
    #expect(check.status == 0, "restic check: \(check.out) \(check.stderr)")
    // Forgetting by ID: exactly that snapshot goes.
    let victim = try #require(keep.sorted().first)
    #expect(try ws.tidemark(["-r", "repo", "forget", victim]).status == 0)
    let after2 = try ws.restic(["-r", "repo", "snapshots", "--json"])
    let left2 = try #require(try JSONSerialization.jsonObject(with: Data(after2.stdout)) as? [[String: Any]])
    #expect(Set(left2.compactMap { $0["short_id"] as? String }) == keep.subtracting([victim]))
  }

  /// In a zone with daylight saving time, stepping back months from a summer snapshot lands on winter's offset,
  /// as Go's AddDate in time.Local does: 2024-07-15 12:00 +02:00 minus 6 months is 2024-01-15 12:00 +01:00.
  @Test func keepWithinFollowsDaylightSavingTimeAsRestic() throws {
    let ws = try Workspace("forget-dst")
    #expect(try Tools.sh("mkdir data && echo x > data/f", cwd: ws.path).status == 0)
    #expect(try ws.tidemark(["-r", "repo", "init"]).status == 0)
    let berlin = ["TZ": "Europe/Berlin"]
    for time in ["2024-01-15 11:30:00", "2024-01-15 12:30:00", "2024-03-31 01:30:00", "2024-07-15 12:00:00"] {
      let b = try Tools.run(
        Tools.restic, ["-r", "repo", "backup", "-q", "--time", time, "data"],
        env: ["RESTIC_PASSWORD": "test-pw", "TZ": "Europe/Berlin"], cwd: ws.path)
      #expect(b.status == 0, "\(b.stderr)")
    }
    for policy in [["--keep-within", "6m"], ["--keep-within-daily", "3m16d"], ["--keep-within", "3m15d2h"]] {
      let args = ["-r", "repo", "forget", "--dry-run", "--json"] + policy
      let r = try Tools.run(
        Tools.restic, args, env: ["RESTIC_PASSWORD": "test-pw", "TZ": "Europe/Berlin"], cwd: ws.path)
      let t = try ws.tidemark(args, env: berlin)
      #expect(r.status == 0 && t.status == 0)
      #expect(try Self.groups(r) == Self.groups(t), "\(policy)\nrestic:   \(r.out)\ntidemark: \(t.out)")
    }
    // The 11:30 snapshot falls outside 6 months of July's 12:00 only with Go's zone-aware arithmetic.
    let six = try ws.tidemark(["-r", "repo", "forget", "--dry-run", "--json", "--keep-within", "6m"], env: berlin)
    let removed = try #require(try JSONSerialization.jsonObject(with: Data(six.stdout)) as? [[String: Any]])
      .flatMap { ($0["remove"] as? [[String: Any]] ?? []).compactMap { $0["time"] as? String } }
    #expect(removed == ["2024-01-15T11:30:00+01:00"])
  }

  @Test func refusalsNoPolicyAndLocks() async throws {
    let ws = try Workspace("forget-cli")
    #expect(try Tools.sh("mkdir data && echo x > data/f", cwd: ws.path).status == 0)
    #expect(try ws.tidemark(["-r", "repo", "init"]).status == 0)
    #expect(try ws.tidemark(["-r", "repo", "backup", "data"]).status == 0)
    // Nothing to remove: --prune still runs prune, which finds nothing to do.
    let prune = try ws.tidemark(["-r", "repo", "forget", "--prune", "--keep-last", "1"])
    #expect(prune.status == 0 && prune.out.contains("total prune:"), "\(prune.out) \(prune.stderr)")
    let negative = try ws.tidemark(["-r", "repo", "forget", "--keep-last", "-1"])
    #expect(negative.status == 1 && negative.stderr.contains("--keep-last -1: counts must be 0 or more"))
    let noLock = try ws.tidemark(["-r", "repo", "--no-lock", "forget", "--keep-last", "1"])
    #expect(noLock.status == 1 && noLock.stderr.contains("only applicable in combination with --dry-run"))
    let none = try ws.tidemark(["-r", "repo", "forget"])
    #expect(none.status == 0 && none.out == "no policy was specified, no snapshots will be removed\n")

    let repo = try await Repository.open(
      backend: LocalBackend(path: BytePath(ws.sub("repo"))), password: Array("test-pw".utf8))
    let lock = try await RepositoryLock.acquire(repo, exclusive: false)
    #expect(try ws.tidemark(["-r", "repo", "forget", "--keep-last", "1", "--dry-run"]).status == 0)
    #expect(try ws.tidemark(["-r", "repo", "forget", "--keep-last", "1"]).status == 11)
    await lock.release()
    let held = try await RepositoryLock.acquire(repo, exclusive: true)
    #expect(try ws.tidemark(["-r", "repo", "forget", "--keep-last", "1", "--dry-run"]).status == 11)
    #expect(try ws.tidemark(["-r", "repo", "forget", "--keep-last", "1", "--dry-run", "--no-lock"]).status == 0)
    await held.release()
    #expect(try await repo.listSnapshots().count == 1)
    #expect(try await repo.backend.list(.lock).isEmpty)
  }
}

/// "2006-01-02 15:04:05" in UTC, for `restic backup --time`.
private func goTime(_ seconds: Int64) -> String {
  let c = Timestamp(seconds: seconds, nanoseconds: 0, offset: 0).civil
  return String(format: "%04d-%02d-%02d %02d:%02d:%02d", c.year, c.month, c.day, c.hour, c.minute, c.second)
}
