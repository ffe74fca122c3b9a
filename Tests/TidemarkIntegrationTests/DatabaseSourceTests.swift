// Database sources against real servers (no mocks): a PostgreSQL cluster and a Redis server started for the test
// on 127.0.0.1, and a SQLite database under a steady stream of writes during the cycle. Each source's snapshot is
// restored and checked for consistency with the database's own tools. A missing server binary fails the test.
import Foundation
import Testing
import TidemarkCore

/// An executable the test needs; a clear failure when it is not installed.
func requireTool(_ path: String, package: String) throws -> String {
  guard access(path, X_OK) == 0 else {
    throw TidemarkError(
      .general, "\(path) is missing: apt-get install \(package) (scripts/test.sh installs it)")
  }
  return path
}

/// Waits for a child to exit, at most `seconds`; SIGKILL after that. Returns the wait status, nil when killed.
@discardableResult
func reap(_ pid: pid_t, seconds: Double) -> Int32? {
  var status: Int32 = 0
  let deadline = Date().addingTimeInterval(seconds)
  while Date() < deadline {
    if waitpid(pid, &status, WNOHANG) == pid { return status }
    usleep(20_000)
  }
  kill(pid, SIGKILL)
  _ = waitpid(pid, &status, 0)
  return nil
}

/// A throwaway PostgreSQL cluster (initdb as `nobody`: postgres refuses to run as root), trust authentication,
/// listening on 127.0.0.1 and on a socket in the workspace. Superuser: postgres.
final class PostgresServer {
  let bin: String
  let port: Int
  private var pid: pid_t = 0

  init(_ ws: Workspace) throws {
    let root = "/usr/lib/postgresql"
    let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [])
      .filter { access("\(root)/\($0)/bin/initdb", X_OK) == 0 }.sorted { (Int($0) ?? 0) < (Int($1) ?? 0) }
    guard let v = versions.last else {
      throw TidemarkError(
        .general,
        "PostgreSQL server binaries are missing (no \(root)/*/bin/initdb): apt-get install postgresql "
          + "(scripts/test.sh installs it)")
    }
    bin = "\(root)/\(v)/bin"
    let dir = ws.sub("pg")
    try FileManager.default.createDirectory(atPath: dir + "/sock", withIntermediateDirectories: true)
    // As root (scripts/test.sh): the cluster belongs to nobody. Otherwise as the user running the tests.
    var asNobody: [String] = []
    if getuid() == 0 {
      try Tools.run("/bin/chown", ["-R", "nobody:nogroup", dir])
      asNobody = ["/usr/bin/setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
    }
    let initdbArgv =
      asNobody + [
        bin + "/initdb", "-D", dir + "/data", "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync",
      ]
    let initdb = try Tools.run(initdbArgv[0], Array(initdbArgv.dropFirst()), cwd: dir)
    guard initdb.status == 0 else { throw TidemarkError(.general, "initdb failed: \(initdb.stderr)") }
    port = try unusedPort()
    pid = try spawn(
      asNobody + [
        bin + "/postgres", "-D", dir + "/data", "-p", String(port), "-k", dir + "/sock", "-c",
        "listen_addresses=127.0.0.1", "-c", "fsync=off",
      ])
    for _ in 0..<200 {
      if try Tools.run(bin + "/pg_isready", ["-q", "-h", "127.0.0.1", "-p", String(port)]).status == 0 { return }
      if waitpid(pid, nil, WNOHANG) == pid {
        pid = 0
        break
      }
      usleep(50_000)
    }
    stop()
    throw TidemarkError(.general, "postgres did not start on port \(port)")
  }

  /// psql -At: unaligned rows, no headers; fails the test on an SQL error.
  func psql(_ db: String, _ sql: String) throws -> String {
    let r = try Tools.run(
      bin + "/psql",
      [
        "-h", "127.0.0.1", "-p", String(port), "-U", "postgres", "-d", db, "-At", "-v", "ON_ERROR_STOP=1",
        "-c", sql,
      ])
    guard r.status == 0 else { throw TidemarkError(.general, "psql \(sql): \(r.stderr)") }
    return r.out.trimmingCharacters(in: .whitespacesAndNewlines)
  }

