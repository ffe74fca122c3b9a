// The replication cycle from a configuration: backup, verbatim replication to a local and an SFTP target,
// retention, state and `status` (lag against the RPO), a failing target, and no overlapping cycles.
import Foundation
import Testing
import TidemarkBackends
import TidemarkCore
import TidemarkSystem

@Suite(.serialized) struct CycleTests {
  @Test func cyclesReplicateReportLagAndSurviveATargetOutage() throws {
    let ws = try Workspace("cycle")
    let server = try SSHServer(ws)
    try FileManager.default.createDirectory(atPath: ws.sub("src"), withIntermediateDirectories: true)
    try "secret\n".write(toFile: ws.sub("pw"), atomically: true, encoding: .utf8)
    let sftpRepo = "sftp://root@127.0.0.1:\(server.port)/" + ws.sub("dr-sftp")
    let config = """
      host: dc1
      repository: \(ws.sub("dc"))
      password-file: \(ws.sub("pw"))
      sources:
        - path: \(ws.sub("src"))
          exclude: ["*.tmp"]
      hooks:
        before: [touch \(ws.sub("before-ran"))]
        on-failure: [touch \(ws.sub("failure-ran"))]
      targets:
        - name: local
          repository: \(ws.sub("dr-local"))
        - name: sftp
          repository: \(sftpRepo)
          options:
            sftp.identity: \(server.userKey)
            sftp.known-hosts: \(server.knownHosts)
            sftp.agent: "no"
      retention:
        keep-last: 3
      alerts:
        rpo: 3s
        command: 'cat >> \(ws.sub("alerts.json")); echo "$TIDEMARK_ALERT" >> \(ws.sub("alerts.kinds"))'
      """
    try config.write(toFile: ws.sub("c.yaml"), atomically: true, encoding: .utf8)
    let env = ["TIDEMARK_STATE_DIR": ws.sub("state")]
    func run(_ args: [String]) throws -> RunResult { try ws.tidemark(args, password: "", env: env) }
    #expect(try run(["init", "--config", "c.yaml"]).status == 0)

    func state() throws -> [String: Any] {
      let data = try Data(contentsOf: URL(fileURLWithPath: ws.sub("state/state.json")))
      return try JSONSerialization.jsonObject(with: data) as? [String: Any] ?? [:]
    }
    func ids(_ repo: String, _ extra: [String] = []) throws -> Set<String> {
      let out = try ws.restic(["-r", repo, "snapshots", "--json"] + extra, password: "secret").out
      let list = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]] ?? []
      return Set(list.compactMap { $0["id"] as? String })
    }
    let resticSFTP = ["-o", "sftp.command=\(server.resticCommand)"]
    for round in 0..<4 {
      let bytes = (0..<(200_000 + round * 50_000)).map { _ in UInt8.random(in: 0...255) }
      try Data(bytes).write(to: URL(fileURLWithPath: ws.sub("src/f\(round)")))
      try Data("skip".utf8).write(to: URL(fileURLWithPath: ws.sub("src/junk\(round).tmp")))
      let c = try run(["replicate", "--once", "--config", "c.yaml"])
      #expect(c.status == 0, "round \(round): \(c.out) \(c.stderr)")
      for (repo, extra) in [(ws.sub("dr-local"), [String]()), ("sftp:root@127.0.0.1:" + ws.sub("dr-sftp"), resticSFTP)]
      {
        let check = try ws.restic(["-r", repo, "check", "--read-data"] + extra, password: "secret")
        #expect(check.status == 0, "round \(round) \(repo): \(check.out) \(check.stderr)")
        #expect(try ids(repo, extra) == (try ids(ws.sub("dc"))), "round \(round) \(repo)")
      }
      #expect(try ids(ws.sub("dc")).count == min(round + 1, 3))
      // What travelled is what the backup added (plus index and snapshot files).
      let s = try state()
      let added = s["backupBytesAdded"] as? Int ?? 0
      for t in s["targets"] as? [[String: Any]] ?? [] {
        let copied = t["bytesCopiedLast"] as? Int ?? 0
        #expect(copied >= added && copied <= added + added / 5 + 16_384, "round \(round): \(copied) vs \(added)")
      }
    }
    #expect(FileManager.default.fileExists(atPath: ws.sub("before-ran")))
    let restored = try ws.restic(["-r", ws.sub("dr-local"), "restore", "latest", "--target", "r"], password: "secret")
    #expect(restored.status == 0)
    #expect(!FileManager.default.fileExists(atPath: ws.sub("r") + ws.sub("src/junk0.tmp")))
    #expect(FileManager.default.contentsEqual(atPath: ws.sub("r") + ws.sub("src/f3"), andPath: ws.sub("src/f3")))

    // Status: within the RPO right after a cycle; WARN past it; CRIT past twice it. The RPOs are set from the
    // lag status reports (--rpo), so a slow machine cannot move the lag across a fixed limit.
    try Data("more".utf8).write(to: URL(fileURLWithPath: ws.sub("src/more")))
    #expect(try run(["replicate", "--once", "--config", "c.yaml"]).status == 0)
    // `ok` measured a lag of L (whole seconds, truncated) somewhere inside its run. After sleeping S seconds past
    // its end, the lag is at least L + S, and at most L + 1 + S + (ok's run time) + (warn's own run time). An RPO
    // of L + S - 1 is then below the lag, and twice it stays above it as long as those two run times add up to less
    // than L + S - 2 seconds: S = 10 leaves a loaded CI machine eight seconds of slack.
    let ok = try run(["status", "--json", "--config", "c.yaml", "--rpo", "10m"])
    #expect(ok.status == 0 && ok.out.contains("\"status\":\"OK\""), "\(ok.out) \(ok.stderr)")
    Thread.sleep(forTimeInterval: 10)
    let lagJSON = try JSONSerialization.jsonObject(with: Data(ok.out.utf8)) as? [String: Any] ?? [:]
    let lags = (lagJSON["targets"] as? [[String: Any]] ?? []).compactMap { $0["lag_seconds"] as? Int }
    let lag = (lags.max() ?? 0) + 10  // the lag is at least this now
    let warn = try run(["status", "--json", "--config", "c.yaml", "--rpo", "\(lag - 1)s"])
    #expect(warn.status == 1 && warn.out.contains("\"status\":\"WARN\""), "lag \(lag): \(warn.out)")
    #expect(try run(["status", "--config", "c.yaml", "--rpo", "\(lag / 3)s"]).status == 2)

    // The SFTP target goes away: the cycle fails (exit 1) but the local target still gets the new snapshot.
    let sftpNewest =
      (try state()["targets"] as? [[String: Any]])?.first { $0["name"] as? String == "sftp" }?[
        "newestSnapshot"] as? String
    server.stop()
    try Data("new".utf8).write(to: URL(fileURLWithPath: ws.sub("src/after-outage")))
    let failed = try run(["replicate", "--once", "--config", "c.yaml"])
    #expect(failed.status == 1 && failed.stderr.contains("target sftp"), "\(failed.stderr)")
    #expect(FileManager.default.fileExists(atPath: ws.sub("failure-ran")))
    // Alerts: the failure, and the SFTP target's RPO breach (its newest snapshot is older than 3 s by now).
    let kinds = (try? String(contentsOfFile: ws.sub("alerts.kinds"), encoding: .utf8)) ?? ""
    #expect(kinds.contains("failure") && kinds.contains("rpo"), "\(kinds)")
    let bodies = (try? String(contentsOfFile: ws.sub("alerts.json"), encoding: .utf8)) ?? ""
    #expect(bodies.contains("\"alert\":\"rpo\"") && bodies.contains("\"target\":\"sftp\""), "\(bodies)")
    #expect(try ids(ws.sub("dr-local")) == (try ids(ws.sub("dc"))))
    // Retention guard: more failing cycles push the SFTP target's newest snapshot out of keep-last 3, but the DC
    // keeps it (the target's last common snapshot) while the local target, which is current, forgets it.
    for i in 0..<3 {
      try Data("new \(i)".utf8).write(to: URL(fileURLWithPath: ws.sub("src/after-outage")))
      #expect(try run(["replicate", "--once", "--config", "c.yaml"]).status == 1)
    }
    let dcNow = try ids(ws.sub("dc"))
    #expect(sftpNewest != nil && dcNow.contains(sftpNewest!) && dcNow.count == 4, "\(dcNow) \(sftpNewest ?? "-")")
    #expect(!(try ids(ws.sub("dr-local"))).contains(sftpNewest ?? ""))
    let down = try run(["status", "--json", "--config", "c.yaml"])
    #expect(down.status == 2 && down.out.contains("\"consecutive_failures\":4"), "\(down.out)")
    // It comes back: the next cycle catches up.
    try server.start()
    let back = try run(["replicate", "--once", "--config", "c.yaml"])
    #expect(back.status == 0, "\(back.stderr)")
    #expect(try ids("sftp:root@127.0.0.1:" + ws.sub("dr-sftp"), resticSFTP) == (try ids(ws.sub("dc"))))
    let up = try run(["status", "--json", "--config", "c.yaml"])
    #expect(up.status == 0 && up.out.contains("\"consecutive_failures\":0"), "\(up.out)")

    // Never two cycles at once.
    let busy = try Tools.sh(
      "flock state/cycle.lock sh -c 'TIDEMARK_STATE_DIR=\(ws.sub("state")) \"\(Tools.tidemark)\" replicate --once --config c.yaml; echo rc=$?'",
      cwd: ws.path)
    #expect(
      busy.out.contains("rc=11") && busy.stderr.contains("another replication cycle"), "\(busy.out) \(busy.stderr)")
  }

  @Test func daemonRunsCyclesServesMetricsReloadsAndStops() throws {
    let ws = try Workspace("daemon")
    try FileManager.default.createDirectory(atPath: ws.sub("src"), withIntermediateDirectories: true)
    try Data((0..<50_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }).write(to: URL(fileURLWithPath: ws.sub("src/a")))
    try "secret\n".write(toFile: ws.sub("pw"), atomically: true, encoding: .utf8)
    let port = try unusedPort()
    func config(targets: [String]) -> String {
      """
      repository: \(ws.sub("dc"))
      password-file: \(ws.sub("pw"))
      interval: 1s
      sources:
        - path: \(ws.sub("src"))
      targets:
      \(targets.map { "  - name: \($0)\n    repository: \(ws.sub($0))" }.joined(separator: "\n"))
      metrics:
        listen: 127.0.0.1:\(port)
        textfile: \(ws.sub("tidemark.prom"))
      """
    }
    try config(targets: ["dr1"]).write(toFile: ws.sub("c.yaml"), atomically: true, encoding: .utf8)
    let env = ["TIDEMARK_STATE_DIR": ws.sub("state")]
    #expect(try ws.tidemark(["init", "--config", ws.sub("c.yaml")], password: "", env: env).status == 0)
    let pid = try startDaemon(ws, config: ws.sub("c.yaml"))
    defer { stop(pid) }
    func cycles() -> Int {
      guard let d = FileManager.default.contents(atPath: ws.sub("state/state.json")),
        let o = try? JSONSerialization.jsonObject(with: d) as? [String: Any]
      else { return 0 }
      return o["cycles"] as? Int ?? 0
    }
    for _ in 0..<300 where cycles() < 2 { Thread.sleep(forTimeInterval: 0.1) }
    #expect(cycles() >= 2, "the daemon ran no cycles")
    // Metrics over HTTP and in the textfile.
    let metrics = try Tools.run(
      "/bin/bash",
      ["-c", "exec 3<>/dev/tcp/127.0.0.1/\(port); printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3"])
    #expect(
      metrics.out.contains("200 OK") && metrics.out.contains("tidemark_replication_lag_seconds{target=\"dr1\"}"),
      "\(metrics.out)")
    #expect(metrics.out.contains("tidemark_cycle_success 1"))
    #expect(metrics.out.contains("tidemark_site_primary 1.0") && metrics.out.contains("tidemark_site_epoch 0.0"))
    let text = try String(contentsOfFile: ws.sub("tidemark.prom"), encoding: .utf8)
    #expect(text.contains("tidemark_replicated_bytes_total{target=\"dr1\"}"))
    // A second daemon refuses.
    let second = try ws.tidemark(["daemon", "--config", ws.sub("c.yaml")], password: "", env: env)
    #expect(second.status == 1 && second.stderr.contains("another tidemark daemon (pid \(pid))"), "\(second.stderr)")
    // SIGHUP: the new configuration (a second target) is used from the next cycle on.
    try config(targets: ["dr1", "dr2"]).write(toFile: ws.sub("c.yaml"), atomically: true, encoding: .utf8)
    kill(pid, SIGHUP)
    for _ in 0..<300 where !FileManager.default.fileExists(atPath: ws.sub("dr2/config")) {
      Thread.sleep(forTimeInterval: 0.1)
    }
    #expect(FileManager.default.fileExists(atPath: ws.sub("dr2/config")), "SIGHUP did not reload")
    // SIGTERM: it stops (after the running cycle), exit 0, and the repositories check clean.
    kill(pid, SIGTERM)
    var status: Int32 = 0
    var exited = false
    for _ in 0..<100 {
      if waitpid(pid, &status, WNOHANG) == pid {
        exited = true
        break
      }
      Thread.sleep(forTimeInterval: 0.1)
    }
    #expect(exited && (status >> 8) & 0xff == 0, "status \(status)")
    for r in ["dc", "dr1", "dr2"] {
      let check = try ws.restic(["-r", ws.sub(r), "check"], password: "secret")
      #expect(check.status == 0, "\(r): \(check.out) \(check.stderr)")
    }
  }

  @Test func cyclesLookUpOnlyNewPacksAndListEverythingNowAndThen() throws {
    let ws = try Workspace("cycle-incremental")
    let site = try EngineSite(ws)
    func cycle() throws -> RunResult { try site.run(["replicate", "--once"]) }
    #expect(try site.run(["init"]).status == 0)
    func packs(_ r: String) throws -> Set<String> {
      let out = try Tools.run("/usr/bin/find", [ws.sub(r + "/data"), "-type", "f", "-printf", "%f\n"]).out
      return Set(out.split(separator: "\n").map(String.init))
    }
    try Data((0..<300_000).map { _ in UInt8.random(in: 0...255) }).write(to: URL(fileURLWithPath: ws.sub("src/a")))
    #expect(try cycle().status == 0)  // the first sync lists everything
    // A pack lost on the target is not noticed by the next cycles, which look up only what is new...
    let lost = try packs("dr").sorted()[0]
    try FileManager.default.removeItem(atPath: ws.sub("dr/data/\(lost.prefix(2))/\(lost)"))
    try Data((0..<300_000).map { _ in UInt8.random(in: 0...255) }).write(to: URL(fileURLWithPath: ws.sub("src/b")))
    #expect(try cycle().status == 0)
    #expect(try packs("dc").subtracting(try packs("dr")) == [lost])
    // ...until the periodic full comparison, which copies it again.
    let statePath = ws.sub("state/state.json")
    var state =
      try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: statePath))) as! [String: Any]
    var targets = state["targets"] as! [[String: Any]]
    #expect(targets[0]["lastFullSync"] != nil)
    targets[0]["lastFullSync"] = 0
    state["targets"] = targets
    try JSONSerialization.data(withJSONObject: state).write(to: URL(fileURLWithPath: statePath))
    #expect(try cycle().status == 0)
    #expect(try packs("dc") == (try packs("dr")))
    let check = try ws.restic(["-r", ws.sub("dr"), "check", "--read-data"], password: "secret")
    #expect(check.status == 0, "\(check.out) \(check.stderr)")
  }

  @Test func retentionWaitsForTheNextCycleWhileSomeoneHoldsALock() async throws {
    let ws = try Workspace("cycle-retention-locked")
    let site = try EngineSite(ws, extra: "retention:\n  keep-last: 1\n")
    func cycle() throws -> RunResult { try site.run(["replicate", "--once"]) }
    #expect(try site.run(["init"]).status == 0)
    for i in 0..<2 {
      try Data("v\(i)".utf8).write(to: URL(fileURLWithPath: ws.sub("src/a")))
      #expect(try cycle().status == 0)
    }
    func count(_ r: String) -> Int { site.snapshots(r) }
    #expect(count("dc") == 1 && count("dr") == 1)
    // A shared lock (as `tidemark mount` holds one): the cycle backs up and replicates, and leaves forgetting to
    // the next cycle instead of failing.
    let repo = try await Repository.open(
      backend: LocalBackend(path: BytePath(ws.sub("dc"))), password: Array("secret".utf8))
    let lock = try await RepositoryLock.acquire(repo, exclusive: false)
    try Data("v2".utf8).write(to: URL(fileURLWithPath: ws.sub("src/a")))
    let held = try cycle()
    #expect(
      held.status == 0 && held.stderr.contains("retention on \(ws.sub("dc")) skipped this cycle"), "\(held.stderr)")
    #expect(count("dc") == 2 && count("dr") == 1)
    await lock.release()
    #expect(try cycle().status == 0)
    #expect(count("dc") == 1 && count("dr") == 1)
  }

  @Test func daemonRunsACycleOnSIGUSR1WithItsKeyInMemory() throws {
    let ws = try Workspace("daemon-usr1")
    let site = try EngineSite(ws, extra: "interval: 1h\n")
    try Data("one".utf8).write(to: URL(fileURLWithPath: ws.sub("src/a")))
    let env = site.env
    #expect(try site.run(["init"]).status == 0)
    let pid = try site.startDaemon()
    defer { stop(pid) }
    func snapshots(_ r: String) -> Int { site.snapshots(r) }
    Thread.sleep(forTimeInterval: 0.5)
    #expect(snapshots("dc") == 0, "a cycle ran before its hour")
    // Each SIGUSR1 runs a cycle now; the second one opens the repository with the key kept in memory.
    for round in 1...2 {
      try Data("round \(round)".utf8).write(to: URL(fileURLWithPath: ws.sub("src/a")))
      kill(pid, SIGUSR1)
      for _ in 0..<400 where snapshots("dr") < round { Thread.sleep(forTimeInterval: 0.05) }
      #expect(snapshots("dc") == round && snapshots("dr") == round, "round \(round)")
    }
    // A removed key file is noticed: the cached key is dropped and the password opens another key.
    let added = try ws.tidemark(
      ["key", "add", "--config", ws.sub("c.yaml"), "--new-password-file", ws.sub("pw")], password: "", env: env)
    #expect(added.status == 0, "\(added.stderr)")
    let keys = try FileManager.default.contentsOfDirectory(atPath: ws.sub("dc/keys")).sorted()
    let used = try ws.tidemark(["key", "list", "--json", "--config", ws.sub("c.yaml")], password: "", env: env).out
    if let current = keys.first(where: { used.contains("\"current\":true,\"id\":\"\($0)") }) {
      try FileManager.default.removeItem(atPath: ws.sub("dc/keys/" + current))
    }
    kill(pid, SIGUSR1)
    for _ in 0..<400 where snapshots("dr") < 3 { Thread.sleep(forTimeInterval: 0.05) }
    #expect(snapshots("dr") == 3)
    kill(pid, SIGTERM)
    var status: Int32 = 0
    for _ in 0..<100 {
      if waitpid(pid, &status, WNOHANG) == pid { break }
      Thread.sleep(forTimeInterval: 0.1)
    }
    let check = try ws.restic(["-r", ws.sub("dr"), "check"], password: "secret")
    #expect(check.status == 0, "\(check.out) \(check.stderr)")
  }

  @Test func commandSourcesAreStreamedIntoSnapshotsAndAFailingCommandLeavesNone() throws {
    let ws = try Workspace("cycle-command")
    try "secret\n".write(toFile: ws.sub("pw"), atomically: true, encoding: .utf8)
    func write(_ command: String) throws {
      try """
      repository: \(ws.sub("dc"))
      password-file: \(ws.sub("pw"))
      sources:
        - command: \(command)
          filename: numbers.txt
      targets:
        - name: dr
          repository: \(ws.sub("dr"))
      """.write(toFile: ws.sub("c.yaml"), atomically: true, encoding: .utf8)
    }
    let env = ["TIDEMARK_STATE_DIR": ws.sub("state")]
    try write("seq 1 200000")
    #expect(try ws.tidemark(["init", "--config", "c.yaml"], password: "", env: env).status == 0)
    let ok = try ws.tidemark(["replicate", "--once", "--config", "c.yaml"], password: "", env: env)
    #expect(ok.status == 0, "\(ok.out) \(ok.stderr)")
    let want = (1...200_000).map(String.init).joined(separator: "\n") + "\n"
    for repo in ["dc", "dr"] {
      let dump = try ws.restic(["-r", ws.sub(repo), "dump", "latest", "/numbers.txt"], password: "secret")
      #expect(dump.status == 0 && dump.out == want, "\(repo): \(dump.stderr) \(dump.out.prefix(100))")
    }
    // A command that fails half-way: the cycle fails and leaves no snapshot of the cut-short output.
    try write("'seq 1 1000; exit 3'")
    let before = try ws.restic(["-r", ws.sub("dc"), "snapshots", "--json"], password: "secret").out
    let bad = try ws.tidemark(["replicate", "--once", "--config", "c.yaml"], password: "", env: env)
    #expect(bad.status == 1 && bad.stderr.contains("exited with 3"), "\(bad.stderr)")
    let after = try ws.restic(["-r", ws.sub("dc"), "snapshots", "--json"], password: "secret").out
    #expect(before == after)
  }

  @Test func scheduleWritesAndRemovesTheUnits() throws {
    let ws = try Workspace("schedule")
    try "repository: /srv/x\ninterval: 10m\n".write(toFile: ws.sub("c.yaml"), atomically: true, encoding: .utf8)
    let dir = ws.sub("units")
    let t = try ws.tidemark([
      "schedule", "install", "--timer", "--no-enable", "--unit-dir", dir, "--config", ws.sub("c.yaml"),
    ])
    #expect(t.status == 0, "\(t.stderr)")
    let service = try String(contentsOfFile: dir + "/tidemark-replicate.service", encoding: .utf8)
    #expect(service.contains("ExecStart=\(Tools.tidemark) replicate --once --config \(ws.sub("c.yaml"))"), "\(service)")
    let timer = try String(contentsOfFile: dir + "/tidemark-replicate.timer", encoding: .utf8)
    #expect(timer.contains("OnCalendar=*:0/10") && timer.contains("Persistent=true"), "\(timer)")
    let d = try ws.tidemark(["schedule", "install", "--no-enable", "--unit-dir", dir, "--config", ws.sub("c.yaml")])
    #expect(d.status == 0)
    #expect(try String(contentsOfFile: dir + "/tidemark.service", encoding: .utf8).contains(" daemon --config "))
    #expect(try ws.tidemark(["schedule", "remove", "--timer", "--no-enable", "--unit-dir", dir]).status == 0)
    #expect(try ws.tidemark(["schedule", "remove", "--no-enable", "--unit-dir", dir]).status == 0)
    #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty)
  }

  @Test func badConfigurationIsOneLineWithTheLine() throws {
    let ws = try Workspace("cycle-config")
    try "repository: /tmp/x\ntargets:\n  - name: a\n    repo: /tmp/y\n".write(
      toFile: ws.sub("c.yaml"), atomically: true, encoding: .utf8)
    let r = try ws.tidemark(["replicate", "--once", "--config", "c.yaml"])
    #expect(r.status == 1, "\(r.stderr)")
    #expect(r.stderr.contains("c.yaml:4: unknown key targets[0].repo"), "\(r.stderr)")
    #expect(r.stderr.split(separator: "\n").count == 1)
  }
}
