// The Backend contract, checked on every backend; SFTP against a real sshd on 127.0.0.1.
import Foundation
import Testing
import TidemarkBackends
import TidemarkCore
import TidemarkSSH
import TidemarkSystem

/// A throwaway sshd on 127.0.0.1 with its own host key, user key and known_hosts; stopped when dropped.
final class SSHServer {
  let dir: String
  let port: Int
  var userKey: String { dir + "/userkey" }
  var knownHosts: String { dir + "/known_hosts" }

  /// `name`: the directory under the workspace for its keys, config and log (two servers need two).
  init(_ ws: Workspace, name: String = "sshd") throws {
    dir = ws.sub(name)
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    try FileManager.default.createDirectory(atPath: "/run/sshd", withIntermediateDirectories: true)
    let keys = try Tools.sh(
      """
      ssh-keygen -q -t ed25519 -N '' -f hostkey && ssh-keygen -q -t ed25519 -N '' -f userkey
      cp userkey.pub authorized_keys
      """, cwd: dir)
    guard keys.status == 0 else { throw TidemarkError(.general, "ssh-keygen failed: \(keys.stderr)") }
    var started: Int? = nil
    for _ in 0..<20 where started == nil {
      let port = try unusedPort()
      let config = """
        ListenAddress 127.0.0.1
        Port \(port)
        HostKey \(dir)/hostkey
        AuthorizedKeysFile \(dir)/authorized_keys
        UsePAM no
        StrictModes no
        PermitRootLogin prohibit-password
        PasswordAuthentication no
        Subsystem sftp internal-sftp
        PidFile \(dir)/sshd.pid
        """
      try config.write(toFile: dir + "/sshd_config", atomically: true, encoding: .utf8)
      // Not through Foundation's Process: sshd closes every inherited descriptor at start, which that
      // class takes for the child's exit; its blocking waitpid then stalls every later Process.
      let child = try spawn(["/usr/sbin/sshd", "-D", "-f", dir + "/sshd_config", "-E", dir + "/sshd.log"])
      // Listening once a TCP connection succeeds.
      for _ in 0..<50 {
        if try Tools.run("/bin/bash", ["-c", "exec 3<>/dev/tcp/127.0.0.1/\(port)"]).status == 0 {
          started = port
          break
        }
        if waitpid(child, nil, WNOHANG) == child { break }
        usleep(50_000)
      }
      if started != nil {
        pid = child
      } else {
        kill(child, SIGTERM)
        _ = waitpid(child, nil, 0)
      }
    }
    guard let port = started else { throw TidemarkError(.general, "sshd did not start: see \(dir)/sshd.log") }
    self.port = port
    let hostPub = try String(contentsOfFile: dir + "/hostkey.pub", encoding: .utf8)
    try "[127.0.0.1]:\(port) \(hostPub)".write(toFile: knownHosts, atomically: true, encoding: .utf8)
  }

  var pid: Int32 = 0

  var endpoint: SSHEndpoint {
    SSHEndpoint(
      host: "127.0.0.1", port: port, user: "root", identities: [userKey], knownHosts: [knownHosts], useAgent: false)
  }

  /// `-o` options for the tidemark CLI.
  var options: [String] {
    ["-o", "sftp.identity=\(userKey)", "-o", "sftp.known-hosts=\(knownHosts)", "-o", "sftp.agent=no"]
  }

  /// restic's way in: its own ssh command line.
  var resticCommand: String {
    "ssh -p \(port) -i \(userKey) -o UserKnownHostsFile=\(knownHosts) -o StrictHostKeyChecking=yes -o BatchMode=yes root@127.0.0.1 -s sftp"
  }

  /// Drops every connection (the listener and its per-connection children) and stops listening.
  func stop() {
    guard pid > 0 else { return }
    _ = try? Tools.run("/usr/bin/pkill", ["-KILL", "-P", String(pid)])
    kill(pid, SIGKILL)
    _ = waitpid(pid, nil, 0)
    pid = 0
  }

  /// Listens again on the same port with the same keys.
  func start() throws {
    pid = try spawn(["/usr/sbin/sshd", "-D", "-f", dir + "/sshd_config", "-E", dir + "/sshd.log"])
    for _ in 0..<100 {
      if try Tools.run("/bin/bash", ["-c", "exec 3<>/dev/tcp/127.0.0.1/\(port)"]).status == 0 { return }
      usleep(50_000)
    }
    throw TidemarkError(.general, "sshd did not come back")
  }

  deinit { stop() }
}

