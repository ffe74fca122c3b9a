// `tidemark serve` against restic 0.14 over its REST backend, and the append-only guarantees with raw HTTP.
import Foundation
import HummingbirdBcrypt
import Testing
import TidemarkBackends
import TidemarkCore
import TidemarkCrypto

/// A running `tidemark serve` on 127.0.0.1 (its stderr in the workspace's `serve.log`); `stop()` ends it.
final class ServeProcess {
  let pid: pid_t
  let port: Int
  let log: String
  private var stopped = false

  init(_ ws: Workspace, _ args: [String]) throws {
    port = try unusedPort()
    log = ws.sub("serve.log")
    pid = try spawn(
      ["/bin/sh", "-c", "exec \"$0\" \"$@\" 2>>'\(log)'", Tools.tidemark, "serve", "--listen", "127.0.0.1:\(port)"]
        + args)
    for _ in 0..<100 {
      if try Tools.run("/bin/bash", ["-c", "exec 3<>/dev/tcp/127.0.0.1/\(port)"]).status == 0 { return }
      var status: Int32 = 0
      if waitpid(pid, &status, WNOHANG) == pid {
        stopped = true
        throw TidemarkError(
          .general, "tidemark serve exited: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
      }
      usleep(100_000)
    }
    stop()
    throw TidemarkError(.general, "tidemark serve did not listen on \(port)")
  }

  var url: String { "http://127.0.0.1:\(port)" }

  /// SIGTERM, then SIGKILL after 10 s; returns the exit status (-1 when it had to be killed).
  @discardableResult
  func stop() -> Int32 {
    guard !stopped else { return -1 }
    stopped = true
    kill(pid, SIGTERM)
    for _ in 0..<100 {
      var status: Int32 = 0
      if waitpid(pid, &status, WNOHANG) == pid { return (status & 0x7f) == 0 ? (status >> 8) & 0xff : -1 }
      usleep(100_000)
    }
    kill(pid, SIGKILL)
    _ = waitpid(pid, nil, 0)
    return -1
  }

  deinit { stop() }
}

/// One HTTP request with curl: the status code (and the body into `output` when given).
func curl(_ method: String, _ url: String, body: String? = nil, output: String = "/dev/null", user: String? = nil)
  throws -> Int
{
  var args = ["-s", "-o", output, "-w", "%{http_code}", "-X", method, "-H", "Expect:", url]
  if method == "HEAD" { args = ["-s", "-I", "-o", output, "-w", "%{http_code}", url] }
  if let body { args += ["--data-binary", "@" + body, "-H", "Content-Type: application/octet-stream"] }
  if let user { args += ["-u", user] }
  return Int(try Tools.run("/usr/bin/curl", args).out) ?? 0
}

/// A small source tree: text, a directory, a symlink and a few MiB of random data (several packs' worth of
/// chunks for restic).
func makeServeSource(_ ws: Workspace) throws {
  let r = try Tools.sh(
    """
    mkdir -p src/sub/deeper src/empty
    printf 'hello over rest\\n' > src/file.txt
    ln -s file.txt src/link
    head -c 6000000 /dev/urandom > src/sub/random.bin
    seq 1 200000 > src/sub/deeper/numbers.txt
    """, cwd: ws.path)
  if r.status != 0 { throw TidemarkError(.general, r.stderr) }
}

@Suite(.serialized) struct ServeTests {
  @Test func resticBacksUpChecksAndRestoresThroughServe() throws {
    let ws = try Workspace("serve")
    try makeServeSource(ws)
    let server = try ServeProcess(ws, ["--no-auth", "--path", ws.sub("served")])
    defer { server.stop() }
    let repo = "rest:\(server.url)/repo"

    let i = try ws.restic(["-r", repo, "init"])
    #expect(i.status == 0, "\(i.stderr)")
    let b = try ws.restic(["-r", repo, "backup", "src"])
    #expect(b.status == 0, "\(b.stderr)")
    let c = try ws.restic(["-r", repo, "check", "--read-data"])
    #expect(c.status == 0, "\(c.out) \(c.stderr)")
    let r = try ws.restic(["-r", repo, "restore", "latest", "--target", "restored"])
    #expect(r.status == 0, "\(r.stderr)")
    let d = try Tools.run("/usr/bin/diff", ["-r", "--no-dereference", ws.sub("src"), ws.sub("restored/src")])
    #expect(d.status == 0, "\(d.out)")
    // restic's local layout: packs below data/XX/, and the served directory opens as a local repository.
    let packs = try Tools.sh("ls served/repo/data/*/ | grep -c '^[0-9a-f]\\{64\\}$'", cwd: ws.path)
    #expect((Int(packs.out.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0) >= 1)
    let local = try ws.restic(["-r", ws.sub("served/repo"), "check"])
    #expect(local.status == 0, "\(local.stderr)")
    let snaps = try ws.tidemark(["-r", ws.sub("served/repo"), "snapshots", "--json"])
    #expect(snaps.status == 0 && snaps.out.contains("\"paths\""), "\(snaps.stderr)")
    // No temporary file is left anywhere.
    let temps = try Tools.sh("find served -name '.*' | wc -l", cwd: ws.path)
    #expect(temps.out.trimmingCharacters(in: .whitespacesAndNewlines) == "0")
    // Both list versions and ranges, as the protocol says.
    let v1 = ws.sub("v1.json")
    #expect(try curl("GET", "\(server.url)/repo/snapshots/", output: v1) == 200)
    let names = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: v1))) as? [String]
    #expect(names?.count == 1)
    let v2 = try Tools.run(
      "/usr/bin/curl", ["-s", "-i", "-H", "Accept: application/vnd.x.restic.rest.v2", "\(server.url)/repo/keys/"])
    #expect(v2.out.lowercased().contains("content-type: application/vnd.x.restic.rest.v2"))
    #expect(v2.out.contains("\"size\":"))
    if let snap = names?.first {
      let range = try Tools.run(
        "/usr/bin/curl",
        ["-s", "-o", ws.sub("part"), "-w", "%{http_code}", "-r", "2-9", "\(server.url)/repo/snapshots/\(snap)"])
      #expect(range.out == "206")
      let whole = try Data(contentsOf: URL(fileURLWithPath: ws.sub("served/repo/snapshots/\(snap)")))
      #expect(try Data(contentsOf: URL(fileURLWithPath: ws.sub("part"))) == whole[2...9])
    }
    #expect(server.stop() == 0)
  }

  @Test func htpasswdUsersOnly() throws {
    let ws = try Workspace("serve-auth")
    try makeServeSource(ws)
    let line = "alice:" + Bcrypt.hash("s3cret", cost: 5) + "\n"
    try line.write(toFile: ws.sub("htpasswd"), atomically: true, encoding: .utf8)

    // Without --no-auth, a password file is required: one clear line.
    let none = try ws.tidemark(["serve", "--path", ws.sub("served"), "--listen", "127.0.0.1:1"])
    #expect(none.status == 1)
    #expect(none.stderr.contains("--no-auth") && none.stderr.split(separator: "\n").count == 1, "\(none.stderr)")

    let server = try ServeProcess(
      ws, ["--path", ws.sub("served"), "--htpasswd-file", ws.sub("htpasswd"), "--private-repos"])
    defer { server.stop() }
    let good = "rest:http://alice:s3cret@127.0.0.1:\(server.port)/alice/laptop"
    #expect(try ws.restic(["-r", good, "init"]).status == 0)
    let b = try ws.restic(["-r", good, "backup", "src"])
    #expect(b.status == 0, "\(b.stderr)")
    let bad = try ws.restic(["-r", "rest:http://alice:wrong@127.0.0.1:\(server.port)/alice/laptop", "snapshots"])
    #expect(bad.status != 0)
    #expect(bad.stderr.contains("401") || bad.stderr.lowercased().contains("unauthorized"), "\(bad.stderr)")
    // No credentials at all, and another user's directory.
    #expect(try curl("GET", "\(server.url)/alice/laptop/config") == 401)
    #expect(try curl("GET", "\(server.url)/bob/config", user: "alice:s3cret") == 401)
    #expect(try curl("GET", "\(server.url)/alice/laptop/config", user: "alice:s3cret") == 200)
  }

  @Test func appendOnlyRefusesToDestroy() throws {
    let ws = try Workspace("serve-append")
    try makeServeSource(ws)
    let server = try ServeProcess(ws, ["--no-auth", "--append-only", "--path", ws.sub("served")])
    defer { server.stop() }
    let repo = "rest:\(server.url)/repo"
    // restic works as usual: it creates files and removes its own locks.
    #expect(try ws.restic(["-r", repo, "init"]).status == 0)
    let b = try ws.restic(["-r", repo, "backup", "src"])
    #expect(b.status == 0, "\(b.stderr)")
    #expect(try Tools.sh("ls served/repo/locks | wc -l", cwd: ws.path).out.hasPrefix("0"))

    func first(_ dir: String) throws -> String {
      try Tools.sh("ls \(dir) | head -1", cwd: ws.sub("served/repo")).out.trimmingCharacters(
        in: .whitespacesAndNewlines)
    }
    let snapshot = try first("snapshots")
    let index = try first("index")
    let key = try first("keys")
    let pack = try Tools.sh("find data -type f | head -1", cwd: ws.sub("served/repo")).out
      .trimmingCharacters(in: .whitespacesAndNewlines)
    #expect(pack.hasPrefix("data/") && pack.count == 5 + 3 + 64, "\(pack)")
    let before = try Tools.sh("find served -type f | sort | xargs sha256sum", cwd: ws.path).out

    // Over HTTP a pack is data/NAME (on disk data/XX/NAME).
    for path in ["data/" + pack.suffix(64), "index/\(index)", "snapshots/\(snapshot)", "keys/\(key)", "config"] {
      #expect(try curl("DELETE", "\(server.url)/repo/\(path)") == 403, "\(path)")
    }
    #expect(try curl("DELETE", "\(server.url)/repo/") == 403)
    // Overwriting a snapshot: refused, with the right content or another.
    try Data("forged".utf8).write(to: URL(fileURLWithPath: ws.sub("forged")))
    #expect(try curl("POST", "\(server.url)/repo/snapshots/\(snapshot)", body: ws.sub("forged")) == 403)
    try FileManager.default.copyItem(atPath: ws.sub("served/repo/snapshots/\(snapshot)"), toPath: ws.sub("same"))
    #expect(try curl("POST", "\(server.url)/repo/snapshots/\(snapshot)", body: ws.sub("same")) == 403)
    #expect(try curl("POST", "\(server.url)/repo/config", body: ws.sub("forged")) == 403)
    let after = try Tools.sh("find served -type f | sort | xargs sha256sum", cwd: ws.path).out
    #expect(before == after)

    // A body that does not hash to its name: 400, and nothing is left (no temporary file either).
    let wrongName = String(repeating: "ab", count: 32)
    #expect(try curl("POST", "\(server.url)/repo/snapshots/\(wrongName)", body: ws.sub("forged")) == 400)
    #expect(try curl("POST", "\(server.url)/repo/data/\(wrongName)", body: ws.sub("forged")) == 400)
    let left = try Tools.sh("find served -newer forged -type f | wc -l", cwd: ws.path)
    #expect(left.out.trimmingCharacters(in: .whitespacesAndNewlines) == "0", "\(left.out)")

    // Locks may come and go.
    let lockName = toHexString(SHA256.hash(Array("forged".utf8)))
    #expect(try curl("POST", "\(server.url)/repo/locks/\(lockName)", body: ws.sub("forged")) == 200)
    #expect(FileManager.default.fileExists(atPath: ws.sub("served/repo/locks/\(lockName)")))
    #expect(try curl("DELETE", "\(server.url)/repo/locks/\(lockName)") == 200)
    #expect(!FileManager.default.fileExists(atPath: ws.sub("served/repo/locks/\(lockName)")))

    // restic still finds everything whole.
    let c = try ws.restic(["-r", repo, "check", "--read-data"])
    #expect(c.status == 0, "\(c.out) \(c.stderr)")
  }

  @Test func maxSizeRefusesLargeUploads() throws {
    let ws = try Workspace("serve-quota")
    // What an upload interrupted by a crash left: removed at start, so it counts against nothing.
    let stale = ws.sub("served/repo/data/ab/.ab12.tmp-42")
    try FileManager.default.createDirectory(atPath: ws.sub("served/repo/data/ab"), withIntermediateDirectories: true)
    try Data(repeating: 1, count: 900).write(to: URL(fileURLWithPath: stale))
    let server = try ServeProcess(ws, ["--no-auth", "--max-size", "1000", "--path", ws.sub("served")])
    #expect(!FileManager.default.fileExists(atPath: stale))
    defer { server.stop() }
    #expect(try curl("POST", "\(server.url)/repo/?create=true") == 200)
    let small = Array(repeating: UInt8(ascii: "a"), count: 600)
    try Data(small).write(to: URL(fileURLWithPath: ws.sub("small")))
    let name = toHexString(SHA256.hash(small))
    #expect(try curl("POST", "\(server.url)/repo/data/\(name)", body: ws.sub("small")) == 200)
    let other = Array(repeating: UInt8(ascii: "b"), count: 600)
    try Data(other).write(to: URL(fileURLWithPath: ws.sub("other")))
    let otherName = toHexString(SHA256.hash(other))
    #expect(try curl("POST", "\(server.url)/repo/data/\(otherName)", body: ws.sub("other")) == 413)
    #expect(!FileManager.default.fileExists(atPath: ws.sub("served/repo/data/\(otherName.prefix(2))/\(otherName)")))
    // Deleting frees the room.
    #expect(try curl("DELETE", "\(server.url)/repo/data/\(name)") == 200)
    #expect(try curl("POST", "\(server.url)/repo/data/\(otherName)", body: ws.sub("other")) == 200)
  }

  @Test func uploadsOntoExistingNamesAndAbortedUploads() throws {
    let ws = try Workspace("serve-overwrite")
    let server = try ServeProcess(ws, ["--no-auth", "--path", ws.sub("served")])
    defer { server.stop() }
    #expect(try curl("POST", "\(server.url)/repo/?create=true") == 200)
    let data = (0..<3_000_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
    try Data(data).write(to: URL(fileURLWithPath: ws.sub("pack")))
    let name = toHexString(SHA256.hash(data))
    let stored = ws.sub("served/repo/data/\(name.prefix(2))/\(name)")
    // The same verified content again is accepted (it can only repair a damaged copy).
    #expect(try curl("POST", "\(server.url)/repo/data/\(name)", body: ws.sub("pack")) == 200)
    try flipByte(stored, at: 1000)
    #expect(try curl("POST", "\(server.url)/repo/data/\(name)", body: ws.sub("pack")) == 200)
    #expect(try Data(contentsOf: URL(fileURLWithPath: stored)) == Data(data))
    // config: the same bytes again are fine, other bytes are refused until it is deleted.
    try Data("one".utf8).write(to: URL(fileURLWithPath: ws.sub("c1")))
    try Data("two".utf8).write(to: URL(fileURLWithPath: ws.sub("c2")))
    #expect(try curl("POST", "\(server.url)/repo/config", body: ws.sub("c1")) == 200)
    #expect(try curl("POST", "\(server.url)/repo/config", body: ws.sub("c1")) == 200)
    #expect(try curl("POST", "\(server.url)/repo/config", body: ws.sub("c2")) == 403)
    #expect(try String(contentsOfFile: ws.sub("served/repo/config"), encoding: .utf8) == "one")
    #expect(try curl("DELETE", "\(server.url)/repo/config") == 200)
    #expect(try curl("DELETE", "\(server.url)/repo/config") == 404)
    #expect(try curl("POST", "\(server.url)/repo/config", body: ws.sub("c2")) == 200)
    // A client that goes away in the middle of an upload leaves nothing behind.
    let other = String(repeating: "cd", count: 32)
    let abort = try Tools.run(
      "/bin/bash",
      [
        "-ec",
        """
        exec 3<>/dev/tcp/127.0.0.1/\(server.port)
        printf 'POST /repo/data/\(other) HTTP/1.1\\r\\nHost: t\\r\\nContent-Length: 50000000\\r\\n\\r\\n' >&3
        head -c 5000000 /dev/zero >&3
        exec 3>&-
        """,
      ])
    #expect(abort.status == 0, "\(abort.stderr)")
    var leftovers = "?"
    for _ in 0..<50 {
      leftovers = try Tools.sh("find served -name '.*' -o -name '\(other)'", cwd: ws.path).out
      if leftovers.isEmpty { break }
      usleep(100_000)
    }
    #expect(leftovers.isEmpty, "\(leftovers)")
    // The server still answers.
    #expect(try curl("GET", "\(server.url)/repo/config") == 200)
  }

  @Test func restBackendKeepsTheContract() async throws {
    let ws = try Workspace("serve-contract")
    let server = try ServeProcess(ws, ["--no-auth", "--path", ws.sub("served")])
    defer { server.stop() }
    try await checkBackendContract(
      try RESTBackend(
        base: "\(server.url)/repo", server: "127.0.0.1:\(server.port)", user: nil, password: nil, connections: 3,
        location: "rest-test"))
    // What the server stored is restic's local layout.
    #expect(FileManager.default.fileExists(atPath: ws.sub("served/repo/config")))
    #expect(FileManager.default.fileExists(atPath: ws.sub("served/repo/tidemark")))
  }

  @Test func tidemarkBacksUpAndRestoresOverRest() throws {
    let ws = try Workspace("serve-tidemark")
    try makeServeSource(ws)
    let line = "bob:" + Bcrypt.hash("pw:with@odd/chars", cost: 5) + "\n"
    try line.write(toFile: ws.sub("htpasswd"), atomically: true, encoding: .utf8)
    let server = try ServeProcess(ws, ["--path", ws.sub("served"), "--htpasswd-file", ws.sub("htpasswd")])
    defer { server.stop() }
    let repo = "rest:http://127.0.0.1:\(server.port)/site-a"
    let creds = ["TIDEMARK_REST_USERNAME": "bob", "TIDEMARK_REST_PASSWORD": "pw:with@odd/chars"]

    let i = try ws.tidemark(["-r", repo, "init"], env: creds)
    #expect(i.status == 0, "\(i.stderr)")
    let b = try ws.tidemark(["-r", repo, "backup", "src"], env: creds)
    #expect(b.status == 0, "\(b.stderr)")
    let r = try ws.tidemark(
      ["-r", repo, "-o", "rest.connections=2", "restore", "latest", "--target", "restored"],
      env: ["RESTIC_REST_USERNAME": "bob", "RESTIC_REST_PASSWORD": "pw:with@odd/chars"])
    #expect(r.status == 0, "\(r.stderr)")
    let d = try Tools.run("/usr/bin/diff", ["-r", "--no-dereference", ws.sub("src"), ws.sub("restored/src")])
    #expect(d.status == 0, "\(d.out)")
    // restic reads what tidemark wrote, over the same server (credentials in the URL).
    let c = try ws.restic(
      ["-r", "rest:http://bob:pw%3Awith%40odd%2Fchars@127.0.0.1:\(server.port)/site-a", "check", "--read-data"])
    #expect(c.status == 0, "\(c.out) \(c.stderr)")

    // Refused credentials, a missing repository, a server that is not there: one clear line each.
    let wrong = try ws.tidemark(
      ["-r", "rest:http://bob:nope@127.0.0.1:\(server.port)/site-a", "snapshots"])
    #expect(wrong.status == 1)
    #expect(wrong.stderr.contains("refused the credentials"), "\(wrong.stderr)")
    #expect(!wrong.stderr.contains("nope"), "\(wrong.stderr)")
    let missing = try ws.tidemark(["-r", "rest:http://127.0.0.1:\(server.port)/nothing-here", "snapshots"], env: creds)
    #expect(missing.status == 10, "\(missing.stderr)")
    let down = try unusedPort()
    let refused = try ws.tidemark(["-r", "rest:http://127.0.0.1:\(down)/x", "snapshots"], env: creds)
    #expect(refused.status == 1)
    #expect(
      refused.stderr.contains("127.0.0.1:\(down)") && refused.stderr.contains("connection refused"), "\(refused.stderr)"
    )
    #expect(refused.stderr.split(separator: "\n").count == 1, "\(refused.stderr)")
  }
}
