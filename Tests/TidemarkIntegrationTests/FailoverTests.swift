// The full DR scenario, end to end, with two "machines": each site runs in its own mount namespace
// (`unshare -m`) where its own data directory is bind-mounted on the same path, and reaches the other site's
// repository over SFTP (one loopback sshd per site, so a site can "die"). DC replicates to DR; DC dies; DR fails
// over (restores the data in place) and runs as primary; the old DC comes back, is fenced, demoted, and
// receives only the new data; then the roles switch back.
import Foundation
import Testing
import TidemarkCore

@Suite(.serialized) struct FailoverTests {
  @Test func failoverFencingDemoteAndSwitchBack() throws {
    let ws = try Workspace("failover")
    let dcServer = try SSHServer(ws, name: "sshd-dc")
    let drServer = try SSHServer(ws, name: "sshd-dr")
    for d in ["data", "dc-data", "dr-data"] {
      try FileManager.default.createDirectory(atPath: ws.sub(d), withIntermediateDirectories: true)
    }
    try "secret\n".write(toFile: ws.sub("pw"), atomically: true, encoding: .utf8)
    func config(repo: String, target: String, server: SSHServer, peerRepo: String) -> String {
      """
      host: app
      repository: \(ws.sub(repo))
      password-file: \(ws.sub("pw"))
      sources:
        - path: \(ws.sub("data"))
      targets:
        - name: \(target)
          repository: sftp://root@127.0.0.1:\(server.port)/\(ws.sub(peerRepo))
          options:
            sftp.identity: \(server.userKey)
            sftp.known-hosts: \(server.knownHosts)
            sftp.agent: "no"
      """
    }
    try config(repo: "dc-repo", target: "dr", server: drServer, peerRepo: "dr-repo")
      .write(toFile: ws.sub("dc.yaml"), atomically: true, encoding: .utf8)
    try config(repo: "dr-repo", target: "dc", server: dcServer, peerRepo: "dc-repo")
      .write(toFile: ws.sub("dr.yaml"), atomically: true, encoding: .utf8)

    /// Runs tidemark as site `name`: its data directory on the shared data path, its own state directory.
    func site(_ name: String, _ args: [String]) throws -> RunResult {
      try Tools.run(
        "/usr/bin/unshare",
        [
          "-m", "/bin/sh", "-c", "mount --bind \"$1\" \"$2\" && shift 2 && exec \"$@\"", "sh", ws.sub("\(name)-data"),
          ws.sub("data"), Tools.tidemark,
        ] + args + ["--config", ws.sub("\(name).yaml")],
        env: ["TIDEMARK_STATE_DIR": ws.sub("\(name)-state")], cwd: ws.path)
    }
    func snapshots(_ repo: String) throws -> Set<String> {
      Set(try FileManager.default.contentsOfDirectory(atPath: ws.sub(repo + "/snapshots")))
    }
    func bytesCopied(_ name: String) throws -> Int {
      let data = try Data(contentsOf: URL(fileURLWithPath: ws.sub("\(name)-state/state.json")))
      let s = try JSONSerialization.jsonObject(with: data) as? [String: Any] ?? [:]
      return (s["targets"] as? [[String: Any]])?.first?["bytesCopiedLast"] as? Int ?? -1
    }
    func role(_ name: String) throws -> (String?, Int) {
      let r = try site(name, ["role", "--json"])
      let j = try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any] ?? [:]
      let s = j["site"] as? [String: Any] ?? [:]
      return (s["role"] as? String, s["epoch"] as? Int ?? -1)
    }
    func write(_ path: String, _ n: Int) throws {
      try Data((0..<n).map { _ in UInt8.random(in: 0...255) }).write(to: URL(fileURLWithPath: ws.sub(path)))
    }
    func checkClean(_ repo: String) throws {
      let c = try ws.restic(["-r", ws.sub(repo), "check", "--read-data"], password: "secret")
      #expect(c.status == 0, "\(repo): \(c.out) \(c.stderr)")
    }

    // Normal operation: DC backs up and replicates to DR.
    #expect(try site("dc", ["init"]).status == 0)
    try FileManager.default.createDirectory(atPath: ws.sub("dc-data/etc"), withIntermediateDirectories: true)
    for i in 0..<8 { try write("dc-data/file\(i)", 300_000) }
    try "config v1\n".write(toFile: ws.sub("dc-data/etc/app.conf"), atomically: true, encoding: .utf8)
    var c = try site("dc", ["replicate", "--once"])
    #expect(c.status == 0, "\(c.stderr)")
    try "config v2\n".write(toFile: ws.sub("dc-data/etc/app.conf"), atomically: true, encoding: .utf8)
    try write("dc-data/file8", 300_000)
    c = try site("dc", ["replicate", "--once"])
    #expect(c.status == 0, "\(c.stderr)")
    #expect(try snapshots("dr-repo") == (try snapshots("dc-repo")) && (try snapshots("dc-repo")).count == 2)
    let atLoss = try describeTree(ws.sub("dc-data"))

