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

extension S3Server {
  /// Runs a Python script against this server with boto3 (the test's view of S3, independent of tidemark's
  /// client): `s3` is the client, `now` the current UTC time; `base64`, `datetime`, `hashlib`, `json` imported.
  func boto(_ script: String) throws -> RunResult {
    let preamble = """
      import base64, datetime, hashlib, json
      import boto3
      s3 = boto3.client("s3", endpoint_url="\(endpoint)", aws_access_key_id="\(S3Server.env["AWS_ACCESS_KEY_ID"]!)",
          aws_secret_access_key="\(S3Server.env["AWS_SECRET_ACCESS_KEY"]!)", region_name="us-east-1")
      now = datetime.datetime.now(datetime.timezone.utc)

      """
    return try Tools.run("/usr/bin/env", ["python3", "-c", preamble + script])
  }

  /// The keys of the current objects in `bucket` under `prefix`.
  func keys(_ bucket: String, prefix: String) throws -> Set<String> {
    let r = try boto(
      """
      keys = []
      for page in s3.get_paginator("list_objects_v2").paginate(Bucket="\(bucket)", Prefix="\(prefix)"):
          keys += [o["Key"] for o in page.get("Contents", [])]
      print(json.dumps(keys))
      """)
    guard r.status == 0, let keys = try JSONSerialization.jsonObject(with: Data(r.stdout)) as? [String] else {
      throw TidemarkError(.general, "listing \(bucket) with boto3 failed: \(r.stderr)")
    }
    return Set(keys)
  }

  /// Keys of `bucket` that still have any version (current or not) stored.
  func versionedKeys(_ bucket: String) throws -> Set<String> {
    let r = try boto(
      """
      keys = []
      for page in s3.get_paginator("list_object_versions").paginate(Bucket="\(bucket)"):
          keys += [v["Key"] for v in page.get("Versions", [])]
      print(json.dumps(keys))
      """)
    guard r.status == 0, let keys = try JSONSerialization.jsonObject(with: Data(r.stdout)) as? [String] else {
      throw TidemarkError(.general, "listing versions of \(bucket) with boto3 failed: \(r.stderr)")
    }
    return Set(keys)
  }

  /// Sets the retention of `keys` to an hour ago (governance, with the bypass an administrator would use), as if
  /// their date had passed.
  func expire(_ bucket: String, _ keys: some Collection<String>) throws {
    try retain(bucket, keys, hours: -1)
  }

  /// Sets the retention of `keys` to `hours` from now (governance, with the bypass an administrator would use).
  func retain(_ bucket: String, _ keys: some Collection<String>, hours: Int) throws {
    let list = String(decoding: try JSONSerialization.data(withJSONObject: Array(keys)), as: UTF8.self)
    let r = try boto(
      """
      until = now + datetime.timedelta(hours=\(hours))
      for k in json.loads('\(list)'):
          s3.put_object_retention(Bucket="\(bucket)", Key=k, BypassGovernanceRetention=True,
              Retention={"Mode": "GOVERNANCE", "RetainUntilDate": until})
      """)
    guard r.status == 0 else { throw TidemarkError(.general, "setting retention failed: \(r.stderr)") }
  }

  /// Seconds of retention left on each of `keys`, as S3 reports them.
  func secondsLeft(_ bucket: String, _ keys: some Collection<String>) throws -> [Int] {
    let list = String(decoding: try JSONSerialization.data(withJSONObject: Array(keys)), as: UTF8.self)
    let r = try boto(
      """
      left = [int((s3.head_object(Bucket="\(bucket)", Key=k)["ObjectLockRetainUntilDate"] - now).total_seconds())
          for k in json.loads('\(list)')]
      print(json.dumps(left))
      """)
    guard r.status == 0, let left = try JSONSerialization.jsonObject(with: Data(r.stdout)) as? [Int] else {
      throw TidemarkError(.general, "reading retention failed: \(r.stderr)")
    }
    return left
  }
}

@Suite(.serialized) struct S3ObjectLockTests {
  @Test func optionValuesAndDates() throws {
    let lock = try S3ObjectLock(parsing: "governance:30d")
    #expect(lock.mode == .governance && lock.period == RetentionDuration(days: 30))
    #expect(try S3ObjectLock(parsing: "COMPLIANCE:1y").period == RetentionDuration(years: 1))
    #expect(try S3ObjectLock(parsing: "compliance:720h").description == "compliance:720h")
    for bad in ["governance", "forever:30d", "governance:0d", "governance:-1d", "governance:30x", "governance:", ""] {
      #expect(throws: TidemarkError.self, "\(bad)") { try S3ObjectLock(parsing: bad) }
    }
    let d = Date(timeIntervalSince1970: 1_796_838_857)
    #expect(UTCDate.format(d) == "2026-12-09T17:54:17Z")
    #expect(UTCDate.parse("2026-12-09T17:54:17Z") == d)
    // S3 servers may write fractions of a second; a retention is never taken to end early.
    #expect(UTCDate.parse("2026-12-09T17:54:17.028782Z") == d + 1)
    #expect(UTCDate.parse("2026-12-09T17:54:17.000Z") == d)
    #expect(UTCDate.parse("2026-12-09 17:54:17Z") == nil)
  }

