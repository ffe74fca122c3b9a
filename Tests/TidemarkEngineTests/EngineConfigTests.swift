// The engine configuration: a full example parses to the expected values; every mistake is one line naming
// the file, the line and the key.
import Foundation
import Testing
import TidemarkCore
import TidemarkEngine

@Suite struct EngineConfigTests {
  static let example = """
    host: dc1
    repository: /srv/tidemark
    password-file: /etc/tidemark/password
    interval: 5m
    sources:
      - path: /srv/data
        exclude: ["*.tmp", /srv/data/cache]
      - command: pg_dump -Fc app
        filename: app.dump
        verify: pg_restore --list {} > /dev/null
      - postgres: app
        host: db1
        port: 5433
        user: backup
        options: [--exclude-table=audit_log]
        verify: pg_restore --list {} >/dev/null
      - sqlite: /var/lib/app/app.db
        verify: sqlite3 {} 'pragma integrity_check'
      - redis: 127.0.0.1:6379
        password-file: /etc/tidemark/redis-password
    hooks:
      before: [sync]
      after: echo done
      on-failure:
        - logger tidemark failed
    targets:
      - name: dr1
        repository: sftp:backup@dr1:/srv/tidemark
        options:
          sftp.identity: /root/.ssh/id_ed25519
        limit-upload: 50000
        retention:
          keep-daily: 30
      - name: s3
        repository: s3:https://minio.dr2:9000/backups/dc1
        password-file: /etc/tidemark/s3-password
        options: [s3.connections=8]
        cacert: /etc/tidemark/dr-ca.crt
    retention:
      keep-hourly: 48
      keep-daily: 7
      keep-weekly: 4
      keep-monthly: 12
      keep-within: 2d
    metrics:
      listen: 127.0.0.1:9817
      textfile: /var/lib/node_exporter/tidemark.prom
    alerts:
      rpo: 15m
      command: /usr/local/bin/page-oncall
      webhook: https://hooks.example.com/tidemark
    """