/// posix_spawn with stdin from /dev/null and stdout/stderr to /dev/null; returns the pid.
func spawn(_ argv: [String]) throws -> pid_t {
  var actions = posix_spawn_file_actions_t()
  posix_spawn_file_actions_init(&actions)
  defer { posix_spawn_file_actions_destroy(&actions) }
  for fd: Int32 in [0, 1, 2] {
    posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", fd == 0 ? O_RDONLY : O_WRONLY, 0)
  }
  var cargs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
  defer { for a in cargs { free(a) } }
  var pid: pid_t = 0
  let rc = posix_spawn(&pid, argv[0], &actions, nil, &cargs, environ)
  guard rc == 0 else { throw TidemarkError(.general, "cannot start \(argv[0]): \(String(cString: strerror(rc)))") }
  return pid
}

/// The Backend contract (Sources/TidemarkCore/Backend.swift), on any backend with an empty repository.
func checkBackendContract(_ b: any Backend) async throws {
  try await b.create()
  try await b.create()  // idempotent
  let data = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
  let id = RawID.hash(data).hex
  let h = Handle(.pack, id)
  #expect(try await b.exists(h) == false)
  await #expect(throws: BackendNotFound.self) { _ = try await b.load(h) }
  await #expect(throws: BackendNotFound.self) { _ = try await b.size(h) }
  await #expect(throws: BackendNotFound.self) { try await b.remove(h) }

  try await b.save(h, data: data)
  #expect(try await b.load(h) == data)
  #expect(try await b.size(h) == data.count)
  #expect(try await b.load(h, offset: 1000, length: 5000) == Array(data[1000..<6000]))
  #expect(try await b.load(h, offset: 299_000, length: 0) == Array(data[299_000...]))
  await #expect(throws: (any Error).self) { _ = try await b.load(h, offset: 299_000, length: 5000) }
  // loadBytes: the same bytes as load, however the backend holds them.
  for (offset, length) in [(0, 0), (1000, 5000), (4097, 200_000), (299_000, 0)] {
    let bytes = try await b.loadBytes(h, offset: offset, length: length)
    let got = bytes.withUnsafeBytes { Array($0) }
    #expect(got == Array(data[offset..<(length == 0 ? data.count : offset + length)]), "loadBytes \(offset)+\(length)")
  }
  await #expect(throws: (any Error).self) { _ = try await b.loadBytes(h, offset: 299_000, length: 5000) }
  // Saving the same name again (same content: names are content hashes) is fine.
  try await b.save(h, data: data)
  #expect(try await b.list(.pack).map(\.name) == [id])
  #expect(try await b.list(.pack).first?.size == data.count)

  // Many saves at once, then listing sees exactly them (no temp files).
  let blobs = (0..<24).map { i in (0..<(1000 + i * 777)).map { UInt8(truncatingIfNeeded: $0 ^ i) } }
  try await withThrowingTaskGroup(of: Void.self) { g in
    for d in blobs { g.addTask { try await b.save(Handle(.index, RawID.hash(d).hex), data: d) } }
    try await g.waitForAll()
  }
  let listed = try await b.list(.index)
  #expect(Set(listed.map(\.name)) == Set(blobs.map { RawID.hash($0).hex }))
  for f in listed {
    let d = try await b.load(Handle(.index, f.name))
    #expect(RawID.hash(d).hex == f.name && d.count == f.size)
  }
  try await b.save(.config, data: Array("cfg".utf8))
  #expect(try await b.load(.config) == Array("cfg".utf8))

  // tidemark's own records (`tidemark/`): not made by create, listed empty, and saved into a fresh directory.
  #expect(try await b.list(.site).isEmpty)
  let record = Array("site record".utf8)
  try await b.save(Handle(.site, RawID.hash(record).hex), data: record)
  #expect(try await b.list(.site).map(\.name) == [RawID.hash(record).hex])
  #expect(try await b.load(Handle(.site, RawID.hash(record).hex)) == record)

  try await b.remove(h)
  #expect(try await b.exists(h) == false)
  #expect(try await b.list(.pack).isEmpty)
  #expect(try await b.list(.snapshot).isEmpty)

  // Where the backend takes packs piece by piece: nothing is visible before the commit, then exactly the bytes
  // appended, under the pack's name; committing a pack that is there already keeps it; a discarded one leaves
  // nothing.
  if let upload = b.makePackUpload() {
    for piece in [data[0..<1], data[1..<100_000], data[100_000...]] {
      try Array(piece).withUnsafeBytes { try upload.append($0) }
    }
    #expect(try await b.list(.pack).isEmpty)
    try await upload.commit(as: h)
    #expect(try await b.load(h) == data)
    #expect(try await b.list(.pack).map(\.name) == [id])
    let again = try #require(b.makePackUpload())
    try data.withUnsafeBytes { try again.append($0) }
    try await again.commit(as: h)
    #expect(try await b.load(h) == data)
    let dropped = try #require(b.makePackUpload())
    try Array("never stored".utf8).withUnsafeBytes { try dropped.append($0) }
    await dropped.discard()
    #expect(try await b.list(.pack).map(\.name) == [id])
    try await b.remove(h)
    #expect(try await b.list(.pack).isEmpty)
  }
}

