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

  @Test func ransomwareTripsTheWireAndFreezesRetentionOnEverySideUntilAcknowledged() throws {
    let ws = try Workspace("tripwire")
    try FileManager.default.createDirectory(atPath: ws.sub("src"), withIntermediateDirectories: true)
    try "secret\n".write(toFile: ws.sub("pw"), atomically: true, encoding: .utf8)
    // 200 text files, as a server's documents and logs: they compress well.
    let words = ["invoice", "customer", "order", "shipped", "total", "amount", "pending", "2026-12-06", "EUR"]
    for i in 0..<200 {
      let text = (0..<(200 + i)).map { _ in words.randomElement()! }.joined(separator: " ")
      try Data(text.utf8).write(to: URL(fileURLWithPath: ws.sub("src/doc\(i).txt")))
    }
    try """
    host: dc1
    repository: \(ws.sub("dc"))
    password-file: \(ws.sub("pw"))
    sources:
      - path: \(ws.sub("src"))
    targets:
      - name: dr
        repository: \(ws.sub("dr"))
    retention:
      keep-last: 1
    metrics:
      textfile: \(ws.sub("tidemark.prom"))
    alerts:
      command: 'cat >> \(ws.sub("alerts.json")); echo "$TIDEMARK_ALERT" >> \(ws.sub("alerts.kinds"))'
    """.write(toFile: ws.sub("c.yaml"), atomically: true, encoding: .utf8)
    let env = ["TIDEMARK_STATE_DIR": ws.sub("state")]
    func run(_ args: [String]) throws -> RunResult { try ws.tidemark(args, password: "", env: env) }
    func count(_ repo: String) throws -> Int {
      let out = try ws.restic(["-r", ws.sub(repo), "snapshots", "--json"], password: "secret").out
      return (try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [Any])?.count ?? -1
    }
    #expect(try run(["init", "--config", "c.yaml"]).status == 0)
    // Ordinary cycles: a few files change each time; keep-last 1 leaves one snapshot on each side.
    for round in 0..<3 {
      try Data("edit \(round)\n".utf8).write(to: URL(fileURLWithPath: ws.sub("src/doc\(round).txt")))
      let c = try run(["replicate", "--once", "--config", "c.yaml"])
      #expect(c.status == 0, "round \(round): \(c.stderr)")
    }
    #expect(try count("dc") == 1 && count("dr") == 1)

    // 80% of the files rewritten with random bytes, as ransomware leaves them.
    for i in 0..<160 {
      let bytes = (0..<(4_000 + i * 10)).map { _ in UInt8.random(in: 0...255) }
      try Data(bytes).write(to: URL(fileURLWithPath: ws.sub("src/doc\(i).txt")))
    }
    let tripped = try run(["replicate", "--once", "--config", "c.yaml"])
    #expect(tripped.status != 0, "the cycle must fail")
    #expect(tripped.stderr.contains("tripwire") && tripped.stderr.contains("160 of 200 files"), "\(tripped.stderr)")
    #expect(tripped.stderr.contains("incompressible"), "\(tripped.stderr)")
    let bodies = (try? String(contentsOfFile: ws.sub("alerts.json"), encoding: .utf8)) ?? ""
    #expect(bodies.contains("tripwire"), "the alert states the evidence: \(bodies)")
    // The snapshot is stored and replicated; nothing was forgotten on either side.
    #expect(try count("dc") == 2 && count("dr") == 2)
    let status = try run(["status", "--config", "c.yaml"])
    #expect(status.status == 2 && status.out.contains("TRIPWIRE"), "\(status.out)")
    func frozen() throws -> Bool {
      let lines = try String(contentsOfFile: ws.sub("tidemark.prom"), encoding: .utf8).split(separator: "\n")
      let line = lines.first { $0.hasPrefix("tidemark_tripwire_frozen ") } ?? ""
      return Double(line.split(separator: " ").last ?? "") == 1
    }
    #expect(try frozen())

    // Later cycles back up and replicate, but forget nothing, until someone acknowledges.
    for round in 0..<2 {
      try Data("after \(round)\n".utf8).write(to: URL(fileURLWithPath: ws.sub("src/new\(round).txt")))
      let c = try run(["replicate", "--once", "--config", "c.yaml"])
      #expect(c.status == 0, "\(c.stderr)")
    }
    #expect(try count("dc") == 4 && count("dr") == 4)
    let ack = try run(["tripwire", "ack", "--config", "c.yaml"])
    #expect(ack.status == 0 && ack.out.contains("tripwire lifted"), "\(ack.out) \(ack.stderr)")
    #expect(try run(["replicate", "--once", "--config", "c.yaml"]).status == 0)
    #expect(try count("dc") == 1 && count("dr") == 1)
    #expect(try !frozen())
    #expect(try ws.restic(["-r", ws.sub("dr"), "check"], password: "secret").status == 0)
  }

  @Test func theKeeperTripsOnArrivingRansomwareAndKeepsItsCopyUntilAcknowledged() throws {
    let ws = try Workspace("keeper-tripwire")
    try FileManager.default.createDirectory(atPath: ws.sub("src"), withIntermediateDirectories: true)
    try "secret\n".write(toFile: ws.sub("pw"), atomically: true, encoding: .utf8)
    for i in 0..<120 {
      let text = (0..<(300 + i)).map { "line \($0) of document \(i): nothing to see here" }.joined(separator: "\n")
      try Data(text.utf8).write(to: URL(fileURLWithPath: ws.sub("src/doc\(i).txt")))
    }
    #expect(try ws.tidemark(["init", "-r", "dc"], password: "secret").status == 0)
    try """
    repository: \(ws.sub("dr"))
    password-file: \(ws.sub("pw"))
    retention:
      keep-last: 1
    """.write(toFile: ws.sub("keeper.yaml"), atomically: true, encoding: .utf8)
    let env = ["TIDEMARK_STATE_DIR": ws.sub("state")]
    /// What the DC does (its own business; the keeper sees only what arrives): back up, keep its newest snapshot
    /// only, replicate to DR.
    func arrive() throws {
      #expect(try ws.tidemark(["-r", "dc", "backup", "-q", "src"], password: "secret").status == 0)
      #expect(try ws.tidemark(["-r", "dc", "forget", "-q", "--keep-last", "1"], password: "secret").status == 0)
      let r = try ws.tidemark(["-r", "dc", "replicate", "--to", ws.sub("dr")], password: "secret")
      #expect(r.status == 0, "\(r.stderr)")
    }
    func keep() throws -> RunResult {
      try ws.tidemark(["replicate", "--once", "--config", ws.sub("keeper.yaml")], password: "", env: env)
    }
    func count() throws -> Int {
      let out = try ws.restic(["-r", "dr", "snapshots", "--json"], password: "secret").out
      return (try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [Any])?.count ?? -1
    }
    for round in 0..<3 {
      try Data("edit \(round)\n".utf8).write(to: URL(fileURLWithPath: ws.sub("src/doc\(round).txt")))
      try arrive()
      let k = try keep()
      #expect(k.status == 0, "round \(round): \(k.stderr)")
    }
    #expect(try count() == 1)

    // The DC is encrypted and its snapshot arrives (the DC itself has forgotten the good one): the keeper trips,
    // keeps it and everything before it.
    for i in 0..<100 {
      let bytes = (0..<(6_000 + i)).map { _ in UInt8.random(in: 0...255) }
      try Data(bytes).write(to: URL(fileURLWithPath: ws.sub("src/doc\(i).txt")))
    }
    try arrive()
    let tripped = try keep()
    #expect(tripped.status == 1 && tripped.stderr.contains("tripwire"), "\(tripped.stderr)")
    #expect(tripped.stderr.contains("100 of 120 files"), "\(tripped.stderr)")
    #expect(try count() == 2)
    try arrive()
    #expect(try keep().status == 0)
    #expect(try count() == 3, "retention stays frozen")
    #expect(try ws.tidemark(["tripwire", "ack", "--config", ws.sub("keeper.yaml")], env: env).status == 0)
    #expect(try keep().status == 0)
    #expect(try count() == 1)
    #expect(try ws.restic(["-r", "dr", "check"], password: "secret").status == 0)
  }
}
