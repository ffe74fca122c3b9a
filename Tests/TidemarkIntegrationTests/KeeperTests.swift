// A DR host's keeper: a configuration without sources and targets looks after its own repository (retention,
// prune) and guards it against snapshots with forged times, which a compromised primary could write so that
// keep-last forgets the genuine ones. restic is the oracle for what the repository holds.
import Foundation
import Testing

@Suite(.serialized) struct KeeperTests {
  @Test func forgedFutureSnapshotsNeitherCountNorPushGenuineOnesOutAndRaiseTheAlert() throws {
    let ws = try Workspace("keeper")
    try FileManager.default.createDirectory(atPath: ws.sub("src"), withIntermediateDirectories: true)
    try "secret\n".write(toFile: ws.sub("pw"), atomically: true, encoding: .utf8)
    #expect(try ws.tidemark(["init", "-r", "dr"], password: "secret").status == 0)
    func backup(_ n: Int, time: String? = nil) throws {
      try Data("version \(n)\n".utf8).write(to: URL(fileURLWithPath: ws.sub("src/file")))
      let b = try ws.tidemark(
        ["-r", "dr", "backup", "-q", "src"] + (time.map { ["--time", $0] } ?? []), password: "secret")
      #expect(b.status == 0, "\(b.stderr)")
    }
    /// Snapshot IDs by time, oldest first, as restic lists them.
    func snapshots() throws -> [(id: String, time: String)] {
      let out = try ws.restic(["-r", "dr", "snapshots", "--json"], password: "secret").out
      let list = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]] ?? []
      return list.map { ($0["id"] as? String ?? "", $0["time"] as? String ?? "") }.sorted { $0.time < $1.time }
    }
    try backup(1)
    try backup(2)
    let genuine = try snapshots().map(\.id)
    // What a compromised primary could write: eight snapshots dated years ahead.
    for i in 0..<8 { try backup(10 + i, time: "2031-0\(1 + i)-01 00:00:00") }
    let forged = Set(try snapshots().map(\.id)).subtracting(genuine)
    #expect(forged.count == 8)

    try """
    repository: \(ws.sub("dr"))
    password-file: \(ws.sub("pw"))
    retention:
      keep-last: 2
    prune:
      schedule: 1s
    alerts:
      command: 'cat >> \(ws.sub("alerts.json")); echo "$TIDEMARK_ALERT" >> \(ws.sub("alerts.kinds"))'
    """.write(toFile: ws.sub("keeper.yaml"), atomically: true, encoding: .utf8)
    let env = ["TIDEMARK_STATE_DIR": ws.sub("state")]
    func keep() throws -> RunResult {
      try ws.tidemark(["replicate", "--once", "--config", ws.sub("keeper.yaml")], password: "", env: env)
    }
    // The cycle fails and says why; nothing is forgotten: keep-last 2 counts the two genuine snapshots only.
    let first = try keep()
    #expect(first.status == 1 && first.stderr.contains("forged"), "\(first.stderr)")
    #expect(Set(try snapshots().map(\.id)) == forged.union(genuine))
    let kinds = (try? String(contentsOfFile: ws.sub("alerts.kinds"), encoding: .utf8)) ?? ""
    let bodies = (try? String(contentsOfFile: ws.sub("alerts.json"), encoding: .utf8)) ?? ""
    #expect(kinds.contains("failure") && bodies.contains("forged"), "\(kinds) \(bodies)")
    let state = try JSONSerialization.jsonObject(
      with: Data(contentsOf: URL(fileURLWithPath: ws.sub("state/state.json"))))
    #expect(Set((state as? [String: Any])?["implausibleSnapshots"] as? [String] ?? []) == forged)

    // A new genuine snapshot: retention forgets the oldest genuine one, and still none of the forged ones.
    try backup(3)
    #expect(try keep().status == 1)
    let after = Set(try snapshots().map(\.id))
    #expect(after.isSuperset(of: forged) && !after.contains(genuine[0]) && after.contains(genuine[1]))
    #expect(after.count == 10)
    #expect(try ws.restic(["-r", "dr", "check", "--read-data"], password: "secret").status == 0)

    // Once someone has looked and removed them by ID, the keeper's cycles succeed again.
    #expect(try ws.tidemark(["-r", "dr", "forget"] + forged.sorted(), password: "secret").status == 0)
    let clean = try keep()
    #expect(clean.status == 0, "\(clean.stderr)")
  }
}