  /// Fast shutdown (SIGINT), SIGKILL if it lingers.
  func stop() {
    guard pid > 0 else { return }
    kill(pid, SIGINT)
    reap(pid, seconds: 15)
    pid = 0
  }

  deinit { stop() }
}

/// A throwaway redis-server with its own configuration: 127.0.0.1, a random port, its directory in the workspace,
/// in the foreground, no automatic saves.
final class RedisServer {
  let port: Int
  let password: String
  let dir: String
  private var pid: pid_t = 0

  init(_ ws: Workspace, name: String, password: String) throws {
    let exe = try requireTool("/usr/bin/redis-server", package: "redis-server")
    self.password = password
    dir = ws.sub(name)
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    port = try unusedPort()
    try """
    port \(port)
    bind 127.0.0.1
    dir \(dir)
    daemonize no
    save ""
    appendonly no
    requirepass \(password)
    logfile \(dir)/redis.log
    """.write(toFile: dir + "/redis.conf", atomically: true, encoding: .utf8)
    pid = try spawn([exe, dir + "/redis.conf"])
    for _ in 0..<200 {
      if (try? cli(["PING"])) == "PONG" { return }
      if waitpid(pid, nil, WNOHANG) == pid {
        pid = 0
        break
      }
      usleep(50_000)
    }
    stop()
    throw TidemarkError(
      .general,
      "redis-server did not start: \((try? String(contentsOfFile: dir + "/redis.log", encoding: .utf8)) ?? "")")
  }

  func cli(_ args: [String]) throws -> String {
    let r = try Tools.run(
      try requireTool("/usr/bin/redis-cli", package: "redis-tools"), ["-h", "127.0.0.1", "-p", String(port)] + args,
      env: ["REDISCLI_AUTH": password])
    guard r.status == 0 else { throw TidemarkError(.general, "redis-cli \(args): \(r.stderr)") }
    return r.out.trimmingCharacters(in: .whitespacesAndNewlines)
  }

  /// SHUTDOWN NOSAVE (a child spawned from the test may have SIGTERM blocked), SIGKILL if it lingers.
  func stop() {
    guard pid > 0 else { return }
    _ = try? cli(["SHUTDOWN", "NOSAVE"])
    reap(pid, seconds: 5)
    pid = 0
  }

  deinit { stop() }
}

