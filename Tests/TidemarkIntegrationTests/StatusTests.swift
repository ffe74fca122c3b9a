// Status and metrics: `status -r` on the DR side (per host, no lock, no state file), pending snapshots
// and bytes of a failing target, the Prometheus pushgateway and the alert webhook, against a real HTTP server.
import Foundation
import Testing
import TidemarkBackends
import TidemarkCore
import TidemarkSystem

/// A tiny HTTP server (python3's http.server) on 127.0.0.1 that answers 200 to everything and records each
/// request's method, path, Content-Type and body as one JSON line.
final class HTTPRecorder {
  private(set) var port = 0
  let log: String
  private var pid: pid_t = 0

  init(_ ws: Workspace) throws {
    log = ws.sub("http-\(UUID().uuidString.prefix(6)).jsonl")
    let script = ws.sub("recorder.py")
    try """
    import http.server, json, sys, threading
    port, log = int(sys.argv[1]), sys.argv[2]
    lock = threading.Lock()
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def record(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n).decode("utf-8", "replace")
            line = json.dumps({"method": self.command, "path": self.path, "body": body,
                               "content_type": self.headers.get("Content-Type")})
            with lock, open(log, "a") as f:
                f.write(line + "\\n")
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        do_GET = do_PUT = do_POST = record
        def log_message(self, *args):
            pass
    http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
    """.write(toFile: script, atomically: true, encoding: .utf8)
    var port = 0
    for _ in 0..<5 {
      let p = try unusedPort()
      pid = try spawn(["/usr/bin/python3", script, String(p), log])
      for _ in 0..<100 {
        if try Tools.run("/bin/bash", ["-c", "exec 3<>/dev/tcp/127.0.0.1/\(p)"]).status == 0 {
          port = p
          break
        }
        if waitpid(pid, nil, WNOHANG) == pid { break }  // the port was taken: try another
        usleep(50_000)
      }
      if port != 0 { break }
      stop()
    }
    guard port != 0 else { throw TidemarkError(.general, "the test HTTP server did not start") }
    self.port = port
  }

  var url: String { "http://127.0.0.1:\(port)" }

  /// Every request so far, oldest first.
  func requests() -> [[String: Any]] {
    let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
    return text.split(separator: "\n").compactMap {
      try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
    }
  }

  func stop() {
    guard pid > 0 else { return }
    kill(pid, SIGKILL)
    _ = waitpid(pid, nil, 0)
    pid = 0
  }