    // DR's data directory holds something stale; a failover while the DC is up is refused.
    try write("dr-data/stale", 1000)
    c = try site("dr", ["failover", "--delete"])
    #expect(c.status == 1 && c.stderr.contains("reachable"), "\(c.stderr)")
    #expect(try role("dr").0 == nil)

    // The DC dies. DR fails over: a new epoch, and the data restored in place.
    dcServer.stop()
    c = try site("dr", ["failover", "--delete"])
    #expect(c.status == 0, "\(c.stderr)")
    #expect(try role("dr") == ("primary", 1))
    #expect(differences(atLoss, try describeTree(ws.sub("dr-data"))) == [])
    // Again: nothing to do, the epoch stays.
    #expect(try site("dr", ["failover", "--delete"]).status == 0)
    #expect(try role("dr") == ("primary", 1))

    // DR runs as primary; the DC target is down, so its cycles back up but report the target.
    try write("dr-data/new-on-dr", 400_000)
    try "config v3\n".write(toFile: ws.sub("dr-data/etc/app.conf"), atomically: true, encoding: .utf8)
    c = try site("dr", ["replicate", "--once"])
    #expect(c.status == 1 && c.stderr.contains("target dc"), "\(c.stderr)")
    #expect(try snapshots("dr-repo").count == 3)
    let drStatus = try site("dr", ["status", "--json"])
    #expect(drStatus.out.contains("\"role\":\"primary\",\"epoch\":1"), "\(drStatus.out)")

    // The old DC returns. Its timer fires: fenced, nothing written.
    try dcServer.start()
    let dcBefore = try snapshots("dc-repo")
    c = try site("dc", ["replicate", "--once"])
    #expect(c.status == 1 && c.stderr.contains("fenced"), "\(c.stderr)")
    #expect(try snapshots("dc-repo") == dcBefore)
    // Promoting it while DR is primary is refused too.
    c = try site("dc", ["promote"])
    #expect(c.status == 1 && c.stderr.contains("target dr is primary"), "\(c.stderr)")

    // Demoted, it refuses its own cycles and prunes, and receives only what is new.
    #expect(try site("dc", ["demote"]).status == 0)
    #expect(try role("dc") == ("standby", 1))
    c = try site("dc", ["replicate", "--once"])
    #expect(c.status == 1 && c.stderr.contains("standby"), "\(c.stderr)")
    c = try site("dc", ["prune"])
    #expect(c.status == 1 && c.stderr.contains("standby"), "\(c.stderr)")
    try write("dr-data/new-on-dr-2", 200_000)
    c = try site("dr", ["replicate", "--once"])
    #expect(c.status == 0, "\(c.stderr)")
    #expect(try snapshots("dc-repo") == (try snapshots("dr-repo")))
    let copied = try bytesCopied("dr")
    let total = Int(try ws.size("dr-repo/data"))
    // What DR added since the failover (two cycles, ~600 kB of new data), not the 2.7 MB from before.
    #expect(copied > 600_000 && copied < 600_000 * 12 / 10 + 65_536, "copied \(copied) of \(total)")
    try checkClean("dc-repo")

    // Switch back: a last cycle on DR, DR demoted, DC promoted with its data restored in place.
    c = try site("dc", ["promote"])
    #expect(c.status == 1, "promote while DR is still primary: \(c.stderr)")
    #expect(try site("dr", ["replicate", "--once"]).status == 0)
    #expect(try site("dr", ["demote"]).status == 0)
    try write("dc-data/junk-after-outage", 1000)
    c = try site("dc", ["promote", "--restore", "--delete"])
    #expect(c.status == 0, "\(c.stderr)")
    #expect(try role("dc") == ("primary", 2))
    #expect(differences(try describeTree(ws.sub("dr-data")), try describeTree(ws.sub("dc-data"))) == [])
    #expect(!FileManager.default.fileExists(atPath: ws.sub("dc-data/junk-after-outage")))
    try write("dc-data/back-home", 100_000)
    c = try site("dc", ["replicate", "--once"])
    #expect(c.status == 0, "\(c.stderr)")
    #expect(try snapshots("dr-repo") == (try snapshots("dc-repo")))
    c = try site("dr", ["replicate", "--once"])
    #expect(c.status == 1 && c.stderr.contains("standby"), "\(c.stderr)")
    let dcStatus = try site("dc", ["status", "--json"])
    #expect(dcStatus.out.contains("\"role\":\"primary\",\"epoch\":2"), "\(dcStatus.out)")
    try checkClean("dr-repo")
    try checkClean("dc-repo")
    let history = try site("dc", ["role"])
    #expect(history.out.contains("primary at epoch 2") && history.out.contains("target dr"), "\(history.out)")
  }
}
