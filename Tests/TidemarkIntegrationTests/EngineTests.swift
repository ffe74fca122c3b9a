// The engine run as a sysadmin runs it: two configurations on one host with two daemons side by side, an
// interrupt at any moment of a cycle leaving no lock behind, retention and prune freeing space on the DC and the
// DR side, and one clear line for bad configuration.
import Foundation
import Testing
import TidemarkCore
import TidemarkSystem

@Suite(.serialized) struct EngineTests {
  static func random(_ n: Int) -> Data { Data((0..<n).map { _ in UInt8.random(in: 0...255) }) }

  /// The JSON object in `file`, or an empty one.
  static func json(_ file: String) -> [String: Any] {
    guard let d = FileManager.default.contents(atPath: file),
      let o = try? JSONSerialization.jsonObject(with: d) as? [String: Any]
    else { return [:] }
    return o
  }

  /// Waits for `pid` up to `seconds`; its exit code, or nil when it is still running.
  static func exitCode(_ pid: pid_t, seconds: Double) -> Int32? {
    var status: Int32 = 0
    for _ in 0..<Int(seconds * 20) {
      if waitpid(pid, &status, WNOHANG) == pid { return (status >> 8) & 0xff }
      Thread.sleep(forTimeInterval: 0.05)
    }
    return nil
  }

  static func lockFiles(_ repo: String) -> [String] {
    (try? FileManager.default.contentsOfDirectory(atPath: repo + "/locks")) ?? []
  }

