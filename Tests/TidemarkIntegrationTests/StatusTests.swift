// Status (issue 7): `status -r` on the DR side (per host, no lock, no state file).
import Foundation
import Testing
import TidemarkBackends
import TidemarkCore
import TidemarkSystem

@Suite(.serialized) struct StatusTests {
  @Test func drStatusReportsEveryHostsLagFromTheRepositoryWithoutALock() async throws {
    let ws = try Workspace("status-dr")
    let dr = ws.sub("dr")
    #expect(try ws.tidemark(["init", "-r", dr]).status == 0)
    try FileManager.default.createDirectory(atPath: ws.sub("src"), withIntermediateDirectories: true)
    try "data\n".write(toFile: ws.sub("src/a"), atomically: true, encoding: .utf8)
    // Three hosts: 20 minutes behind (WARN at a 15m RPO), an hour behind (CRIT), current (OK); dc1 twice.
    let f = DateFormatter()
    f.dateFormat = "yyyy-MM-dd HH:mm:ss"
    f.timeZone = TimeZone.current
    f.locale = Locale(identifier: "en_US_POSIX")
    let now = Date()
    for (host, ago) in [("dc1", 7200.0), ("dc1", 1200), ("dc2", 3600), ("dc3", 0)] {
      let b = try ws.restic([
        "-r", dr, "backup", "src", "--host", host, "--time", f.string(from: now.addingTimeInterval(-ago)),
      ])
      #expect(b.status == 0, "\(b.stderr)")
    }
    // Another process holds an exclusive lock: a command that locks is refused, status is not.
    let repo = try await Repository.open(backend: LocalBackend(path: BytePath(dr)), password: Array("test-pw".utf8))
    let lock = try await RepositoryLock.acquire(repo, exclusive: true)
    let locked = try ws.tidemark(["stats", "-r", dr])
    #expect(locked.status == 11, "\(locked.stderr)")
    let env = ["TIDEMARK_STATE_DIR": ws.sub("no-state")]

    func hosts(_ r: RunResult) throws -> [String: [String: Any]] {
      let o = try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any] ?? [:]
      var out: [String: [String: Any]] = [:]
      for h in o["hosts"] as? [[String: Any]] ?? [] { out[h["host"] as? String ?? ""] = h }
      return out
    }
    let all = try ws.tidemark(["status", "-r", dr, "--rpo", "15m", "--json"], env: env)
    #expect(all.status == 2, "\(all.out) \(all.stderr)")
    #expect(all.out.contains("\"rpo_seconds\":900") && all.out.hasSuffix("\"status\":\"CRIT\"}\n"), "\(all.out)")
    let h = try hosts(all)
    #expect(Set(h.keys) == ["dc1", "dc2", "dc3"])
    func lag(_ host: String) -> Int { h[host]?["lag_seconds"] as? Int ?? -1 }
    #expect(abs(lag("dc1") - 1200) < 60 && h["dc1"]?["status"] as? String == "WARN", "\(h["dc1"] ?? [:])")
    #expect(abs(lag("dc2") - 3600) < 60 && h["dc2"]?["status"] as? String == "CRIT", "\(h["dc2"] ?? [:])")
    #expect(lag("dc3") >= 0 && lag("dc3") < 60 && h["dc3"]?["status"] as? String == "OK", "\(h["dc3"] ?? [:])")
    #expect(h["dc1"]?["snapshots"] as? Int == 2)
    // The newest snapshot of dc1 is the one restic lists last for it.
    let listed = try ws.restic(["-r", dr, "snapshots", "--host", "dc1", "--latest", "1", "--json", "--no-lock"]).out
    let newest =
      (try JSONSerialization.jsonObject(with: Data(listed.utf8)) as? [[String: Any]])?.first?["id"] as? String
    #expect(newest != nil && h["dc1"]?["newest_snapshot"] as? String == newest)

    // One host: its own exit code.
    #expect(try ws.tidemark(["status", "-r", dr, "--host", "dc1", "--rpo", "15m"], env: env).status == 1)
    #expect(try ws.tidemark(["status", "-r", dr, "--host", "dc3", "--rpo", "15m"], env: env).status == 0)
    #expect(try ws.tidemark(["status", "-r", dr, "--host", "dc1", "--rpo", "30m"], env: env).status == 0)
    let missing = try ws.tidemark(["status", "-r", dr, "--host", "dc9", "--json"], env: env)
    #expect(missing.status == 2, "\(missing.out) \(missing.stderr)")
    #expect(try hosts(missing)["dc9"]?["snapshots"] as? Int == 0 && !missing.out.contains("lag_seconds"))
    // The table.
    let table = try ws.tidemark(["status", "-r", dr, "--host", "dc1", "--host", "dc3", "--rpo", "15m"], env: env)
    #expect(table.status == 1)
    let lines = table.out.split(separator: "\n").map(String.init)
    #expect(lines.first?.hasPrefix("Host") == true && lines.contains { $0.hasPrefix("dc1 ") && $0.contains("WARN") })
    #expect(lines.contains { $0.hasPrefix("dc3 ") && $0.contains("OK") }, "\(table.out)")
    #expect(lines.last?.hasPrefix("WARN: 2 hosts in ") == true, "\(table.out)")
    // The repository from the environment (RESTIC_REPOSITORY) selects the same mode.
    let fromEnv = try ws.tidemark(
      ["status", "--host", "dc3", "--json"], env: env.merging(["RESTIC_REPOSITORY": dr]) { $1 })
    #expect(fromEnv.status == 0 && fromEnv.out.contains("\"hosts\":[{\"host\":\"dc3\""), "\(fromEnv.out)")
    // A wrong password is the usual exit code 12.
    #expect(try ws.tidemark(["status", "-r", dr], password: "nope", env: env).status == 12)

    // Only our lock is there: status took none.
    #expect(try FileManager.default.contentsOfDirectory(atPath: dr + "/locks").count == 1)
    await lock.release()
    #expect(try FileManager.default.contentsOfDirectory(atPath: dr + "/locks").isEmpty)

    // Without a repository: the state-file mode, as before; --host there is a usage error.
    let state = try ws.tidemark(["status", "--json"], password: "", env: env)
    #expect(state.status == 2 && state.out.contains("\"targets\":[]"), "\(state.out) \(state.stderr)")
    let usage = try ws.tidemark(["status", "--host", "dc1"], password: "", env: env)
    #expect(usage.status == 1 && usage.stderr.contains("--host needs a repository"), "\(usage.stderr)")
  }
}
