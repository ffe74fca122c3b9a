// The S3 backend against a real S3-compatible server on 127.0.0.1 (moto_server, installed by
// scripts/test.sh): the Backend contract, restic's own S3 backend as the oracle, clear errors.
import Foundation
import Testing
import TidemarkBackends
import TidemarkCore
import TidemarkSystem

/// A throwaway moto_server on 127.0.0.1; stopped when dropped.
final class S3Server {
  let port: Int
  var pid: pid_t = 0
  /// Credentials for tidemark and restic (moto accepts any; the signature is still computed and sent).
  static let env = [
    "AWS_ACCESS_KEY_ID": "tidemarktest", "AWS_SECRET_ACCESS_KEY": "tidemarktestsecret",
    "AWS_DEFAULT_REGION": "us-east-1",
  ]

  init() throws {
    var started: Int? = nil
    for _ in 0..<10 where started == nil {
      let port = try unusedPort()
      // posix_spawn, not Foundation's Process (see SSHServer); python3 from PATH.
      let child = try spawn(["/usr/bin/env", "python3", "-m", "moto.server", "-H", "127.0.0.1", "-p", String(port)])
      for _ in 0..<200 {
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
        kill(child, SIGKILL)
        _ = waitpid(child, nil, 0)
      }
    }
    guard let port = started else {
      throw TidemarkError(.general, "moto_server did not start (pip install 'moto[server]')")
    }
    self.port = port
  }

  var endpoint: String { "http://127.0.0.1:\(port)" }

  func backend(bucket: String, prefix: String = "") throws -> S3Backend {
    try S3Backend(
      endpoint: URL(string: endpoint)!, bucket: bucket, prefix: prefix,
      credentials: S3Credentials(
        accessKey: S3Server.env["AWS_ACCESS_KEY_ID"]!, secretKey: S3Server.env["AWS_SECRET_ACCESS_KEY"]!,
        sessionToken: nil, region: "us-east-1"),
      connections: 5, location: "s3-test")
  }

  deinit {
    if pid > 0 {
      kill(pid, SIGKILL)
      _ = waitpid(pid, nil, 0)
    }
  }
}

@Suite(.serialized) struct S3Tests {
  /// AWS's published example (GET Object, single chunk): our canonical request and signing give its signature.
  @Test func signatureV4MatchesAWSExample() throws {
    let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    let creds = S3Credentials(
      accessKey: "AKIAIOSFODNN7EXAMPLE", secretKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", sessionToken: nil,
      region: "us-east-1")
    let auth = S3Backend.authorization(
      method: "GET", path: "/test.txt", query: "",
      headers: [
        "host": "examplebucket.s3.amazonaws.com", "range": "bytes=0-9", "x-amz-content-sha256": empty,
        "x-amz-date": "20130524T000000Z",
      ], payloadHash: empty, date: Date(timeIntervalSince1970: 1_369_353_600), credentials: creds)
    #expect(
      auth
        == "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )
  }

  @Test func s3BackendKeepsTheContract() async throws {
    let server = try S3Server()
    try await checkBackendContract(try server.backend(bucket: "contract"))
    // Under a prefix, and with more objects than one listing page (moto pages at 1000).
    let b = try server.backend(bucket: "contract2", prefix: "some/prefix")
    try await b.create()
    let names = (0..<1010).map { RawID.hash([UInt8(truncatingIfNeeded: $0), UInt8($0 >> 8)]).hex }
    try await withThrowingTaskGroup(of: Void.self) { g in
      for (i, n) in names.enumerated() {
        g.addTask { try await b.save(Handle(.snapshot, n), data: [UInt8(truncatingIfNeeded: i)]) }
        if i % 16 == 15 { try await g.next() }
      }
      try await g.waitForAll()
    }
    #expect(Set(try await b.list(.snapshot).map(\.name)) == Set(names))
    #expect(try await server.backend(bucket: "contract2").list(.snapshot).isEmpty)
  }