@Suite(.serialized) struct BackendTests {
  @Test func localBackendKeepsTheContract() async throws {
    let ws = try Workspace("contract-local")
    try await checkBackendContract(LocalBackend(path: BytePath(ws.sub("repo"))))
  }

  /// A cold range of a local pack is read straight from the disk into memory the loaded bytes own (the mount's
  /// windows): the same bytes as `load`, at unaligned offsets, and after the page cache has the file again.
  @Test func localLoadBytesOfAColdPackMatchesLoad() async throws {
    let ws = try Workspace("load-bytes-local")
    let b = LocalBackend(path: BytePath(ws.sub("repo")))
    try await b.create()
    let data = (0..<(5 << 20)).map { UInt8(truncatingIfNeeded: ($0 &* 2_654_435_761) >> 11) }
    let h = Handle(.pack, RawID.hash(data).hex)
    try await b.save(h, data: data)
    let file = BytePath(ws.sub("repo/data/\(h.name.prefix(2))/\(h.name)"))
    for (offset, length) in [(3, 4 << 20), (4096, 300_000), (5_000_000, 0)] {
      let fd = try Sys.open(file, O_RDONLY)
      #expect(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0)
      Sys.close(fd)
      let cold = try await b.loadBytes(h, offset: offset, length: length).withUnsafeBytes { Array($0) }
      let warm = try await b.load(h, offset: offset, length: length)
      #expect(cold == warm && warm == Array(data[offset..<(length == 0 ? data.count : offset + length)]))
    }
  }