@Suite(.serialized) struct DatabaseSourceTests {
  @Test func databaseSourcesAreConsistentWhileInUseAndAFailingDumpLeavesNoSnapshot() throws {
    let ws = try Workspace("db-sources")
    let sqlite3 = try requireTool("/usr/bin/sqlite3", package: "sqlite3")
    let checkRDB = try requireTool("/usr/bin/redis-check-rdb", package: "redis-tools")
    _ = try requireTool("/usr/bin/pg_dump", package: "postgresql-client")
    let pg = try PostgresServer(ws)
    defer { pg.stop() }
    let redis = try RedisServer(ws, name: "redis", password: "redis-secret")
    defer { redis.stop() }
    try "secret\n".write(toFile: ws.sub("pw"), atomically: true, encoding: .utf8)
    try "redis-secret\n".write(toFile: ws.sub("redis-pw"), atomically: true, encoding: .utf8)

    // PostgreSQL: a database with data, and a table the source's `options` leave out.
    _ = try pg.psql("postgres", "CREATE DATABASE app")
    _ = try pg.psql(
      "app",
      """
      CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, qty int NOT NULL);
      INSERT INTO items SELECT g, md5(g::text), g % 97 FROM generate_series(1, 50000) g;
      CREATE TABLE scratch (x int); INSERT INTO scratch VALUES (1);
      """)
    let itemsSum =
      "SELECT count(*) || ' ' || md5(string_agg(id || ':' || name || ':' || qty, ',' ORDER BY id)) FROM items"
    let pgBefore = try pg.psql("app", itemsSum)

    // Redis: keys set before the cycle.
    _ = try redis.cli(["EVAL", "for i=1,10000 do redis.call('SET','key:'..i,i) end", "0"])
    _ = try redis.cli(["HSET", "config", "mode", "primary", "epoch", "7"])

    // SQLite: a database with data, and a writer inserting one row per transaction throughout the cycle.
    let db = ws.sub("app.db")
    let seed = try Tools.run(
      sqlite3,
      [
        db,
        """
        CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL);
        WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000)
        INSERT INTO t (v) SELECT hex(randomblob(100)) FROM c;
        """,
      ])
    try #require(seed.status == 0, "\(seed.stderr)")
    func sqliteCount(_ file: String) throws -> Int {
      let r = try Tools.run(sqlite3, ["-cmd", ".timeout 10000", file, "SELECT count(*) FROM t"])
      guard r.status == 0, let n = Int(r.out.trimmingCharacters(in: .whitespacesAndNewlines)) else {
        throw TidemarkError(.general, "counting rows in \(file): \(r.stderr)")
      }
      return n
    }
    let writer = try spawn([
      "/bin/sh", "-c",
      """
      i=0
      while [ $i -lt 4000 ] && [ ! -e \(ws.sub("stop-writer")) ]; do
        \(sqlite3) -cmd '.timeout 20000' \(db) "INSERT INTO t (v) VALUES (hex(randomblob(100)))" || exit 1
        i=$((i + 1))
      done
      """,
    ])
    var writerStatus: Int32? = nil
    defer {
      if writerStatus == nil {
        FileManager.default.createFile(atPath: ws.sub("stop-writer"), contents: nil)
        reap(writer, seconds: 10)
      }
    }
    let seeded = 20000
    var sqliteBefore = try sqliteCount(db)
    for _ in 0..<200 where sqliteBefore < seeded + 20 {
      usleep(20_000)
      sqliteBefore = try sqliteCount(db)
    }
    try #require(sqliteBefore >= seeded + 20, "the writer does not write")

    try """
    host: dbhost
    repository: \(ws.sub("dc"))
    password-file: \(ws.sub("pw"))
    sources:
      - postgres: app
        host: 127.0.0.1
        port: \(pg.port)
        user: postgres
        options: [--exclude-table=scratch]
        verify: sh \(ws.sub("verify-pg.sh")) {}
      - sqlite: \(db)
        verify: sh \(ws.sub("verify-sqlite.sh")) {}
      - redis: 127.0.0.1:\(redis.port)
        password-file: \(ws.sub("redis-pw"))
        verify: \(checkRDB) {} | grep -q '10001 keys read'
    targets:
      - name: dr
        repository: \(ws.sub("dr"))
    """.write(toFile: ws.sub("c.yaml"), atomically: true, encoding: .utf8)
    let env = ["TIDEMARK_STATE_DIR": ws.sub("state")]
    // A copy left behind by a cycle that died is removed by the next one.
    try FileManager.default.createDirectory(atPath: ws.sub("state/tmp"), withIntermediateDirectories: true)
    FileManager.default.createFile(atPath: ws.sub("state/tmp/sqlite-99999-app.db"), contents: Data("x".utf8))
    #expect(try ws.tidemark(["init", "--config", "c.yaml"], password: "", env: env).status == 0)
    let cycle = try ws.tidemark(["replicate", "--once", "--config", "c.yaml"], password: "", env: env)
    let sqliteAfter = try sqliteCount(db)
    FileManager.default.createFile(atPath: ws.sub("stop-writer"), contents: nil)
    writerStatus = reap(writer, seconds: 20)
    try #require(cycle.status == 0, "\(cycle.out) \(cycle.stderr)")
    // The writer never failed (its busy timeout covers the copy) and kept writing during the cycle.
    #expect(writerStatus == 0, "the SQLite writer failed: status \(String(describing: writerStatus))")
    #expect(sqliteAfter > sqliteBefore)
    // No copy is left in the state directory, and its directory is private.
    #expect(try FileManager.default.attributesOfItem(atPath: ws.sub("state/tmp"))[.posixPermissions] as? Int == 0o700)
    #expect(try FileManager.default.contentsOfDirectory(atPath: ws.sub("state/tmp")) == [])

    // One snapshot per source, each holding one file: paths ["/" + filename].
    let snaps = try ws.restic(["-r", ws.sub("dr"), "snapshots", "--json"], password: "secret")
    let list = try #require(try JSONSerialization.jsonObject(with: Data(snaps.stdout)) as? [[String: Any]])
    #expect(
      Set(list.compactMap { ($0["paths"] as? [String])?.joined(separator: ",") })
        == ["/app.pgdump", "/app.db", "/dump.rdb"], "\(snaps.out)")
    #expect(list.allSatisfy { $0["hostname"] as? String == "dbhost" })
    func dump(_ name: String) throws -> String {
      let r = try ws.restic(
        ["-r", ws.sub("dr"), "dump", "--path", "/" + name, "latest", "/" + name], password: "secret")
      guard r.status == 0, !r.stdout.isEmpty else { throw TidemarkError(.general, "restic dump \(name): \(r.stderr)") }
      let out = ws.sub("restored-" + name)
      try Data(r.stdout).write(to: URL(fileURLWithPath: out))
      return out
    }