  @Test func twoConfigurationsRunTwoDaemonsSideBySide() throws {
    let ws = try Workspace("two-daemons")
    try FileManager.default.createDirectory(atPath: ws.sub("src"), withIntermediateDirectories: true)
    try Self.random(20_000).write(to: URL(fileURLWithPath: ws.sub("src/a")))
    try "secret\n".write(toFile: ws.sub("pw"), atomically: true, encoding: .utf8)
    for name in ["site", "replica"] {
      try """
      repository: \(ws.sub("dc-\(name)"))
      password-file: \(ws.sub("pw"))
      state-dir: \(ws.sub("state-\(name)"))
      interval: 1s
      sources:
        - path: \(ws.sub("src"))
      targets:
        - name: dr-\(name)
          repository: \(ws.sub("dr-\(name)"))
      """.write(toFile: ws.sub("\(name).yaml"), atomically: true, encoding: .utf8)
      #expect(try ws.tidemark(["init", "--config", ws.sub("\(name).yaml")], password: "").status == 0)
    }
    let a = try startDaemon(ws, config: ws.sub("site.yaml"))
    defer { stop(a) }
    let b = try startDaemon(ws, config: ws.sub("replica.yaml"))
    defer { stop(b) }
    func cycles(_ name: String) -> Int { Self.json(ws.sub("state-\(name)/state.json"))["cycles"] as? Int ?? 0 }
    for _ in 0..<300 where cycles("site") < 1 || cycles("replica") < 1 { Thread.sleep(forTimeInterval: 0.1) }
    #expect(cycles("site") >= 1 && cycles("replica") >= 1, "both daemons run cycles")
    for name in ["site", "replica"] {
      let s = try ws.tidemark(["status", "--json", "--config", ws.sub("\(name).yaml")], password: "")
      let o = try JSONSerialization.jsonObject(with: Data(s.out.utf8)) as? [String: Any] ?? [:]
      let targets = (o["targets"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String }
      #expect(targets == ["dr-\(name)"], "\(name): \(s.out) \(s.stderr)")
    }
    // A second daemon for one of them names the first one's pid, with exit code 1.
    let again = try ws.tidemark(["daemon", "--config", ws.sub("site.yaml")], password: "")
    #expect(again.status == 1 && again.stderr.contains("pid \(a)"), "\(again.status) \(again.stderr)")
    #expect(again.stderr.split(separator: "\n").count == 1, "one line: \(again.stderr)")
    kill(a, SIGTERM)
    kill(b, SIGTERM)
    #expect(Self.exitCode(a, seconds: 20) == 0)
    #expect(Self.exitCode(b, seconds: 20) == 0)
  }

  @Test func anInterruptAtAnyMomentOfACycleLeavesNoLock() throws {
    let ws = try Workspace("interrupt")
    try FileManager.default.createDirectory(atPath: ws.sub("src"), withIntermediateDirectories: true)
    try "secret\n".write(toFile: ws.sub("pw"), atomically: true, encoding: .utf8)
    // Slow enough to be caught in every step: a hook, the backup of new data, replication to two targets at a
    // limited rate, retention and prune.
    try """
    repository: \(ws.sub("dc"))
    password-file: \(ws.sub("pw"))
    sources:
      - path: \(ws.sub("src"))
    hooks:
      before: ["sleep 0.3"]
    targets:
      - name: one
        repository: \(ws.sub("dr1"))
        limit-upload: 8192
      - name: two
        repository: \(ws.sub("dr2"))
        limit-upload: 8192
    retention:
      keep-last: 2
    prune:
      schedule: 1s
    """.write(toFile: ws.sub("c.yaml"), atomically: true, encoding: .utf8)
    let env = ["TIDEMARK_STATE_DIR": ws.sub("state")]
    #expect(try ws.tidemark(["init", "--config", "c.yaml"], password: "", env: env).status == 0)
    var interrupted = 0
    for (round, delay) in [0.1, 0.5, 1.0, 1.6, 2.4].enumerated() {
      for i in 0..<4 { try Self.random(2_000_000).write(to: URL(fileURLWithPath: ws.sub("src/r\(round)-\(i)"))) }
      let pid = try spawn([
        "/usr/bin/env", "TIDEMARK_STATE_DIR=\(ws.sub("state"))", Tools.tidemark,
        "replicate", "--once", "--config", ws.sub("c.yaml"),
      ])
      Thread.sleep(forTimeInterval: delay)
      kill(pid, SIGINT)
      let code = Self.exitCode(pid, seconds: 30)
      #expect(code == 130 || code == 0, "round \(round): exit \(String(describing: code))")
      if code == 130 { interrupted += 1 }
      for repo in ["dc", "dr1", "dr2"] where FileManager.default.fileExists(atPath: ws.sub(repo + "/config")) {
        #expect(Self.lockFiles(ws.sub(repo)).isEmpty, "round \(round) (\(delay) s): a lock is left in \(repo)")
        let check = try ws.restic(["-r", ws.sub(repo), "check", "--no-lock"], password: "secret")
        #expect(check.status == 0, "round \(round) \(repo): \(check.out) \(check.stderr)")
      }
    }
    #expect(interrupted >= 3, "the interrupts came too late to test anything (\(interrupted) of 5)")
    // And the next cycle finishes what the interrupted ones left.
    let c = try ws.tidemark(["replicate", "--once", "--config", "c.yaml"], password: "", env: env)
    #expect(c.status == 0, "\(c.out) \(c.stderr)")
  }

  @Test func retentionAndPruneFreeSpaceOnBothSides() throws {
    let ws = try Workspace("prune-cycle")
    try FileManager.default.createDirectory(atPath: ws.sub("src"), withIntermediateDirectories: true)
    try "secret\n".write(toFile: ws.sub("pw"), atomically: true, encoding: .utf8)
    try """
    repository: \(ws.sub("dc"))
    password-file: \(ws.sub("pw"))
    sources:
      - path: \(ws.sub("src"))
    targets:
      - name: dr
        repository: \(ws.sub("dr"))
    retention:
      keep-last: 2
    prune:
      schedule: 1s
      max-unused: 0%
    """.write(toFile: ws.sub("c.yaml"), atomically: true, encoding: .utf8)
    let env = ["TIDEMARK_STATE_DIR": ws.sub("state")]
    #expect(try ws.tidemark(["init", "--config", "c.yaml"], password: "", env: env).status == 0)
    for round in 0..<6 {
      // 10 MB of new data per cycle; the previous cycle's file goes.
      try? FileManager.default.removeItem(atPath: ws.sub("src/f\(round - 1)"))
      try Self.random(10_000_000).write(to: URL(fileURLWithPath: ws.sub("src/f\(round)")))
      let c = try ws.tidemark(["replicate", "--once", "--config", "c.yaml"], password: "", env: env)
      #expect(c.status == 0, "round \(round): \(c.out) \(c.stderr)")
      Thread.sleep(forTimeInterval: 1.1)  // the prune schedule (1s) is due again
    }
    for repo in ["dc", "dr"] {
      let size = try ws.size(repo)
      #expect(size <= 35_000_000, "\(repo) holds \(size) bytes after six 10 MB cycles with keep-last 2")
      let check = try ws.restic(["-r", ws.sub(repo), "check", "--read-data"], password: "secret")
      #expect(check.status == 0, "\(repo): \(check.out) \(check.stderr)")
    }
    let state = Self.json(ws.sub("state/state.json"))
    #expect((state["prunedBytesTotal"] as? Int ?? 0) > 30_000_000, "\(state)")
  }

  @Test func badEngineInputIsOneClearLine() throws {
    let ws = try Workspace("engine-bad-input")
    try "secret\n".write(toFile: ws.sub("pw"), atomically: true, encoding: .utf8)
    func attempt(_ extra: String, _ expected: String, file: String = "c.yaml") throws {
      try """
      repository: \(ws.sub("dc"))
      password-file: \(ws.sub("pw"))
      \(extra)
      """.write(toFile: ws.sub(file), atomically: true, encoding: .utf8)
      let r = try ws.tidemark(["replicate", "--once", "--config", file], password: "")
      #expect(r.status == 1, "\(extra): exit \(r.status)")
      #expect(r.stderr.contains(expected), "\(extra): \(r.stderr)")
      #expect(r.stderr.split(separator: "\n").count == 1, "\(extra): one line: \(r.stderr)")
    }
    try attempt("prune:\n  keep-daily: 3", "c.yaml:4: unknown key prune.keep-daily")
    try attempt("prune:\n  schedule: fortnightly", "c.yaml:4: prune.schedule: invalid schedule fortnightly")
    try attempt("prune:\n  max-unused: lots", "prune.max-unused: invalid value lots")
    try attempt("state-dir: relative/dir", "state-dir: expected an absolute path")
    try FileManager.default.createDirectory(atPath: ws.sub("ro"), withIntermediateDirectories: true)
    try "x".write(toFile: ws.sub("ro/file"), atomically: true, encoding: .utf8)
    try attempt("state-dir: \(ws.sub("ro/file/state"))", "state directory \(ws.sub("ro/file/state")) cannot be created")
  }
}

/// Plain TCP clients for the daemon's metrics endpoint (IPv4 or IPv6), blocking, with deadlines.
enum RawHTTP {
  /// A connected socket to `host` (`127.0.0.1` or `::1`) and `port`, or -1.
  static func connect(_ host: String, _ port: Int) -> Int32 {
    let v6 = host.contains(":")
    let fd = socket(v6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return -1 }
    var tv = timeval(tv_sec: 5, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    var ok: Int32 = -1
    if v6 {
      var a = sockaddr_in6()
      a.sin6_family = sa_family_t(AF_INET6)
      a.sin6_port = UInt16(port).bigEndian
      inet_pton(AF_INET6, host, &a.sin6_addr)
      ok = withUnsafePointer(to: &a) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
          Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size))
        }
      }
    } else {
      var a = sockaddr_in()
      a.sin_family = sa_family_t(AF_INET)
      a.sin_port = UInt16(port).bigEndian
      inet_pton(AF_INET, host, &a.sin_addr)
      ok = withUnsafePointer(to: &a) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
          Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
      }
    }
    if ok != 0 {
      close(fd)
      return -1
    }
    return fd
  }

  static func send(_ fd: Int32, _ text: String) {
    let b = Array(text.utf8)
    _ = b.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
  }

  /// GET `path`; the whole answer (until the server closes), or nil.
  static func get(_ host: String, _ port: Int, _ path: String) -> String? {
    let fd = connect(host, port)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    send(fd, "GET \(path) HTTP/1.1\r\nHost: tidemark\r\nConnection: close\r\n\r\n")
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
      let n = recv(fd, &buf, buf.count, 0)
      if n <= 0 { break }
      out += buf[0..<n]
    }
    return out.isEmpty ? nil : String(decoding: out, as: UTF8.self)
  }

  /// Connects, sends half a request line and resets the connection (SO_LINGER 0).
  static func resetMidRequest(_ host: String, _ port: Int) {
    let fd = connect(host, port)
    guard fd >= 0 else { return }
    send(fd, "GET /metr")
    var l = linger(l_onoff: 1, l_linger: 0)
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
    close(fd)
  }
}

