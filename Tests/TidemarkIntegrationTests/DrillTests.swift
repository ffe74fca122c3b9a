// `tidemark drill`: restores and verifies the newest snapshot of every source from the DR target, reports RTO and
// RPO (JSON, Markdown, metrics), fails and names the damage when a replica pack is corrupted, raises alerts; and
// the daemon drills on its schedule.
import Foundation
import Testing
import TidemarkCore

@Suite(.serialized) struct DrillTests {
  func setUp(_ ws: Workspace, extra: String = "", verify: String = "grep -q hello {}") throws -> [String: String] {
    try FileManager.default.createDirectory(atPath: ws.sub("src/sub"), withIntermediateDirectories: true)
    for i in 0..<5 {
      try Data((0..<(100_000 + i)).map { _ in UInt8.random(in: 0...255) }).write(
        to: URL(fileURLWithPath: ws.sub("src/sub/f\(i)")))
    }
    try "hello\n".write(toFile: ws.sub("src/hello.txt"), atomically: true, encoding: .utf8)
    try "secret\n".write(toFile: ws.sub("pw"), atomically: true, encoding: .utf8)
    try """
    host: dc1
    repository: \(ws.sub("dc"))
    password-file: \(ws.sub("pw"))
    sources:
      - path: \(ws.sub("src"))
        verify: test -f {}/hello.txt
      - command: printf 'hello from the database\\n'
        filename: db.dump
        verify: \(verify)
    targets:
      - name: dr
        repository: \(ws.sub("dr"))
    alerts:
      command: 'cat >> \(ws.sub("alerts.json")); echo >> \(ws.sub("alerts.json"))'
    metrics:
      textfile: \(ws.sub("tidemark.prom"))
    \(extra)
    """.write(toFile: ws.sub("c.yaml"), atomically: true, encoding: .utf8)
    return ["TIDEMARK_STATE_DIR": ws.sub("state")]
  }