  deinit { stop() }
}

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
    let (t0, all, t1) = (Date(), try ws.tidemark(["status", "-r", dr, "--rpo", "15m", "--json"], env: env), Date())
    #expect(all.status == 2, "\(all.out) \(all.stderr)")
    #expect(all.out.contains("\"rpo_seconds\":900") && all.out.hasSuffix("\"status\":\"CRIT\"}\n"), "\(all.out)")
    let h = try hosts(all)
    #expect(Set(h.keys) == ["dc1", "dc2", "dc3"])
    // The lag is counted from when status ran (the whole suite in parallel can make that minutes after `now`).
    func lagFits(_ host: String, _ ago: Double) -> Bool {
      guard let lag = h[host]?["lag_seconds"] as? Int else { return false }
      let taken = now.addingTimeInterval(-ago).timeIntervalSince1970.rounded(.down)  // --time has whole seconds
      return lag >= Int(t0.timeIntervalSince1970 - taken) - 1 && lag <= Int(t1.timeIntervalSince1970 - taken) + 1
    }
    #expect(lagFits("dc1", 1200) && h["dc1"]?["status"] as? String == "WARN", "\(h["dc1"] ?? [:]) \(now) \(t0) \(t1)")
    #expect(lagFits("dc2", 3600) && h["dc2"]?["status"] as? String == "CRIT", "\(h["dc2"] ?? [:])")
    #expect(lagFits("dc3", 0) && h["dc3"]?["status"] as? String == "OK", "\(h["dc3"] ?? [:])")
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

  @Test func failingTargetsReportPendingWorkAndAlertTheWebhook() throws {
    let ws = try Workspace("status-pending")
    let server = try HTTPRecorder(ws)
    try FileManager.default.createDirectory(atPath: ws.sub("src"), withIntermediateDirectories: true)
    try "secret\n".write(toFile: ws.sub("pw"), atomically: true, encoding: .utf8)
    // A target under a regular file cannot be created: it fails every cycle until the file goes away.
    try "not a directory".write(toFile: ws.sub("blocker"), atomically: true, encoding: .utf8)
    func write(broken: String) throws {
      try """
      host: dc1
      repository: \(ws.sub("dc"))
      password-file: \(ws.sub("pw"))
      sources:
        - path: \(ws.sub("src"))
      targets:
        - name: good
          repository: \(ws.sub("dr-good"))
        - name: broken
          repository: \(broken)
      alerts:
        rpo: 2s
        webhook: \(server.url)/hook
      """.write(toFile: ws.sub("c.yaml"), atomically: true, encoding: .utf8)
    }
    try write(broken: ws.sub("blocker/dr"))
    let env = ["TIDEMARK_STATE_DIR": ws.sub("state")]
    func run(_ args: [String]) throws -> RunResult { try ws.tidemark(args, password: "", env: env) }
    #expect(try run(["init", "--config", "c.yaml"]).status == 0)
    func targets() throws -> [String: [String: Any]] {
      let r = try run(["status", "--json", "--config", "c.yaml", "--rpo", "1h"])
      let o = try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any] ?? [:]
      var out: [String: [String: Any]] = [:]
      for t in o["targets"] as? [[String: Any]] ?? [] { out[t["name"] as? String ?? ""] = t }
      return out
    }
    func repositorySize() throws -> Int {
      let d = try Data(contentsOf: URL(fileURLWithPath: ws.sub("state/state.json")))
      return (try JSONSerialization.jsonObject(with: d) as? [String: Any])?["repositorySizeBytes"] as? Int ?? -1
    }
    func hooks() -> [[String: Any]] {
      server.requests().compactMap { r in
        guard r["method"] as? String == "POST", r["path"] as? String == "/hook",
          r["content_type"] as? String == "application/json", let body = r["body"] as? String
        else { return nil }
        return try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any]
      }
    }

    // Cycle 1: `broken` never replicated. It lacks everything; the webhook hears of the failure and the breach.
    try Data((0..<300_000).map { _ in UInt8.random(in: 0...255) }).write(to: URL(fileURLWithPath: ws.sub("src/a")))
    let c1 = try run(["replicate", "--once", "--config", "c.yaml"])
    #expect(c1.status == 1 && c1.stderr.contains("target broken"), "\(c1.stderr)")
    var t = try targets()
    #expect(t["good"]?["pending_snapshots"] as? Int == 0 && t["good"]?["pending_bytes"] as? Int == 0, "\(t)")
    #expect(t["broken"]?["pending_snapshots"] as? Int == 1, "\(t)")
    let size1 = try repositorySize()
    #expect(size1 > 300_000 && t["broken"]?["pending_bytes"] as? Int == size1, "\(t) \(size1)")
    var h = hooks()
    #expect(
      h.contains { $0["alert"] as? String == "failure" && ($0["message"] as? String ?? "").contains("target broken") },
      "\(h)")
    #expect(
      h.contains {
        $0["alert"] as? String == "rpo" && $0["target"] as? String == "broken" && $0["host"] as? String == "dc1"
      },
      "\(h)")

    // Cycle 2: still failing: two snapshots behind, and the second backup's bytes on top.
    try Data((0..<200_000).map { _ in UInt8.random(in: 0...255) }).write(to: URL(fileURLWithPath: ws.sub("src/b")))
    #expect(try run(["replicate", "--once", "--config", "c.yaml"]).status == 1)
    t = try targets()
    #expect(t["broken"]?["pending_snapshots"] as? Int == 2, "\(t)")
    let size2 = try repositorySize()
    #expect(size2 > size1 + 200_000 && t["broken"]?["pending_bytes"] as? Int == size2, "\(t) \(size2)")
    #expect(t["broken"]?["consecutive_failures"] as? Int == 2)
    let table = try run(["status", "--config", "c.yaml", "--rpo", "1h"])
    #expect(table.status == 2 && table.out.contains("Pending"), "\(table.out)")
    #expect(
      table.out.split(separator: "\n").contains { $0.hasPrefix("broken ") && $0.contains(" 2 (") }, "\(table.out)")

    // The obstacle goes: the next cycle catches up and nothing is pending.
    try FileManager.default.removeItem(atPath: ws.sub("blocker"))
    let c3 = try run(["replicate", "--once", "--config", "c.yaml"])
    #expect(c3.status == 0, "\(c3.stderr)")
    t = try targets()
    #expect(t["broken"]?["pending_snapshots"] as? Int == 0 && t["broken"]?["pending_bytes"] as? Int == 0, "\(t)")
    #expect(try run(["status", "--config", "c.yaml", "--rpo", "1h"]).status == 0)

    // It breaks again after having replicated: the breach is now a lag past the RPO (2 s), and what it lacks
    // is the new snapshot and the bytes this cycle added.
    Thread.sleep(forTimeInterval: 2.5)
    let before = hooks().count
    try write(broken: ws.sub("src/a/dr"))
    try Data((0..<100_000).map { _ in UInt8.random(in: 0...255) }).write(to: URL(fileURLWithPath: ws.sub("src/c")))
    #expect(try run(["replicate", "--once", "--config", "c.yaml"]).status == 1)
    h = Array(hooks().dropFirst(before))
    let breach = h.first { $0["alert"] as? String == "rpo" && $0["target"] as? String == "broken" }
    let message: String = breach?["message"] as? String ?? ""
    #expect(message.contains("exceeds the RPO of 2 s"), "\(h)")
    t = try targets()
    #expect(t["broken"]?["pending_snapshots"] as? Int == 1, "\(t)")
    let pending = t["broken"]?["pending_bytes"] as? Int ?? 0
    #expect(pending >= 100_000 && pending < 100_000 + 50_000, "\(pending)")
  }

  @Test func cyclesPushTheirMetricsToThePushgateway() throws {
    let ws = try Workspace("status-push")
    let server = try HTTPRecorder(ws)
    let site = try EngineSite(ws, host: "dc1", extra: "metrics:\n  pushgateway: \(server.url)/\n")
    try "some data\n".write(toFile: ws.sub("src/a"), atomically: true, encoding: .utf8)
    func run(_ args: [String]) throws -> RunResult { try ws.tidemark(args, password: "", env: site.env) }
    #expect(try run(["init", "--config", "c.yaml"]).status == 0)
    let c = try run(["replicate", "--once", "--config", "c.yaml"])
    #expect(c.status == 0 && c.stderr.isEmpty, "\(c.stderr)")
    let reqs = server.requests()
    #expect(reqs.count == 1, "\(reqs)")
    let r = reqs.first ?? [:]
    #expect(r["method"] as? String == "PUT" && r["path"] as? String == "/metrics/job/tidemark/instance/dc1", "\(r)")
    let contentType: String = r["content_type"] as? String ?? ""
    #expect(contentType.hasPrefix("text/plain"), "\(contentType)")
    let body = r["body"] as? String ?? ""
    #expect(body.contains("tidemark_replication_lag_seconds{target=\"dr\"} "), "\(body)")
    #expect(body.contains("tidemark_cycle_success 1") && body.contains("tidemark_cycles_total 1"), "\(body)")
    #expect(body.contains("tidemark_target_pending_snapshots{target=\"dr\"} 0.0"), "\(body)")
    // Each cycle pushes again (replacing the group).
    #expect(try run(["replicate", "--once", "--config", "c.yaml"]).status == 0)
    #expect(
      server.requests().count == 2 && (server.requests().last?["body"] as? String ?? "").contains("cycles_total 2"))

    // The gateway is gone: said on stderr, the cycle still succeeds.
    server.stop()
    let down = try run(["replicate", "--once", "--config", "c.yaml"])
    #expect(down.status == 0 && down.stderr.contains("cannot push metrics"), "\(down.stderr)")
    #expect(down.stderr.contains("connection refused"), "\(down.stderr)")
  }
}