  @Test func s3RepositoryWorksWithResticAndTidemark() throws {
    let ws = try Workspace("s3")
    let server = try S3Server()
    try makeAwkwardTree(in: ws.path, nonUTF8LinkTarget: false)
    let repo = "s3:\(server.endpoint)/bucket/repo"
    let env = S3Server.env
    let i = try ws.tidemark(["init", "-r", repo], env: env)
    #expect(i.status == 0, "\(i.stderr)")
    let b = try ws.tidemark(["-r", repo, "backup", "src"], env: env)
    #expect(b.status == 0, "\(b.stderr)")

    // restic reads it with its own S3 backend: check --read-data and a restore.
    let check = try ws.restic(["-r", repo, "check", "--read-data"], env: env)
    #expect(check.status == 0, "\(check.out) \(check.stderr)")
    let rr = try ws.restic(["-r", repo, "restore", "latest", "--target", "by-restic"], env: env)
    #expect(rr.status == 0, "\(rr.stderr)")
    let d1 = differences(try describeTree(ws.sub("src")), try describeTree(ws.sub("by-restic/src")))
    #expect(d1.isEmpty, "\(d1.prefix(5))")

    // restic writes to S3; tidemark restores it.
    let rb = try ws.restic(["-r", repo, "backup", "src", "--tag", "r"], env: env)
    #expect(rb.status == 0, "\(rb.stderr)")
    let tr = try ws.tidemark(["-r", repo, "restore", "latest", "--target", "by-tidemark"], env: env)
    #expect(tr.status == 0, "\(tr.stderr)")
    let d2 = differences(try describeTree(ws.sub("src")), try describeTree(ws.sub("by-tidemark/src")))
    #expect(d2.isEmpty, "\(d2.prefix(5))")
    let snaps = try ws.tidemark(["-r", repo, "snapshots", "--json"], env: env)
    #expect(snaps.status == 0 && snaps.out.components(separatedBy: "\"short_id\"").count == 3, "\(snaps.out)")
  }

  @Test func s3ProblemsAreOneClearLine() throws {
    let ws = try Workspace("s3-errors")
    let server = try S3Server()
    let env = S3Server.env
    // A bucket that does not exist: no repository (10).
    let missing = try ws.tidemark(["-r", "s3:\(server.endpoint)/nobucket", "snapshots"], env: env)
    #expect(missing.status == 10, "\(missing.stderr)")
    #expect(missing.stderr.contains("nobucket"), "\(missing.stderr)")
    // An empty bucket: no repository either.
    #expect(try ws.tidemark(["init", "-r", "s3:\(server.endpoint)/bucket1/x"], env: env).status == 0)
    let empty = try ws.tidemark(["-r", "s3:\(server.endpoint)/bucket1/y", "snapshots"], env: env)
    #expect(empty.status == 10, "\(empty.stderr)")
    // No credentials.
    let nocreds = try ws.tidemark(["-r", "s3:\(server.endpoint)/bucket1/x", "snapshots"])
    #expect(nocreds.status == 1 && nocreds.stderr.contains("AWS_ACCESS_KEY_ID"), "\(nocreds.stderr)")
    // Nothing listening: a clear line, not a hang.
    let closed = try ws.tidemark(["-r", "s3:http://127.0.0.1:9/bucket1/x", "snapshots"], env: env)
    #expect(closed.status == 1 && closed.stderr.contains("cannot reach"), "\(closed.stderr)")
    #expect(closed.stderr.split(separator: "\n").count <= 2, "\(closed.stderr)")
    // An unknown option.
    let opt = try ws.tidemark(["-r", "s3:\(server.endpoint)/bucket1/x", "-o", "s3.nope=1", "snapshots"], env: env)
    #expect(opt.status == 1 && opt.stderr.contains("s3.nope"), "\(opt.stderr)")
  }
}
