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
  /// https with --tls.
  let scheme: String
  private var stopped = false

  init(_ ws: Workspace, _ args: [String]) throws {
    scheme = args.contains("--tls") ? "https" : "http"
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

  var url: String { "\(scheme)://127.0.0.1:\(port)" }

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

/// One HTTP request with curl: the status code (and the body into `output` when given); `cacert` for https.
func curl(
  _ method: String, _ url: String, body: String? = nil, output: String = "/dev/null", user: String? = nil,
  cacert: String? = nil
)
  throws -> Int
{
  var args = ["-s", "-o", output, "-w", "%{http_code}", "-X", method, "-H", "Expect:", url]
  if method == "HEAD" { args = ["-s", "-I", "-o", output, "-w", "%{http_code}", url] }
  if let body { args += ["--data-binary", "@" + body, "-H", "Content-Type: application/octet-stream"] }
  if let user { args += ["-u", user] }
  if let cacert { args += ["--cacert", cacert] }
  return Int(try Tools.run("/usr/bin/curl", args).out) ?? 0
}

/// A private CA (`tls/ca.crt`) and what it signed: `tls/server.crt` for IP 127.0.0.1 and localhost,
/// `tls/wrong.crt` for another name only; `tls/other-ca.crt` is a CA that signed neither. Keys beside them.
func makeTestCA(_ ws: Workspace) throws {
  let r = try Tools.sh(
    """
    mkdir -p tls && cd tls
    key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
    key ca.key && key other-ca.key && key server.key && key wrong.key
    openssl req -x509 -new -key ca.key -out ca.crt -days 2 -subj "/CN=tidemark test CA"
    openssl req -x509 -new -key other-ca.key -out other-ca.crt -days 2 -subj "/CN=another CA"
    sign() {
      openssl req -new -key "$1.key" -out "$1.csr" -subj "/CN=$2"
      printf 'subjectAltName=%s\\nextendedKeyUsage=serverAuth\\n' "$3" > "$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -out "$1.crt" \
        -extfile "$1.ext" 2>/dev/null
    }
    sign server 127.0.0.1 IP:127.0.0.1,DNS:localhost
    sign wrong wrong.example DNS:wrong.example
    """, cwd: ws.path)
  if r.status != 0 { throw TidemarkError(.general, "openssl: \(r.stderr)") }
}

/// A tmpfs of `size` mounted at `dir` (we run as root); `unmount()` in a defer.
final class SmallDisk {
  let dir: String
  private var mounted = false

  init(_ dir: String, size: String) throws {
    self.dir = dir
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    let r = try Tools.run("/bin/mount", ["-t", "tmpfs", "-o", "size=\(size)", "tmpfs", dir])
    if r.status != 0 { throw TidemarkError(.general, "mount tmpfs (needs root): \(r.stderr)") }
    mounted = true
  }

  func unmount() {
    guard mounted else { return }
    mounted = false
    _ = try? Tools.run("/bin/umount", ["-l", dir])
  }

  deinit { unmount() }
}

/// The value of the sample of `name` whose labels contain every one of `labels` (`key="value"`), nil when none.
func metricValue(_ text: String, _ name: String, _ labels: [String]) -> Double? {
  for line in text.split(separator: "\n") where line.hasPrefix(name + "{") {
    guard let close = line.lastIndex(of: "}") else { continue }
    let inside = line[line.index(line.startIndex, offsetBy: name.count + 1)..<close]
    let present = inside.split(separator: ",").map(String.init)
    if labels.allSatisfy(present.contains) {
      return Double(line[line.index(after: close)...].trimmingCharacters(in: .whitespaces))
    }
  }
  return nil
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
    #expect(wrong.stderr.contains("refused the credentials (HTTP 401)"), "\(wrong.stderr)")
    #expect(wrong.stderr.split(separator: "\n").count == 1, "\(wrong.stderr)")
    #expect(!wrong.stderr.contains("nope"), "\(wrong.stderr)")
    let missing = try ws.tidemark(["-r", "rest:http://127.0.0.1:\(server.port)/nothing-here", "snapshots"], env: creds)
    #expect(missing.status == 10, "\(missing.stderr)")
    #expect(
      missing.stderr.contains("no repository at rest:http://127.0.0.1:\(server.port)/nothing-here")
        && missing.stderr.contains("tidemark init"), "\(missing.stderr)")
    #expect(missing.stderr.split(separator: "\n").count == 1, "\(missing.stderr)")
    let down = try unusedPort()
    let refused = try ws.tidemark(["-r", "rest:http://127.0.0.1:\(down)/x", "snapshots"], env: creds)
    #expect(refused.status == 1)
    #expect(
      refused.stderr.contains("127.0.0.1:\(down)") && refused.stderr.contains("connection refused"), "\(refused.stderr)"
    )
    #expect(refused.stderr.split(separator: "\n").count == 1, "\(refused.stderr)")
  }

  @Test func resticAndTidemarkOverTLSWithAPrivateCA() throws {
    let ws = try Workspace("serve-tls")
    try makeServeSource(ws)
    try makeTestCA(ws)
    let line = "alice:" + Bcrypt.hash("s3cret", cost: 5) + "\n"
    try line.write(toFile: ws.sub("htpasswd"), atomically: true, encoding: .utf8)
    // rest-server's default places for the certificate and key: PATH/public_key and PATH/private_key.
    try FileManager.default.createDirectory(atPath: ws.sub("served"), withIntermediateDirectories: true)
    try FileManager.default.copyItem(atPath: ws.sub("tls/server.crt"), toPath: ws.sub("served/public_key"))
    try FileManager.default.copyItem(atPath: ws.sub("tls/server.key"), toPath: ws.sub("served/private_key"))
    let server = try ServeProcess(ws, ["--tls", "--path", ws.sub("served"), "--htpasswd-file", ws.sub("htpasswd")])
    defer { server.stop() }
    #expect(server.url.hasPrefix("https://"))
    let ca = ws.sub("tls/ca.crt")

    // restic 0.14 with --cacert: the whole round trip, by address and by name.
    let repo = "rest:https://alice:s3cret@127.0.0.1:\(server.port)/repo"
    let i = try ws.restic(["--cacert", ca, "-r", repo, "init"])
    #expect(i.status == 0, "\(i.stderr)")
    let b = try ws.restic(["--cacert", ca, "-r", repo, "backup", "src"])
    #expect(b.status == 0, "\(b.stderr)")
    let c = try ws.restic(
      ["--cacert", ca, "-r", "rest:https://alice:s3cret@localhost:\(server.port)/repo", "check", "--read-data"])
    #expect(c.status == 0, "\(c.out) \(c.stderr)")
    let r = try ws.restic(["--cacert", ca, "-r", repo, "restore", "latest", "--target", "restored"])
    #expect(r.status == 0, "\(r.stderr)")
    let d = try Tools.run("/usr/bin/diff", ["-r", "--no-dereference", ws.sub("src"), ws.sub("restored/src")])
    #expect(d.status == 0, "\(d.out)")
    // Nothing of it went over plain HTTP: the port speaks only TLS.
    #expect(try curl("GET", "http://127.0.0.1:\(server.port)/repo/config", user: "alice:s3cret") != 200)
    #expect(try curl("GET", "\(server.url)/repo/config", user: "alice:s3cret", cacert: ca) == 200)

    // tidemark's own rest:https:// with --cacert: init, backup, check, and restic reads what it wrote.
    let creds = ["TIDEMARK_REST_USERNAME": "alice", "TIDEMARK_REST_PASSWORD": "s3cret"]
    let mine = "rest:https://127.0.0.1:\(server.port)/site-b"
    let ti = try ws.tidemark(["--cacert", ca, "-r", mine, "init"], env: creds)
    #expect(ti.status == 0, "\(ti.stderr)")
    let tb = try ws.tidemark(["--cacert", ca, "-r", mine, "backup", "src"], env: creds)
    #expect(tb.status == 0, "\(tb.stderr)")
    let tc = try ws.tidemark(["--cacert", ca, "-r", mine, "check", "--read-data"], env: creds)
    #expect(tc.status == 0, "\(tc.out) \(tc.stderr)")
    let rc = try ws.restic(
      ["--cacert", ca, "-r", "rest:https://alice:s3cret@localhost:\(server.port)/site-b", "check", "--read-data"])
    #expect(rc.status == 0, "\(rc.out) \(rc.stderr)")

    // Without the CA, or with the wrong one: one line naming the host and --cacert, at once (no retries).
    for extra in [[], ["--cacert", ws.sub("tls/other-ca.crt")]] {
      let started = Date()
      let untrusted = try ws.tidemark(extra + ["-r", mine, "snapshots"], env: creds)
      #expect(untrusted.status == 1, "\(untrusted.stderr)")
      #expect(
        untrusted.stderr.contains("TLS: certificate of 127.0.0.1 is not trusted")
          && untrusted.stderr.contains("--cacert"), "\(untrusted.stderr)")
      #expect(untrusted.stderr.split(separator: "\n").count == 1, "\(untrusted.stderr)")
      #expect(Date().timeIntervalSince(started) < 5)
    }
    // A CA file that is not one: a usage error naming it.
    let notCA = try ws.tidemark(["--cacert", ws.sub("htpasswd"), "-r", mine, "snapshots"], env: creds)
    #expect(notCA.status == 1)
    #expect(notCA.stderr.contains("--cacert \(ws.sub("htpasswd"))"), "\(notCA.stderr)")
    #expect(notCA.stderr.split(separator: "\n").count == 1, "\(notCA.stderr)")

    // A certificate of the right CA for another name: refused, saying so.
    let wrong = try ServeProcess(
      ws,
      [
        "--tls", "--tls-cert", ws.sub("tls/wrong.crt"), "--tls-key", ws.sub("tls/wrong.key"), "--path",
        ws.sub("served"), "--htpasswd-file", ws.sub("htpasswd"),
      ])
    defer { wrong.stop() }
    let mismatch = try ws.tidemark(
      ["--cacert", ca, "-r", "rest:https://127.0.0.1:\(wrong.port)/site-b", "snapshots"], env: creds)
    #expect(mismatch.status == 1, "\(mismatch.stderr)")
    #expect(
      mismatch.stderr.contains("TLS: certificate of 127.0.0.1 is not trusted (it is not issued for this name)"),
      "\(mismatch.stderr)")
    #expect(mismatch.stderr.split(separator: "\n").count == 1, "\(mismatch.stderr)")
    // And plain http:// to a TLS port says what is wrong.
    let plain = try ws.tidemark(["-r", "rest:http://127.0.0.1:\(server.port)/site-b", "snapshots"], env: creds)
    #expect(plain.status == 1, "\(plain.stderr)")
    #expect(plain.stderr.split(separator: "\n").count == 1, "\(plain.stderr)")
    #expect(plain.stderr.contains("https://"), "\(plain.stderr)")
    // And https:// to a plain HTTP server.
    let http = try ServeProcess(ws, ["--no-auth", "--path", ws.sub("plain")])
    defer { http.stop() }
    let notTLS = try ws.tidemark(["-r", "rest:https://127.0.0.1:\(http.port)/r", "snapshots"])
    #expect(notTLS.status == 1, "\(notTLS.stderr)")
    #expect(notTLS.stderr.contains("127.0.0.1 does not speak TLS on this port"), "\(notTLS.stderr)")
    #expect(notTLS.stderr.split(separator: "\n").count == 1, "\(notTLS.stderr)")
    #expect(server.stop() == 0)
  }

  @Test func theCycleReplicatesToATLSTargetThatTrustsItsCA() throws {
    let ws = try Workspace("serve-tls-cycle")
    try makeTestCA(ws)
    let server = try ServeProcess(
      ws,
      [
        "--tls", "--tls-cert", ws.sub("tls/server.crt"), "--tls-key", ws.sub("tls/server.key"), "--no-auth",
        "--append-only", "--path", ws.sub("served"),
      ])
    defer { server.stop() }
    let site = try EngineSite(
      ws,
      extra: """
          - name: vault
            repository: rest:https://localhost:\(server.port)/vault
            cacert: \(ws.sub("tls/ca.crt"))

        """)
    #expect(try site.run(["init"]).status == 0)
    try Data((0..<300_000).map { _ in UInt8.random(in: 0...255) }).write(to: URL(fileURLWithPath: ws.sub("src/a")))
    let cycle = try site.run(["replicate", "--once"])
    #expect(cycle.status == 0, "\(cycle.out) \(cycle.stderr)")
    #expect(site.snapshots("served/vault") == 1)
    let check = try ws.restic(
      ["--cacert", ws.sub("tls/ca.crt"), "-r", "rest:https://localhost:\(server.port)/vault", "check", "--read-data"],
      password: "secret")
    #expect(check.status == 0, "\(check.out) \(check.stderr)")
  }

  @Test func badTLSFilesAreOneLine() throws {
    let ws = try Workspace("serve-tls-bad")
    try makeTestCA(ws)
    try "garbage\n".write(toFile: ws.sub("garbage"), atomically: true, encoding: .utf8)
    func serve(_ args: [String]) throws -> RunResult {
      try ws.tidemark(
        ["serve", "--no-auth", "--listen", "127.0.0.1:\(try unusedPort())", "--path", ws.sub("served")] + args)
    }
    let cases: [([String], String)] = [
      (["--tls"], "--tls-cert \(ws.sub("served"))/public_key"),
      (["--tls", "--tls-cert", ws.sub("missing.crt"), "--tls-key", ws.sub("tls/server.key")], "--tls-cert"),
      (["--tls", "--tls-cert", ws.sub("garbage"), "--tls-key", ws.sub("tls/server.key")], "--tls-cert"),
      (["--tls", "--tls-cert", ws.sub("tls/server.crt"), "--tls-key", ws.sub("garbage")], "--tls-key"),
      (["--tls", "--tls-cert", ws.sub("tls/server.crt"), "--tls-key", ws.sub("tls/server.crt")], "--tls-key"),
      (["--tls-cert", ws.sub("tls/server.crt")], "need --tls"),
      (["--prometheus-no-auth"], "needs --prometheus"),
    ]
    for (args, says) in cases {
      let r = try serve(args)
      #expect(r.status == 1, "\(args): \(r.stderr)")
      #expect(r.stderr.contains(says), "\(args): \(r.stderr)")
      #expect(r.stderr.split(separator: "\n").count == 1, "\(args): \(r.stderr)")
    }
  }

  @Test func prometheusCountsPerRepository() throws {
    let ws = try Workspace("serve-metrics")
    try makeServeSource(ws)
    let line = "alice:" + Bcrypt.hash("s3cret", cost: 5) + "\n"
    try line.write(toFile: ws.sub("htpasswd"), atomically: true, encoding: .utf8)
    let server = try ServeProcess(
      ws, ["--prometheus", "--path", ws.sub("served"), "--htpasswd-file", ws.sub("htpasswd"), "--private-repos"])
    defer { server.stop() }
    let repo = "rest:http://alice:s3cret@127.0.0.1:\(server.port)/alice/laptop"
    #expect(try ws.restic(["-r", repo, "init"]).status == 0)
    let b = try ws.restic(["-r", repo, "backup", "src"])
    #expect(b.status == 0, "\(b.stderr)")
    let wrongName = String(repeating: "ab", count: 32)
    try Data("forged".utf8).write(to: URL(fileURLWithPath: ws.sub("forged")))
    #expect(
      try curl(
        "POST", "\(server.url)/alice/laptop/snapshots/\(wrongName)", body: ws.sub("forged"), user: "alice:s3cret")
        == 400)
    #expect(try curl("GET", "\(server.url)/alice/laptop/config") == 401)

    // /metrics needs the same credentials as the repositories.
    #expect(try curl("GET", "\(server.url)/metrics") == 401)
    #expect(try curl("GET", "\(server.url)/metrics", output: ws.sub("metrics"), user: "alice:s3cret") == 200)
    let text = try String(contentsOfFile: ws.sub("metrics"), encoding: .utf8)
    // rest-server's counters: every pack written, with exactly the bytes that are on disk.
    let packs = try Tools.sh("find served/alice/laptop/data -type f | wc -l", cwd: ws.path).out
    let packBytes = try Tools.sh(
      "find served/alice/laptop/data -type f -printf '%s\\n' | awk '{ s += $1 } END { print s }'", cwd: ws.path
    ).out.trimmingCharacters(in: .whitespacesAndNewlines)
    let mine = ["user=\"alice\"", "repo=\"alice/laptop\"", "type=\"data\""]
    #expect(
      metricValue(text, "rest_server_blob_write_total", mine)
        == Double(packs.trimmingCharacters(in: .whitespacesAndNewlines)), "\(text)")
    #expect(metricValue(text, "rest_server_blob_write_bytes_total", mine) == Double(packBytes), "\(text)")
    #expect((Double(packBytes) ?? 0) > 6_000_000)
    #expect((metricValue(text, "rest_server_blob_write_total", ["type=\"snapshots\""]) ?? 0) == 1, "\(text)")
    // Requests by repository, method and status: the refused upload and the strangers.
    let refused = ["repo=\"alice/laptop\"", "method=\"POST\"", "code=\"400\""]
    #expect(metricValue(text, "tidemark_serve_requests_total", refused) == 1, "\(text)")
    #expect((metricValue(text, "tidemark_serve_requests_total", ["repo=\".\"", "code=\"401\""]) ?? 0) >= 1, "\(text)")
    #expect(text.contains("# TYPE rest_server_blob_read_bytes_total counter"), "\(text)")

    // Reading counts too: a restore reads every pack at least once.
    #expect(try ws.restic(["-r", repo, "restore", "latest", "--target", "restored"]).status == 0)
    #expect(try curl("GET", "\(server.url)/metrics", output: ws.sub("metrics2"), user: "alice:s3cret") == 200)
    let after = try String(contentsOfFile: ws.sub("metrics2"), encoding: .utf8)
    #expect(
      (metricValue(after, "rest_server_blob_read_bytes_total", mine) ?? 0) >= (Double(packBytes) ?? 0) * 0.9, "\(after)"
    )
    server.stop()

    // --prometheus-no-auth: anyone who reaches the port; without --prometheus there is no /metrics.
    let open = try ServeProcess(
      ws, ["--prometheus", "--prometheus-no-auth", "--path", ws.sub("served"), "--htpasswd-file", ws.sub("htpasswd")])
    defer { open.stop() }
    #expect(try curl("GET", "\(open.url)/metrics") == 200)
    open.stop()
    let none = try ServeProcess(ws, ["--no-auth", "--path", ws.sub("served")])
    defer { none.stop() }
    #expect(try curl("GET", "\(none.url)/metrics") != 200)
  }

  @Test func aServerThatGoesAwayIsRetriedForAboutHalfAMinute() throws {
    let ws = try Workspace("serve-gone")
    try Tools.sh("mkdir -p src && head -c 3000000 /dev/urandom > src/random.bin", cwd: ws.path)
    let server = try ServeProcess(ws, ["--no-auth", "--path", ws.sub("served")])
    defer { server.stop() }
    let repo = "rest:\(server.url)/repo"
    #expect(try ws.tidemark(["-r", repo, "init"]).status == 0)
    // The upload takes about 15 s at 200 KiB/s; the server is killed 3 s into it and does not come back.
    let pid = server.pid
    let killer = Thread {
      sleep(3)
      kill(pid, SIGKILL)
    }
    killer.start()
    let started = Date()
    let b = try ws.tidemark(["-r", repo, "--limit-upload", "200", "backup", "src"])
    let took = Date().timeIntervalSince(started)
    #expect(b.status == 1, "\(b.stderr)")
    let lines = b.stderr.split(separator: "\n")
    // 8 tries: 7 waits of 0.5, 1, 2, 4, 8, 8 and 8 s, one line each, then the failure in one line. Once that
    // upload gave up, releasing the lock on the way out tries once: no second half-minute of waiting.
    let retries = lines.filter { $0.contains("retrying in") }
    #expect(retries.count >= 7 && retries.count % 7 == 0, "\(b.stderr)")
    #expect(retries.contains { $0.contains("(attempt 8 of 8)") }, "\(b.stderr)")
    #expect(!retries.contains { $0.contains("remove locks/") }, "\(b.stderr)")
    #expect(lines.last?.contains("cannot reach the REST server at 127.0.0.1:\(server.port)") == true, "\(b.stderr)")
    #expect(took > 30 && took < 60, "\(took) s")
  }

  @Test func fullDiskAnswers507AndKeepsNothing() throws {
    let ws = try Workspace("serve-full")
    let disk = try SmallDisk(ws.sub("small"), size: "2m")
    defer {
      disk.unmount()
      // The workspace (removed when released) outlives the mount.
      withExtendedLifetime(ws) {}
    }
    let server = try ServeProcess(ws, ["--no-auth", "--path", disk.dir])
    defer { server.stop() }
    #expect(try curl("POST", "\(server.url)/repo/?create=true") == 200)
    // 3 MB on a 2 MB disk: 507, no file under its name, no temporary file.
    let big = (0..<3_000_000).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ $0 >> 9) }
    try Data(big).write(to: URL(fileURLWithPath: ws.sub("big")))
    let name = toHexString(SHA256.hash(big))
    #expect(try curl("POST", "\(server.url)/repo/data/\(name)", body: ws.sub("big")) == 507)
    let left = try Tools.sh("find \(disk.dir) -type f | wc -l", cwd: ws.path)
    #expect(left.out.trimmingCharacters(in: .whitespacesAndNewlines) == "0", "\(left.out)")
    // The space is free again: a small upload fits.
    let small = Array("small".utf8)
    try Data(small).write(to: URL(fileURLWithPath: ws.sub("smallfile")))
    #expect(
      try curl("POST", "\(server.url)/repo/keys/\(toHexString(SHA256.hash(small)))", body: ws.sub("smallfile")) == 200)

    // A client backing up more than fits: one clear line, not a retry loop.
    try Tools.sh("mkdir -p src && head -c 3000000 /dev/urandom > src/random.bin", cwd: ws.path)
    let repo = "rest:\(server.url)/site"
    let i = try ws.tidemark(["-r", repo, "init"])
    #expect(i.status == 0, "\(i.stderr)")
    let started = Date()
    let b = try ws.tidemark(["-r", repo, "backup", "src"])
    #expect(b.status == 1, "\(b.stderr)")
    #expect(b.stderr.contains("disk is full (HTTP 507)"), "\(b.stderr)")
    #expect(!b.stderr.contains("retrying"), "\(b.stderr)")
    #expect(Date().timeIntervalSince(started) < 30)
    let temps = try Tools.sh("find \(disk.dir) -name '.*' | wc -l", cwd: ws.path)
    #expect(temps.out.trimmingCharacters(in: .whitespacesAndNewlines) == "0", "\(temps.out)")
    server.stop()
  }
}