  /// The backend's own view: uploads carry the retention (lock files excepted), a retained object is neither
  /// removed nor hidden, a lock file is removed for good.
  @Test func backendRetainsAndRefusesToRemove() async throws {
    let server = try S3Server()
    let locking = try S3Backend(
      endpoint: URL(string: server.endpoint)!, bucket: "direct", prefix: "",
      credentials: S3Credentials(
        accessKey: S3Server.env["AWS_ACCESS_KEY_ID"]!, secretKey: S3Server.env["AWS_SECRET_ACCESS_KEY"]!,
        sessionToken: nil, region: "us-east-1"),
      location: "s3-test", objectLock: try S3ObjectLock(parsing: "compliance:1d"))
    try await locking.create()  // a new bucket, made with Object Lock
    let name = RawID.hash([1]).hex
    let start = Date()
    try await locking.save(Handle(.snapshot, name), data: [1, 2, 3])
    try await locking.save(Handle(.lock, name), data: [4])

    let plain = try server.backend(bucket: "direct")  // another process's view: asks S3
    let until = try #require(try await plain.retainedUntil(Handle(.snapshot, name)))
    #expect(abs(until.timeIntervalSince(start) - 86400) < 120, "\(until)")
    #expect(try await plain.retainedUntil(Handle(.lock, name)) == nil)
    await #expect(throws: FileRetained.self) { try await plain.remove(Handle(.snapshot, name)) }
    #expect(try await plain.list(.snapshot).map(\.name) == [name])
    try await locking.remove(Handle(.lock, name))
    #expect(try await plain.list(.lock).isEmpty)
    #expect(try server.versionedKeys("direct") == ["snapshots/\(name)"])
  }