  /// The local backend writes a pack piece by piece into an unnamed file and names it once durable: read-only
  /// like every repository file, in data/XX (made if an older tool left it out), and nothing else in data/
  /// before, after, or after a discard.
  @Test func localPackUploadLeavesOnlyTheNamedPack() async throws {
    let ws = try Workspace("pack-upload-local")
    let b = LocalBackend(path: BytePath(ws.sub("repo")))
    try await b.create()
    let data = (0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ 17) }
    let id = RawID.hash(data).hex
    try FileManager.default.removeItem(atPath: ws.sub("repo/data/\(id.prefix(2))"))
    func entries() throws -> [String] {
      try FileManager.default.subpathsOfDirectory(atPath: ws.sub("repo/data")).filter { $0.count > 2 }.sorted()
    }
    let upload = try #require(b.makePackUpload())
    for k in stride(from: 0, to: data.count, by: 1 << 20) {
      try Array(data[k..<(k + (1 << 20))]).withUnsafeBytes { try upload.append($0) }
    }
    #expect(try entries().isEmpty)
    try await upload.commit(as: Handle(.pack, id))
    #expect(try entries() == ["\(id.prefix(2))/\(id)"])
    let attrs = try FileManager.default.attributesOfItem(atPath: ws.sub("repo/data/\(id.prefix(2))/\(id)"))
    #expect((attrs[.posixPermissions] as? Int) == 0o400)
    #expect(try Data(contentsOf: URL(fileURLWithPath: ws.sub("repo/data/\(id.prefix(2))/\(id)"))) == Data(data))
    let dropped = try #require(b.makePackUpload())
    try data.withUnsafeBytes { try dropped.append($0) }
    await dropped.discard()
    #expect(try entries() == ["\(id.prefix(2))/\(id)"])
  }

  @Test func sftpBackendKeepsTheContract() async throws {
    let ws = try Workspace("contract-sftp")
    let server = try SSHServer(ws)
    try await checkBackendContract(
      SFTPBackend(endpoint: server.endpoint, path: ws.sub("repo"), connections: 3, location: "sftp-test"))
    // A repository relative to the user's home directory works too.
    let rel = "tidemark-contract-\(UUID().uuidString.prefix(8))"
    defer { _ = try? Tools.run("/bin/rm", ["-rf", NSHomeDirectory() + "/" + rel]) }
    let b = SFTPBackend(endpoint: server.endpoint, path: rel, location: "sftp-rel")
    try await b.create()
    try await b.save(.config, data: [1, 2, 3])
    #expect(FileManager.default.fileExists(atPath: NSHomeDirectory() + "/" + rel + "/config"))
  }

  @Test func sftpRepositoryWorksWithResticAndTidemark() throws {
    let ws = try Workspace("sftp")
    let server = try SSHServer(ws)
    try makeAwkwardTree(in: ws.path, nonUTF8LinkTarget: false)
    let repo = "sftp://root@127.0.0.1:\(server.port)/" + ws.sub("repo")
    #expect(try ws.tidemark(["init", "-r", repo] + server.options).status == 0)
    let b = try ws.tidemark(["-r", repo, "backup", "src"] + server.options)
    #expect(b.status == 0, "\(b.stderr)")

    // restic reads it over its own SFTP: check --read-data and a restore.
    let resticRepo = "sftp:root@127.0.0.1:" + ws.sub("repo")
    let check = try ws.restic(["-r", resticRepo, "-o", "sftp.command=\(server.resticCommand)", "check", "--read-data"])
    #expect(check.status == 0, "\(check.out) \(check.stderr)")
    let rr = try ws.restic([
      "-r", resticRepo, "-o", "sftp.command=\(server.resticCommand)", "restore", "latest", "--target", "by-restic",
    ])
    #expect(rr.status == 0, "\(rr.stderr)")
    #expect(
      try describeTree(ws.sub("by-restic/src"))["sub/random.bin"] == (try describeTree(ws.sub("src")))["sub/random.bin"]
    )

    // restic writes over SFTP; tidemark restores it (the short sftp:user@host:/path form).
    let rb = try ws.restic([
      "-r", resticRepo, "-o", "sftp.command=\(server.resticCommand)", "backup", "src", "--tag", "r",
    ])
    #expect(rb.status == 0, "\(rb.stderr)")
    let tr = try ws.tidemark(
      ["-r", resticRepo, "restore", "latest", "--target", "by-tidemark"] + server.options + [
        "-o", "sftp.port=\(server.port)",
      ])
    #expect(tr.status == 0, "\(tr.stderr)")
    let d = differences(try describeTree(ws.sub("src")), try describeTree(ws.sub("by-tidemark/src")))
    #expect(d.isEmpty, "\(d.prefix(5))")
  }

  @Test func sftpProblemsAreOneClearLine() throws {
    let ws = try Workspace("sftp-errors")
    let server = try SSHServer(ws)
    let repo = "sftp://root@127.0.0.1:\(server.port)/" + ws.sub("repo")
    #expect(try ws.tidemark(["init", "-r", repo] + server.options).status == 0)
    _ = try Tools.sh("ssh-keygen -q -t ed25519 -N '' -f otherkey && : > empty_known_hosts", cwd: ws.path)

    // Unknown host key: refused, with the fingerprint and how to trust it.
    let unknown = try ws.tidemark([
      "-r", repo, "snapshots", "-o", "sftp.identity=\(server.userKey)",
      "-o", "sftp.known-hosts=\(ws.sub("empty_known_hosts"))",
    ])
    let fp = try Tools.run("/usr/bin/ssh-keygen", ["-l", "-f", server.dir + "/hostkey.pub"]).out
      .split(separator: " ")[1]
    #expect(unknown.status == 1 && unknown.stderr.contains("not known") && unknown.stderr.contains(String(fp)))
    #expect(unknown.stderr.contains("ssh-keyscan"), "\(unknown.stderr)")
    #expect(unknown.stderr.split(separator: "\n").count == 1)

    // A changed host key.
    _ = try Tools.sh("echo \"[127.0.0.1]:\(server.port) $(cat otherkey.pub)\" > wrong_known_hosts", cwd: ws.path)
    let changed = try ws.tidemark([
      "-r", repo, "snapshots", "-o", "sftp.identity=\(server.userKey)",
      "-o", "sftp.known-hosts=\(ws.sub("wrong_known_hosts"))",
    ])
    #expect(changed.status == 1 && changed.stderr.contains("CHANGED"), "\(changed.stderr)")

    // A key the server does not accept.
    let denied = try ws.tidemark([
      "-r", repo, "snapshots", "-o", "sftp.identity=\(ws.sub("otherkey"))",
      "-o", "sftp.known-hosts=\(server.knownHosts)", "-o", "sftp.agent=no",
    ])
    #expect(denied.status == 1 && denied.stderr.contains("refused every key"), "\(denied.stderr)")

    // Nobody listening.
    let closed = try ws.tidemark(["-r", "sftp://root@127.0.0.1:1//x", "snapshots"] + server.options)
    #expect(closed.status == 1 && closed.stderr.contains("cannot connect"), "\(closed.stderr)")

    // No repository there: restic's exit code 10.
    let missing = try ws.tidemark(["-r", repo + "-not-there", "snapshots"] + server.options)
    #expect(missing.status == 10, "\(missing.stderr)")
  }

  @Test func backupWaitsOutAnSSHServerRestart() throws {
    let ws = try Workspace("sftp-outage")
    let server = try SSHServer(ws)
    _ = try Tools.sh(
      "mkdir -p data && for i in $(seq 1 48); do head -c 5000000 /dev/urandom > data/f$i; done", cwd: ws.path)
    let repo = "sftp://root@127.0.0.1:\(server.port)/" + ws.sub("repo")
    #expect(try ws.tidemark(["init", "-r", repo] + server.options).status == 0)

    let p = Process()
    p.executableURL = URL(fileURLWithPath: Tools.tidemark)
    p.arguments = ["-r", repo, "backup", "data"] + server.options
    p.environment = ["TIDEMARK_PASSWORD": "test-pw", "PATH": "/usr/bin:/bin", "HOME": NSHomeDirectory()]
    p.currentDirectoryURL = URL(fileURLWithPath: ws.path)
    let errFile = ws.sub("backup.err")
    FileManager.default.createFile(atPath: errFile, contents: nil)
    p.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errFile))
    p.standardOutput = FileHandle.nullDevice
    try p.run()
    // Cut every connection once a few packs are stored, and come back 2 s later.
    func packs() -> Int {
      (try? Tools.run("/usr/bin/find", [ws.sub("repo/data"), "-type", "f", "-size", "+1M"]).out)?
        .split(separator: "\n").count ?? 0
    }
    var waited = 0
    while packs() < 3 && p.isRunning && waited < 600 {
      usleep(20_000)
      waited += 1
    }
    let cut = p.isRunning
    server.stop()
    usleep(2_000_000)
    try server.start()
    p.waitUntilExit()
    let err = (try? String(contentsOfFile: errFile, encoding: .utf8)) ?? ""
    #expect(p.terminationStatus == 0, "\(err)")
    // Whether the cut hit a transfer (then RetryBackend says "retrying") or idle pooled sessions (then
    // the pool reconnects silently), the backup must finish and the repository be whole.
    _ = cut

    // The repository is whole: restic checks every byte, and the snapshot restores.
    let check = try ws.restic([
      "-r", "sftp:root@127.0.0.1:" + ws.sub("repo"), "-o", "sftp.command=\(server.resticCommand)", "check",
      "--read-data",
    ])
    #expect(check.status == 0, "\(check.out) \(check.stderr)")
    let r = try ws.tidemark(["-r", repo, "restore", "latest", "--target", "back"] + server.options)
    #expect(r.status == 0, "\(r.stderr)")
    #expect(try Tools.run("/usr/bin/diff", ["-r", ws.sub("data"), ws.sub("back/data")]).status == 0)
  }

  @Test func bandwidthLimitsHoldTransfersToTheirRate() throws {
    let ws = try Workspace("limits")
    _ = try Tools.sh("mkdir -p d && head -c 6000000 /dev/urandom > d/x", cwd: ws.path)
    #expect(try ws.tidemark(["init", "-r", "repo"]).status == 0)
    // 6 MB at 2 MiB/s cannot take less than ~2.6 s (a quarter second of burst allowed).
    var t0 = Date()
    #expect(try ws.tidemark(["-r", "repo", "backup", "d", "--limit-upload", "2048"]).status == 0)
    #expect(Date().timeIntervalSince(t0) > 2.3)
    // Downloads, with restic's environment variable: 6 MB at 4 MiB/s, at least ~1.2 s.
    t0 = Date()
    let r = try ws.tidemark(
      ["-r", "repo", "restore", "latest", "--target", "out"], env: ["RESTIC_LIMIT_DOWNLOAD": "4096"])
    #expect(r.status == 0, "\(r.stderr)")
    #expect(Date().timeIntervalSince(t0) > 1.0)
    #expect(try ws.tidemark(["-r", "repo", "snapshots", "--limit-upload", "x"]).status == 1)
  }
}