    // PostgreSQL: pg_restore into a fresh database gives what was committed before the cycle, without `scratch`.
    let pgDump = try dump("app.pgdump")
    _ = try pg.psql("postgres", "CREATE DATABASE restored")
    let restore = try Tools.run(
      pg.bin + "/pg_restore",
      ["-h", "127.0.0.1", "-p", String(pg.port), "-U", "postgres", "-d", "restored", "--exit-on-error", pgDump])
    #expect(restore.status == 0, "\(restore.stderr)")
    #expect(try pg.psql("restored", itemsSum) == pgBefore)
    #expect(try pg.psql("restored", "SELECT count(*) FROM pg_tables WHERE tablename = 'scratch'") == "0")

    // SQLite, restored with tidemark: intact, and a state between the counts before and after the cycle; every
    // row id up to the count (one row per transaction: a torn copy would show gaps or fail the check).
    let ids = try ws.tidemark(
      ["snapshots", "--json", "--path", "/app.db", "-r", ws.sub("dc"), "--password-file", ws.sub("pw")], password: "")
    let sqliteSnap = try #require(
      (try JSONSerialization.jsonObject(with: Data(ids.stdout)) as? [[String: Any]])?.last?["id"] as? String,
      "\(ids.out) \(ids.stderr)")
    let r = try ws.tidemark(
      [
        "restore", sqliteSnap, "--target", ws.sub("sqlite-restore"), "-r", ws.sub("dc"), "--password-file",
        ws.sub("pw"),
      ],
      password: "")
    #expect(r.status == 0, "\(r.stderr)")
    let copy = ws.sub("sqlite-restore/app.db")
    let check = try Tools.run(sqlite3, [copy, "PRAGMA integrity_check"])
    #expect(check.out == "ok\n", "\(check.out) \(check.stderr)")
    let restoredRows = try sqliteCount(copy)
    #expect(
      restoredRows >= sqliteBefore && restoredRows <= sqliteAfter, "\(sqliteBefore) \(restoredRows) \(sqliteAfter)")
    #expect(
      try Tools.run(sqlite3, [copy, "SELECT max(id) FROM t"]).out == "\(restoredRows)\n")

    // Redis: a valid RDB that a second server loads with every key set before the cycle.
    let rdb = try dump("dump.rdb")
    let rdbCheck = try Tools.run(checkRDB, [rdb])
    #expect(rdbCheck.status == 0 && rdbCheck.out.contains("RDB looks OK"), "\(rdbCheck.out) \(rdbCheck.stderr)")
    try FileManager.default.createDirectory(atPath: ws.sub("redis2"), withIntermediateDirectories: true)
    try FileManager.default.copyItem(atPath: rdb, toPath: ws.sub("redis2/dump.rdb"))
    let redis2 = try RedisServer(ws, name: "redis2", password: "other")
    defer { redis2.stop() }
    #expect(try redis2.cli(["DBSIZE"]) == "10001")
    #expect(try redis2.cli(["GET", "key:1234"]) == "1234")
    #expect(try redis2.cli(["HGET", "config", "epoch"]) == "7")
    redis2.stop()

    // The drill restores each database's newest snapshot from DR and runs its verify command: the dump holds
    // exactly the rows committed before the cycle, the SQLite copy is intact with a row count between the counts
    // before and after the cycle, the RDB has every key.
    try """
    n=$(\(pg.bin)/pg_restore -f - -t items "$1" | awk '/^COPY /{f=1;next} /^\\\\\\.$/{f=0;next} f' | wc -l)
    test "$n" = 50000
    """.write(toFile: ws.sub("verify-pg.sh"), atomically: true, encoding: .utf8)
    try """
    test "$(\(sqlite3) "$1" 'pragma integrity_check')" = ok
    n=$(\(sqlite3) "$1" 'select count(*) from t')
    test "$n" -ge \(sqliteBefore) && test "$n" -le \(sqliteAfter)
    """.write(toFile: ws.sub("verify-sqlite.sh"), atomically: true, encoding: .utf8)
    let drill = try ws.tidemark(["drill", "--json", "--config", "c.yaml"], password: "", env: env)
    #expect(drill.status == 0, "\(drill.out) \(drill.stderr)")
    let dj = try JSONSerialization.jsonObject(with: Data(drill.stdout)) as? [String: Any] ?? [:]
    let drilled = (dj["repositories"] as? [[String: Any]])?.first?["sources"] as? [[String: Any]] ?? []
    #expect(drilled.map { $0["source"] as? String ?? "" } == ["app.pgdump", "app.db", "dump.rdb"], "\(drill.out)")
    #expect(drilled.allSatisfy { $0["verify_ok"] as? Bool == true }, "\(drill.out)")
    // A verify command that does not hold fails the drill, naming the source.
    try "exit 3\n".write(toFile: ws.sub("verify-pg.sh"), atomically: true, encoding: .utf8)
    let failed = try ws.tidemark(["drill", "--config", "c.yaml"], password: "", env: env)
    #expect(failed.status == 1 && failed.stderr.contains("app.pgdump: verify command"), "\(failed.stderr)")

    // Failing sources: a database that does not exist, a SQLite file that does not exist (and must not be
    // created), a wrong Redis password. The cycle fails, names each, and no snapshot is added.
    try "wrong\n".write(toFile: ws.sub("wrong-pw"), atomically: true, encoding: .utf8)
    try """
    host: dbhost
    repository: \(ws.sub("dc"))
    password-file: \(ws.sub("pw"))
    sources:
      - postgres: nosuchdb
        host: 127.0.0.1
        port: \(pg.port)
        user: postgres
      - sqlite: \(ws.sub("missing.db"))
      - redis: 127.0.0.1:\(redis.port)
        password-file: \(ws.sub("wrong-pw"))
    """.write(toFile: ws.sub("bad.yaml"), atomically: true, encoding: .utf8)
    let before = try ws.restic(["-r", ws.sub("dc"), "snapshots", "--json"], password: "secret").out
    let bad = try ws.tidemark(["replicate", "--once", "--config", "bad.yaml"], password: "", env: env)
    #expect(bad.status == 1, "\(bad.out) \(bad.stderr)")
    for s in ["postgres nosuchdb exited with 1", "sqlite \(ws.sub("missing.db"))", "redis 127.0.0.1:\(redis.port)"] {
      #expect(bad.stderr.contains(s), "\(s): \(bad.stderr)")
    }
    #expect(bad.stderr.contains("nosuchdb\" does not exist"), "\(bad.stderr)")
    #expect(!FileManager.default.fileExists(atPath: ws.sub("missing.db")))
    #expect(try ws.restic(["-r", ws.sub("dc"), "snapshots", "--json"], password: "secret").out == before)
    #expect(try FileManager.default.contentsOfDirectory(atPath: ws.sub("state/tmp")) == [])
  }
}