  func json(_ r: RunResult) throws -> [String: Any] {
    try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any] ?? [:]
  }

  @Test func drillRestoresVerifiesAndMeasuresAndFailsOnADamagedReplica() throws {
    let ws = try Workspace("drill")
    let env = try setUp(ws)
    func tm(_ args: [String]) throws -> RunResult {
      try ws.tidemark(args + ["--config", ws.sub("c.yaml")], password: "", env: env)
    }
    #expect(try tm(["init"]).status == 0)
    // A failing `before` hook fails the cycle and raises the alert.
    let config = try String(contentsOfFile: ws.sub("c.yaml"), encoding: .utf8)
    try (config + "hooks:\n  before: [\"false\"]\n").write(toFile: ws.sub("c.yaml"), atomically: true, encoding: .utf8)
    let hooked = try tm(["replicate", "--once"])
    #expect(hooked.status == 1 && hooked.stderr.contains("before hook `false` failed"), "\(hooked.stderr)")
    let alerts = (try? String(contentsOfFile: ws.sub("alerts.json"), encoding: .utf8)) ?? ""
    #expect(alerts.contains("\"alert\":\"failure\"") && alerts.contains("before hook"), "\(alerts)")
    try config.write(toFile: ws.sub("c.yaml"), atomically: true, encoding: .utf8)
    let cycle = try tm(["replicate", "--once"])
    #expect(cycle.status == 0, "\(cycle.stderr)")

    // A good drill: every file restored and read back, the verify commands pass.
    let good = try tm(["drill", "--json"])
    #expect(good.status == 0, "\(good.out) \(good.stderr)")
    let j = try json(good)
    #expect(j["ok"] as? Bool == true)
    let expectedBytes = (0..<5).reduce(6) { $0 + 100_000 + $1 } + "hello from the database\n".utf8.count
    #expect(j["files_verified"] as? Int == 7 && j["bytes_verified"] as? Int == expectedBytes, "\(good.out)")
    #expect((j["rto_seconds"] as? Double ?? -1) > 0 && (j["rpo_seconds"] as? Int ?? -1) >= 0, "\(good.out)")
    let repos = j["repositories"] as? [[String: Any]] ?? []
    #expect(repos.count == 1 && repos[0]["name"] as? String == "dr")
    let sources = repos.first?["sources"] as? [[String: Any]] ?? []
    #expect(sources.count == 2 && sources.allSatisfy { $0["verify_ok"] as? Bool == true }, "\(sources)")
    let report = j["report"] as? String ?? ""
    let md = (try? String(contentsOfFile: report, encoding: .utf8)) ?? ""
    #expect(md.contains("Result: **passed**") && md.contains("db.dump"), "\(report): \(md)")
    let prom = try String(contentsOfFile: ws.sub("tidemark.prom"), encoding: .utf8)
    #expect(prom.contains("tidemark_drill_success{target=\"dr\"} 1.0"), "\(prom)")
    #expect(prom.contains("tidemark_drill_rto_seconds{target=\"dr\"}"))
    let okStatus = try tm(["status"])
    #expect(okStatus.status == 0 && okStatus.out.contains("passed, RTO"), "\(okStatus.out)")
    #expect(try FileManager.default.contentsOfDirectory(atPath: ws.sub("state/drill-scratch")).isEmpty)
    // The DC's own repository drills too.
    let local = try tm(["drill", "--target", "local", "--json"])
    let localJSON = try json(local)
    #expect(local.status == 0 && localJSON["ok"] as? Bool == true, "\(local.out) \(local.stderr)")

    // A flipped byte in a replica pack: the drill fails and names what is damaged.
    let packs = try Tools.run("/usr/bin/find", [ws.sub("dr/data"), "-type", "f", "-size", "+200k"]).out
      .split(separator: "\n").map(String.init)
    #expect(!packs.isEmpty)
    let pack = packs[0]
    try flipByte(pack, at: 150_000)
    let bad = try tm(["drill", "--json"])
    #expect(bad.status == 1, "\(bad.out) \(bad.stderr)")
    let jb = try json(bad)
    #expect(jb["ok"] as? Bool == false)
    let failures = (jb["failures"] as? [String] ?? []).joined(separator: " ")
    #expect(failures.contains("dr: ") && failures.contains("/sub/f"), "\(failures)")
    let alerted = (try? String(contentsOfFile: ws.sub("alerts.json"), encoding: .utf8)) ?? ""
    #expect(alerted.contains("\"alert\":\"drill\"") && alerted.contains("\"target\":\"dr\""), "\(alerted)")
    // `status` shows the failed drill and warns.
    let status = try tm(["status", "--json"])
    #expect(status.status == 1 && status.out.contains("\"last_drill\":{\"ok\":false"), "\(status.out)")
    let prom2 = try String(contentsOfFile: ws.sub("tidemark.prom"), encoding: .utf8)
    #expect(prom2.contains("tidemark_drill_success{target=\"dr\"} 0.0"), "\(prom2)")
  }

  @Test func aFailingVerifyCommandFailsTheDrill() throws {
    let ws = try Workspace("drill-verify")
    let env = try setUp(ws, verify: "grep -q 'not in there' {}")
    func tm(_ args: [String]) throws -> RunResult {
      try ws.tidemark(args + ["--config", ws.sub("c.yaml")], password: "", env: env)
    }
    #expect(try tm(["init"]).status == 0)
    #expect(try tm(["replicate", "--once"]).status == 0)
    let r = try tm(["drill"])
    #expect(r.status == 1 && r.stderr.contains("verify command `grep -q 'not in there' {}` failed"), "\(r.stderr)")
    #expect(r.out.contains("FAILED"), "\(r.out)")
  }

  @Test func timerCyclesRunTheScheduledDrillWhenItIsDue() throws {
    let ws = try Workspace("drill-timer")
    let env = try setUp(ws, extra: "drill:\n  schedule: 1h\n")
    func tm(_ args: [String]) throws -> RunResult {
      try ws.tidemark(args + ["--config", ws.sub("c.yaml")], password: "", env: env)
    }
    func lastDrill() -> Double? {
      guard let d = FileManager.default.contents(atPath: ws.sub("state/drill.json")),
        let o = try? JSONSerialization.jsonObject(with: d) as? [String: Any]
      else { return nil }
      return o["start"] as? Double
    }
    #expect(try tm(["init"]).status == 0)
    #expect(try tm(["replicate", "--once", "--no-scheduled"]).status == 0)
    #expect(lastDrill() == nil)
    let first = try tm(["replicate", "--once"])
    #expect(first.status == 0, "\(first.stderr)")
    let t = try #require(lastDrill(), "the due drill did not run")
    #expect(try tm(["replicate", "--once"]).status == 0)
    #expect(lastDrill() == t, "a drill ran again before its hour")
  }

  @Test func theDaemonDrillsOnItsSchedule() throws {
    let ws = try Workspace("drill-daemon")
    _ = try setUp(ws, extra: "interval: 1s\ndrill:\n  schedule: 2s\n  check-budget: 1M\n")
    #expect(
      try ws.tidemark(
        ["init", "--config", ws.sub("c.yaml")], password: "", env: ["TIDEMARK_STATE_DIR": ws.sub("state")]
      )
      .status == 0)
    let pid = try startDaemon(ws, config: ws.sub("c.yaml"))
    defer { stop(pid) }
    func drills() -> [Double] {
      guard let d = FileManager.default.contents(atPath: ws.sub("state/drill.json")),
        let o = try? JSONSerialization.jsonObject(with: d) as? [String: Any]
      else { return [] }
      return [o["start"] as? Double ?? 0]
    }
    var seen = Set<Double>()
    for _ in 0..<200 where seen.count < 2 {
      seen.formUnion(drills())
      Thread.sleep(forTimeInterval: 0.05)
    }
    #expect(seen.count >= 2, "the daemon did not drill twice")
    let reports = (try? FileManager.default.contentsOfDirectory(atPath: ws.sub("state/reports"))) ?? []
    #expect(reports.count >= 1)
    #expect(FileManager.default.fileExists(atPath: ws.sub("state/check.json")), "no rolling check")
    let prom = (try? String(contentsOfFile: ws.sub("tidemark.prom"), encoding: .utf8)) ?? ""
    #expect(prom.contains("tidemark_drill_success{target=\"dr\"} 1.0"), "\(prom)")
  }
}