  /// (a) Everything `init` and `backup` store carries the retention and a correct Content-MD5; lock files do not
  /// and are gone, versions included.
  @Test func everyObjectButLocksIsRetained() throws {
    let ws = try Workspace("s3-lock")
    let server = try S3Server()
    try makeAwkwardTree(in: ws.path, nonUTF8LinkTarget: false)
    let repo = "s3:\(server.endpoint)/made/repo"
    let env = S3Server.env
    let lock = ["-o", "s3.object-lock=governance:2d"]
    let i = try ws.tidemark(["init", "-r", repo] + lock, env: env)
    #expect(i.status == 0, "\(i.stderr)")
    for n in 0..<2 {
      try Data("change \(n)".utf8).write(to: URL(fileURLWithPath: ws.sub("src/changing")))
      let b = try ws.tidemark(["-r", repo, "backup", "src"] + lock, env: env)
      #expect(b.status == 0, "\(b.stderr)")
    }
    let r = try server.boto(
      """
      b = "made"
      print("lock", s3.get_object_lock_configuration(Bucket=b)["ObjectLockConfiguration"]["ObjectLockEnabled"])
      seen, bad = set(), []
      for page in s3.get_paginator("list_objects_v2").paginate(Bucket=b):
          for o in page.get("Contents", []):
              k = o["Key"]
              h = s3.head_object(Bucket=b, Key=k)
              md5 = base64.b64encode(hashlib.md5(s3.get_object(Bucket=b, Key=k)["Body"].read()).digest()).decode()
              until = h.get("ObjectLockRetainUntilDate")
              left = (until - now).total_seconds() if until else 0
              if h.get("ObjectLockMode") != "GOVERNANCE" or abs(left - 2 * 86400) > 600 \\
                      or h["ResponseMetadata"]["HTTPHeaders"].get("content-md5") != md5:
                  bad.append([k, h.get("ObjectLockMode"), str(until)])
              seen.add(k.split("/")[1])
      print("kinds", " ".join(sorted(seen)))
      print("bad", json.dumps(bad))
      print("lockversions", len([v for v in s3.list_object_versions(Bucket=b).get("Versions", [])
          if v["Key"].startswith("repo/locks/")]))
      """)
    #expect(r.status == 0, "\(r.stderr)")
    let lines = r.out.split(separator: "\n").map(String.init)
    #expect(
      lines == ["lock Enabled", "kinds config data index keys snapshots", "bad []", "lockversions 0"], "\(r.out)")
  }

  /// (b) forget and prune on a locked repository: files still under retention stay (and their packs with them),
  /// expired ones are deleted for good, and restic's check accepts the repository after every step.
  @Test func forgetAndPruneWorkAroundRetention() throws {
    let ws = try Workspace("s3-lock-prune")
    let server = try S3Server()
    let created = try server.boto("s3.create_bucket(Bucket=\"locked\", ObjectLockEnabledForBucket=True)")
    #expect(created.status == 0, "\(created.stderr)")
    let repo = "s3:\(server.endpoint)/locked/repo"
    let env = S3Server.env
    let lock = ["-o", "s3.object-lock=governance:1d"]
    try FileManager.default.createDirectory(atPath: ws.sub("src"), withIntermediateDirectories: true)
    func write(_ name: String, _ size: Int, _ seed: UInt8) throws {
      var bytes = [UInt8](repeating: 0, count: size)
      var x = UInt32(seed) &* 2_654_435_761 | 1
      for k in bytes.indices {
        x ^= x << 13
        x ^= x >> 17
        x ^= x << 5
        bytes[k] = UInt8(truncatingIfNeeded: x)
      }
      try Data(bytes).write(to: URL(fileURLWithPath: ws.sub("src/\(name)")))
    }
    func check(_ when: String) throws {
      let c = try ws.restic(["-r", repo, "check", "--read-data"], env: env)
      #expect(c.status == 0, "restic check \(when): \(c.out) \(c.stderr)")
    }
    #expect(try ws.tidemark(["init", "-r", repo] + lock, env: env).status == 0)
    try write("a", 300_000, 1)
    try write("b", 300_000, 2)
    #expect(try ws.tidemark(["-r", repo, "backup", "src"] + lock, env: env).status == 0)
    let first = try server.keys("locked", prefix: "repo/").filter { !$0.hasPrefix("repo/keys/") && $0 != "repo/config" }
    try FileManager.default.removeItem(atPath: ws.sub("src/b"))
    try write("c", 100_000, 3)
    #expect(try ws.tidemark(["-r", repo, "backup", "src"] + lock, env: env).status == 0)

    // The first backup's snapshot and packs have passed their date, its index file has not: the snapshot goes,
    // the packs that index names must stay (deleting them would leave it naming missing packs).
    let firstIndex = first.filter { $0.hasPrefix("repo/index/") }
    let firstPacks = first.filter { $0.hasPrefix("repo/data/") }
    #expect(firstIndex.count == 1 && firstPacks.count >= 2, "\(first)")
    try server.expire("locked", first.subtracting(firstIndex))
    let before = try server.keys("locked", prefix: "repo/")
    let f = try ws.tidemark(["-r", repo, "forget", "--keep-last", "1", "--prune"] + lock, env: env)
    #expect(f.status == 0, "\(f.out) \(f.stderr)")
    #expect(f.out.contains("1 snapshots have been removed"), "\(f.out)")
    #expect(f.out.contains("2 files locked until ") && f.out.contains("kept (2 index files)"), "\(f.out)")
    // Planned, not stumbled upon: nothing was repacked into new packs that could not replace the old ones.
    #expect(
      try server.keys("locked", prefix: "repo/") == before.subtracting(first.filter { $0.hasPrefix("repo/snapshots/") })
    )
    let snaps = try ws.tidemark(["-r", repo, "snapshots", "--json"], env: env)
    #expect(snaps.out.components(separatedBy: "\"short_id\"").count == 2, "\(snaps.out)")
    try check("after forget --prune")

    // Its index file's date passes too: prune deletes the first backup's packs and index for good (no version
    // left behind), and keeps the second backup's index file, still under retention.
    try server.expire("locked", firstIndex)
    let p = try ws.tidemark(["-r", repo, "prune"] + lock, env: env)
    #expect(p.status == 0, "\(p.out) \(p.stderr)")
    #expect(p.out.contains("1 file locked until ") && p.out.contains("kept (1 index file)"), "\(p.out)")
    let stored = try server.versionedKeys("locked")
    #expect(stored.isDisjoint(with: first), "\(first.intersection(stored))")
    try check("after prune")
    let tr = try ws.tidemark(["-r", repo, "restore", "latest", "--target", "out"], env: env)
    #expect(tr.status == 0, "\(tr.stderr)")
    #expect(FileManager.default.contentsEqual(atPath: ws.sub("src/a"), andPath: ws.sub("out/src/a")))

    // A snapshot under retention is not forgotten: it stays, and forget says why.
    let id = try #require(snaps.out.split(separator: "\"").drop { $0 != "id" }.dropFirst(2).first)
    let dry = try ws.tidemark(["-r", repo, "forget", "--dry-run", String(id)], env: env)
    #expect(dry.status == 0 && !dry.out.contains("Would have removed"), "\(dry.out) \(dry.stderr)")
    #expect(dry.out.contains("kept (1 snapshot file)"), "\(dry.out)")
    let g = try ws.tidemark(["-r", repo, "forget", String(id)], env: env)
    #expect(g.status == 0, "\(g.stderr)")
    #expect(g.out.contains("1 file locked until ") && g.out.contains("kept (1 snapshot file)"), "\(g.out)")
    let after = try ws.tidemark(["-r", repo, "snapshots", "--json"], env: env)
    #expect(after.out.contains(String(id)), "\(after.out)")
    try check("after forget of a retained snapshot")
  }

  /// With -o s3.object-lock-extend=true, prune renews the retention of the packs in use once less than half of
  /// the period is left, and leaves it alone otherwise.
  @Test func pruneExtendsTheRetentionOfPacksInUse() throws {
    let ws = try Workspace("s3-lock-extend")
    let server = try S3Server()
    let repo = "s3:\(server.endpoint)/extend/repo"
    let env = S3Server.env
    let lock = ["-o", "s3.object-lock=governance:2d"]
    let extend = lock + ["-o", "s3.object-lock-extend=true"]
    try makeAwkwardTree(in: ws.path, nonUTF8LinkTarget: false)
    #expect(try ws.tidemark(["init", "-r", repo] + lock, env: env).status == 0)
    #expect(try ws.tidemark(["-r", repo, "backup", "src"] + lock, env: env).status == 0)
    let packs = try server.keys("extend", prefix: "repo/data/")
    #expect(!packs.isEmpty)
    try server.retain("extend", packs, hours: 1)

    let p = try ws.tidemark(["-r", repo, "prune"] + extend, env: env)
    #expect(p.status == 0, "\(p.out) \(p.stderr)")
    #expect(p.out.contains("retention of \(packs.count) packs in use extended to "), "\(p.out)")
    for left in try server.secondsLeft("extend", packs) { #expect(abs(left - 2 * 86400) < 600, "\(left)") }
    // More than half of the period is left now: nothing to do.
    try server.retain("extend", packs, hours: 30)
    let again = try ws.tidemark(["-r", repo, "prune"] + extend, env: env)
    #expect(again.status == 0 && !again.out.contains("extended"), "\(again.out) \(again.stderr)")
    for left in try server.secondsLeft("extend", packs) { #expect(abs(left - 30 * 3600) < 600, "\(left)") }
    // Without the option, prune leaves retention alone.
    try server.retain("extend", packs, hours: 1)
    let plain = try ws.tidemark(["-r", repo, "prune"] + lock, env: env)
    #expect(plain.status == 0 && !plain.out.contains("extended"), "\(plain.out) \(plain.stderr)")
    for left in try server.secondsLeft("extend", packs) { #expect(abs(left - 3600) < 600, "\(left)") }
    let check = try ws.restic(["-r", repo, "check"], env: env)
    #expect(check.status == 0, "\(check.out) \(check.stderr)")

    for bad in [["-o", "s3.object-lock-extend=yes"] + lock, ["-o", "s3.object-lock-extend=true"]] {
      let r = try ws.tidemark(["-r", repo, "prune"] + bad, env: env)
      #expect(r.status == 1 && r.stderr.contains("s3.object-lock-extend"), "\(r.stderr)")
      #expect(r.stderr.split(separator: "\n").count == 1, "\(r.stderr)")
    }
  }

  /// (c) and (d): a bad option value and a bucket without Object Lock are one clear line each, exit code 1.
  @Test func lockProblemsAreOneClearLine() throws {
    let ws = try Workspace("s3-lock-errors")
    let server = try S3Server()
    let env = S3Server.env
    for bad in ["governance", "forever:30d", "governance:0d", "compliance:30x"] {
      let r = try ws.tidemark(
        ["init", "-r", "s3:\(server.endpoint)/any/repo", "-o", "s3.object-lock=\(bad)"], env: env)
      #expect(r.status == 1, "\(bad): \(r.stderr)")
      #expect(r.stderr.contains("s3.object-lock=\(bad)") && r.stderr.contains("governance:DURATION"), "\(r.stderr)")
      #expect(r.stderr.split(separator: "\n").count == 1, "\(r.stderr)")
    }
    let created = try server.boto("s3.create_bucket(Bucket=\"plain\")")
    #expect(created.status == 0, "\(created.stderr)")
    let r = try ws.tidemark(
      ["init", "-r", "s3:\(server.endpoint)/plain/repo", "-o", "s3.object-lock=compliance:30d"], env: env)
    #expect(r.status == 1, "\(r.stderr)")
    #expect(r.stderr.contains("plain does not have Object Lock enabled"), "\(r.stderr)")
    #expect(r.stderr.split(separator: "\n").count == 1, "\(r.stderr)")
  }
}