  @Test func fullExampleParses() throws {
    let c = try EngineConfig.parse(Self.example, file: "t.yaml")
    #expect(c.host == "dc1" && c.repository == "/srv/tidemark" && c.passwordFile == "/etc/tidemark/password")
    #expect(c.interval == .seconds(300))
    #expect(
      c.sources == [
        .init(.path("/srv/data", exclude: ["*.tmp", "/srv/data/cache"])),
        .init(.command("pg_dump -Fc app", filename: "app.dump"), verify: "pg_restore --list {} > /dev/null"),
        .init(
          .postgres(
            .init(database: "app", host: "db1", port: 5433, user: "backup", options: ["--exclude-table=audit_log"])),
          verify: "pg_restore --list {} >/dev/null"),
        .init(.sqlite(.init(path: "/var/lib/app/app.db")), verify: "sqlite3 {} 'pragma integrity_check'"),
        .init(.redis(.init(address: "127.0.0.1:6379", passwordFile: "/etc/tidemark/redis-password"))),
      ])
    // The stored file of each stream-like source (defaults for the database kinds); none for a path.
    #expect(c.sources.map(\.kind.filename) == [nil, "app.dump", "app.pgdump", "app.db", "dump.rdb"])
    #expect(c.hooks.before == ["sync"] && c.hooks.after == ["echo done"])
    #expect(c.hooks.onFailure == ["logger tidemark failed"])
    #expect(c.targets.map(\.name) == ["dr1", "s3"])
    #expect(c.targets[0].options == ["sftp.identity=/root/.ssh/id_ed25519"] && c.targets[0].limitUploadKiB == 50000)
    #expect(c.targets[0].retention?.keepDaily == 30)
    #expect(c.targets[1].options == ["s3.connections=8"] && c.targets[1].passwordFile == "/etc/tidemark/s3-password")
    #expect(c.targets[1].caFiles == ["/etc/tidemark/dr-ca.crt"] && c.targets[0].caFiles.isEmpty)
    #expect(c.retention.keepHourly == 48 && c.retention.keepMonthly == 12 && c.retention.keepWithin == "2d")
    #expect(c.metrics.listen == "127.0.0.1:9817" && c.alerts.rpo == .seconds(900))
    #expect(c.alerts.webhook == "https://hooks.example.com/tidemark")
  }

  /// Each broken variant: (the line to change, its replacement, what the error must say). Errors name the line of
  /// the bad key or value, except whole-file problems (no `:line`).
  @Test(arguments: [
    ("interval: 5m", "intervall: 5m", "unknown key intervall"),
    ("interval: 5m", "interval: 5x", "interval: invalid duration 5x"),
    ("limit-upload: 50000", "limit-upload: lots", "targets[0].limit-upload: expected a number"),
    ("keep-daily: 7", "keep-dayly: 7", "unknown key retention.keep-dayly"),
    ("keep-within: 2d", "keep-within: soon", "retention.keep-within: invalid duration"),
    ("- name: s3", "- nam: s3", "unknown key targets[1].nam"),
    ("listen: 127.0.0.1:9817", "listen: localhost", "metrics.listen: expected host:port"),
    ("webhook: https://hooks.example.com/tidemark", "webhook: hooks", "alerts.webhook: expected an http"),
    ("port: 5433", "port: 70000", "sources[2].port: expected a port number"),
    ("port: 5433", "prot: 5433", "unknown key sources[2].prot"),
    ("options: [--exclude-table=audit_log]", "options: [-f, out.sql]", "sources[2].options: -f: pg_dump writes"),
    ("- sqlite: /var/lib/app/app.db", "- sqlite: app.db", "sources[3].sqlite: expected an absolute path"),
    ("- redis: 127.0.0.1:6379", "- redis: localhost", "sources[4].redis: expected HOST:PORT"),
    ("- redis: 127.0.0.1:6379", "- redis: 127.0.0.1:0", "sources[4].redis: expected HOST:PORT"),
    ("password-file: /etc/tidemark/redis-password", "exclude: [x]", "unknown key sources[4].exclude"),
    ("verify: sqlite3 {} 'pragma integrity_check'", "port: 1", "unknown key sources[3].port"),
    ("- postgres: app", "- postgres: dbname=app host=db1", "sources[2].postgres: with a connection string"),
  ])
  func mistakesAreOneLineWithFileLineAndKey(_ broken: (String, String, String)) throws {
    var lines = Self.example.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    let i = try #require(lines.firstIndex { $0.trimmingCharacters(in: .whitespaces) == broken.0 })
    lines[i] = lines[i].replacingOccurrences(of: broken.0, with: broken.1)
    do {
      _ = try EngineConfig.parse(lines.joined(separator: "\n"), file: "t.yaml")
      Issue.record("accepted: \(broken.1)")
    } catch let e as TidemarkError {
      #expect(e.message.hasPrefix("t.yaml:\(i + 1): \(broken.2)"), "\(e.message)")
      #expect(!e.message.contains("\n"))
    }
  }

  @Test func wholeFileMistakes() {
    for (text, message) in [
      (Self.example.replacingOccurrences(of: "repository: /srv/tidemark\n", with: ""), "`repository` is missing"),
      (Self.example.replacingOccurrences(of: "- name: s3", with: "- name: dr1"), "two targets are named dr1"),
      (Self.example.replacingOccurrences(of: "filename: app.dump", with: "filename: a/b"), "needs `filename`"),
      ("- just\n- a list\n", "must be a mapping"), ("key: [unclosed", "not valid YAML"),
      (
        Self.example.replacingOccurrences(of: "sqlite: /var/lib/app/app.db", with: "sqlite: /srv/app.pgdump"),
        "two sources are stored as app.pgdump"
      ),
      ("repository: /x\nsources:\n  - verify: 'true'\n", "a source needs one of path, command, postgres"),
      ("repository: /x\nsources:\n  - path: /a\n    sqlite: /b.db\n", "a source has only one of"),
      ("repository: /x\nsources:\n  - redis: /run/redis.sock\n    filename: ../x\n", "needs `filename`"),
      ("repository: /x\ninterval: 1m\ncontinuous: 2m\n", "continuous must be between 100ms and interval"),
      ("repository: /x\ninterval: 1h\nfull-scan: 30m\n", "full-scan must be at least interval"),
      ("repository: /x\njournal: maybe\n", "journal: expected true or false"),
    ] {
      #expect(throws: TidemarkError.self) { _ = try EngineConfig.parse(text, file: "t.yaml") }
      do {
        _ = try EngineConfig.parse(text, file: "t.yaml")
      } catch let e as TidemarkError {
        #expect(e.message.contains(message) && e.message.hasPrefix("t.yaml"), "\(e.message)")
      } catch {}
    }
  }

  @Test func continuousCyclesAndTheJournal() throws {
    let c = try EngineConfig.parse("repository: /x\ncontinuous: 5s\nfull-scan: 2h\njournal: on\n", file: "t.yaml")
    #expect(c.continuous == .seconds(5) && c.fullScan == .seconds(7200) && c.journal)
    let d = try EngineConfig.parse("repository: /x\n", file: "t.yaml")
    #expect(d.continuous == nil && d.fullScan == .seconds(3600) && d.journal)
    #expect(try !EngineConfig.parse("repository: /x\njournal: off\n", file: "t.yaml").journal)
  }

  @Test func durations() {
    #expect(EngineConfig.parseDuration("30s") == .seconds(30))
    #expect(EngineConfig.parseDuration("1h30m") == .seconds(5400))
    #expect(EngineConfig.parseDuration("250ms") == .milliseconds(250))
    #expect(EngineConfig.parseDuration("90") == .seconds(90))
    #expect(EngineConfig.parseDuration("5x") == nil && EngineConfig.parseDuration("") == nil)
  }
}