extension EngineTests {
  @Test func metricsAnswerOverIPv6WhileClientsStallOrReset() throws {
    let ws = try Workspace("metrics-clients")
    try FileManager.default.createDirectory(atPath: ws.sub("src"), withIntermediateDirectories: true)
    try Self.random(10_000).write(to: URL(fileURLWithPath: ws.sub("src/a")))
    try "secret\n".write(toFile: ws.sub("pw"), atomically: true, encoding: .utf8)
    let port = try unusedPort()
    try """
    repository: \(ws.sub("dc"))
    password-file: \(ws.sub("pw"))
    state-dir: \(ws.sub("state"))
    interval: 1s
    sources:
      - path: \(ws.sub("src"))
    targets:
      - name: dr
        repository: \(ws.sub("dr"))
    metrics:
      listen: "[::1]:\(port)"
    """.write(toFile: ws.sub("c.yaml"), atomically: true, encoding: .utf8)
    #expect(try ws.tidemark(["init", "--config", ws.sub("c.yaml")], password: "").status == 0)
    let pid = try startDaemon(ws, config: ws.sub("c.yaml"))
    defer { stop(pid) }
    var first: String? = nil
    for _ in 0..<200 {
      first = RawHTTP.get("::1", port, "/metrics")
      if first?.contains("tidemark_replication_lag_seconds{target=\"dr\"}") == true { break }  // a cycle ran
      Thread.sleep(forTimeInterval: 0.1)
    }
    #expect(
      first?.hasPrefix("HTTP/1.1 200") == true && first?.contains("tidemark_cycles_total") == true, "\(first ?? "")")
    // Three clients connect and say nothing; a scrape still answers within a second.
    let silent = (0..<3).map { _ in RawHTTP.connect("::1", port) }
    defer { for fd in silent where fd >= 0 { close(fd) } }
    #expect(silent.allSatisfy { $0 >= 0 })
    let start = ContinuousClock.now
    let scrape = RawHTTP.get("::1", port, "/metrics")
    let took = ContinuousClock.now - start
    #expect(scrape?.contains("tidemark_replication_lag_seconds{target=\"dr\"}") == true, "\(scrape ?? "nothing")")
    #expect(took < .seconds(1), "a scrape took \(took) with three silent clients connected")
    // Fifty clients that reset mid-request leave the daemon running and serving.
    for _ in 0..<50 { RawHTTP.resetMidRequest("::1", port) }
    #expect(kill(pid, 0) == 0, "the daemon died")
    #expect(RawHTTP.get("::1", port, "/metrics")?.hasPrefix("HTTP/1.1 200") == true)
    let health = RawHTTP.get("::1", port, "/health")
    #expect(health?.hasPrefix("HTTP/1.1 200") == true && health?.contains("\"ok\":true") == true, "\(health ?? "")")
    kill(pid, SIGTERM)
    #expect(Self.exitCode(pid, seconds: 20) == 0)
  }
}
