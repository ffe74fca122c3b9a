// A DR copy behind `tidemark serve --append-only`: the primary's cycles replicate into it and never delete there;
// `forget` and `prune` through it fail before they change anything; a target `retention:` for it is a mistake
// the cycle names. restic is the oracle for what the copy holds.
import Foundation
import Testing

@Suite(.serialized) struct AppendOnlyTests {
  @Test func cyclesReplicateIntoAnAppendOnlyServerAndForgetNothingThere() throws {
    let ws = try Workspace("append-only")
    try FileManager.default.createDirectory(atPath: ws.sub("src"), withIntermediateDirectories: true)
    try "secret\n".write(toFile: ws.sub("pw"), atomically: true, encoding: .utf8)
    let server = try ServeProcess(ws, ["--no-auth", "--append-only", "--path", ws.sub("served")])
    defer { server.stop() }
    let target = "rest:\(server.url)/dc1"
    func config(targetRetention: Bool) -> String {
      """
      host: dc1
      repository: \(ws.sub("dc"))
      password-file: \(ws.sub("pw"))
      sources:
        - path: \(ws.sub("src"))
      targets:
        - name: dr
          repository: \(target)
      \(targetRetention ? "    retention:\n        keep-last: 1\n" : "")retention:
        keep-last: 2
      prune:
        schedule: 1s
      """
    }
    try config(targetRetention: false).write(toFile: ws.sub("c.yaml"), atomically: true, encoding: .utf8)
    let env = ["TIDEMARK_STATE_DIR": ws.sub("state")]
    func run(_ args: [String]) throws -> RunResult { try ws.tidemark(args, password: "", env: env) }
    func count(_ repo: String) throws -> Int {
      let out = try ws.restic(["-r", repo, "snapshots", "--json"], password: "secret").out
      return (try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [Any])?.count ?? -1
    }
    #expect(try run(["init", "--config", "c.yaml"]).status == 0)
    for round in 0..<4 {
      let bytes = (0..<100_000).map { _ in UInt8.random(in: 0...255) }
      try Data(bytes).write(to: URL(fileURLWithPath: ws.sub("src/f\(round)")))
      let c = try run(["replicate", "--once", "--config", "c.yaml"])
      #expect(c.status == 0, "round \(round): \(c.stderr)")
    }
    // The DC keeps two; the append-only copy keeps all four, whole.
    #expect(try count(ws.sub("dc")) == 2)
    #expect(try count(target) == 4)
    let check = try ws.restic(["-r", target, "check", "--read-data"], password: "secret")
    #expect(check.status == 0, "\(check.out) \(check.stderr)")

    // forget and prune through the server: one line, exit 1, nothing removed.
    let files = try Tools.sh("find served -type f | sort | xargs sha256sum", cwd: ws.path).out
    let forget = try ws.tidemark(["-r", target, "forget", "--keep-last", "1"], password: "secret")
    #expect(forget.status == 1 && forget.stderr.contains("refuses deletes"), "\(forget.stderr)")
    #expect(forget.stderr.split(separator: "\n").count <= 2, "\(forget.stderr)")
    let prune = try ws.tidemark(["-r", target, "prune"], password: "secret")
    #expect(prune.status == 1 && prune.stderr.contains("refuses deletes"), "\(prune.stderr)")
    #expect(try count(target) == 4)
    #expect(try Tools.sh("find served -type f | sort | xargs sha256sum", cwd: ws.path).out == files)

    // A target with its own retention on such a server: the cycle names the mistake (and still replicates).
    try config(targetRetention: true).write(toFile: ws.sub("c.yaml"), atomically: true, encoding: .utf8)
    try Data("more".utf8).write(to: URL(fileURLWithPath: ws.sub("src/g")))
    let c = try run(["replicate", "--once", "--config", "c.yaml"])
    #expect(c.status == 1 && c.stderr.contains("refuses deletes"), "\(c.stderr)")
    #expect(c.stderr.contains("remove `retention:` from the target"), "\(c.stderr)")
    #expect(try count(target) == 5)
  }
}
