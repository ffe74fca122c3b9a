// A DC and a DR site as two "machines" that use the same paths. Each site's
// commands run in a mount namespace of their own (`unshare -m`) in which the site's directory is bind-mounted on
// one shared path, so both sites see the same repository, data and state paths with different contents. The DR
// site's sshd runs in the DR namespace, so the DC reaches the DR repository only over SFTP. restic, over its own
// sftp command, is the oracle: after every cycle the DR repository checks clean (`--read-data`), lists the DC's
// snapshot IDs, and grew by what the DC backup added; a cycle killed with SIGKILL anywhere leaves DR clean, and
// the next cycle sends exactly what DR still lacked, undisturbed by the dead process's locks.
import Foundation
import Testing
import TidemarkCore

/// Two sites on this host (see the top of the file); the DR sshd is stopped when this goes away.
final class TwoSites {
  let ws: Workspace
  /// The path both sites use; in the test's own namespace it stays an empty directory.
  let shared: String
  /// The sites' disks (bind-mounted on `shared` in their namespaces).
  let dc: String
  let dr: String
  let server: SSHServer

  /// restic's way to the DR repository: through the DR sshd, so in the DR namespace.
  var resticDR: [String] {
    ["-r", "sftp:root@127.0.0.1:\(shared)/repo", "-o", "sftp.command=\(server.resticCommand)", "--no-cache"]
  }

  init(_ name: String, targetExtra: String = "", extra: String = "") throws {
    ws = try Workspace(name)
    shared = ws.sub("site")
    dc = ws.sub("dc-site")
    dr = ws.sub("dr-site")
    for d in [shared, dc + "/data", dr] {
      try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    }
    // Keys, config and port from SSHServer; the sshd itself runs again in the DR namespace.
    server = try SSHServer(ws)
    server.stop()
    server.pid = try spawn([
      "/usr/bin/unshare", "-m", "/bin/sh", "-c",
      "mount --bind \(dr) \(shared) && exec /usr/sbin/sshd -D -f \(server.dir)/sshd_config -E \(server.dir)/sshd.log",
    ])
    var up = false
    for _ in 0..<100 where !up {
      up = try Tools.run("/bin/bash", ["-c", "exec 3<>/dev/tcp/127.0.0.1/\(server.port)"]).status == 0
      if !up { usleep(50_000) }
    }
    guard up else { throw TidemarkError(.general, "the DR sshd did not start: see \(server.dir)/sshd.log") }
    for site in [dc, dr] { try "secret\n".write(toFile: site + "/pw", atomically: true, encoding: .utf8) }
    try """
    host: dc1
    repository: \(shared)/repo
    password-file: \(shared)/pw
    interval: 1s
    sources:
      - path: \(shared)/data
    targets:
      - name: dr
        repository: sftp://root@127.0.0.1:\(server.port)/\(shared)/repo
        options:
          sftp.identity: \(server.userKey)
          sftp.known-hosts: \(server.knownHosts)
          sftp.agent: "no"
    \(targetExtra)
    \(extra)
    """.write(toFile: dc + "/dc.yaml", atomically: true, encoding: .utf8)
  }

  deinit { server.stop() }

  /// The shell line that runs `command` on `site` (in its namespace, in the shared directory).
  func line(_ site: String, _ command: String) -> String {
    "mount --bind \(site) \(shared) && cd \(shared) && exec \(command)"
  }

  /// Runs `command` (a shell line) on `site` and waits for it.
  func run(_ site: String, _ command: String) throws -> RunResult {
    let r = try Tools.run(
      "/usr/bin/unshare", ["-m", "/bin/sh", "-c", line(site, command)],
      env: ["TIDEMARK_STATE_DIR": shared + "/state"])
    if r.status == 0 && command.contains(" init ") {
      try CheapKeys.rewrap(site + "/repo", password: Array("secret".utf8))
    }
    return r
  }

  /// argv for posix_spawn: `command` on `site`, with a clean environment (the test's RESTIC_/TIDEMARK_ variables
  /// stay out); stderr appended to the site's `spawned.log`.
  func spawnArgs(_ site: String, _ command: String) -> [String] {
    [
      "/usr/bin/env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root",
      "TIDEMARK_STATE_DIR=\(shared)/state", "/usr/bin/unshare", "-m", "/bin/sh", "-c",
      line(site, command + " 2>>\(shared)/spawned.log"),
    ]
  }

  var cycleCommand: String { "\"\(Tools.tidemark)\" replicate --once --config \(shared)/dc.yaml" }

  func cycle() throws -> RunResult { try run(dc, cycleCommand) }

  /// The DC's state.json (in the DC's state directory).
  func state() throws -> [String: Any] {
    let data = try Data(contentsOf: URL(fileURLWithPath: dc + "/state/state.json"))
    return try JSONSerialization.jsonObject(with: data) as? [String: Any] ?? [:]
  }

  /// DR's snapshot IDs as restic lists them, over SFTP with DR's key.
  func drSnapshotIDs() throws -> [String] {
    let r = try ws.restic(resticDR + ["snapshots", "--json"], password: "secret")
    guard r.status == 0 else { return ["restic snapshots failed: \(r.stderr)"] }
    let list = try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [[String: Any]] ?? []
    return list.compactMap { $0["id"] as? String }.sorted()
  }

  /// The DC's snapshot IDs: the names of its snapshot files (a snapshot's ID is its file's name).
  func dcSnapshotIDs() throws -> [String] {
    try FileManager.default.contentsOfDirectory(atPath: dc + "/repo/snapshots").sorted()
  }

  /// Pack, index and snapshot files of a site's repository (path inside it -> size).
  func files(_ site: String) throws -> [String: Int64] {
    try storedFiles(ws, String(site.dropFirst(ws.path.count + 1)) + "/repo")
  }

  /// The lock files of both repositories (by name: a save killed half-way leaves a temp file, which is no lock).
  func locks() -> [String] {
    [dc, dr].flatMap { (try? FileManager.default.contentsOfDirectory(atPath: $0 + "/repo/locks")) ?? [] }
      .filter { RawID(hex: $0) != nil }
  }

  func write(_ relative: String, randomBytes n: Int) throws {
    let url = URL(fileURLWithPath: dc + "/data/" + relative)
    try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
    var g = SystemRandomNumberGenerator()
    var bytes = [UInt8](repeating: 0, count: n)
    bytes.withUnsafeMutableBytes { b in
      for i in stride(from: 0, to: n - n % 8, by: 8) { b.storeBytes(of: g.next(), toByteOffset: i, as: UInt64.self) }
    }
    try Data(bytes).write(to: url)
  }
}

@Suite(.serialized) struct TwoSiteTests {
  @Test func everyCycleLeavesDRCheckedCleanWithTheDCSnapshotsAndGrowthOfWhatTheBackupAdded() throws {
    let s = try TwoSites("two-site")
    let initRun = try s.run(s.dc, "\"\(Tools.tidemark)\" init --config \(s.shared)/dc.yaml")
    #expect(initRun.status == 0, "\(initRun.stderr)")
    let changes: [() throws -> Void] = [
      {
        try s.write("a/one.bin", randomBytes: 900_000)
        for i in 0..<20 {
          try "line \(i)\n".write(toFile: s.dc + "/data/a/t\(i).txt", atomically: true, encoding: .utf8)
        }
      },
      {
        try s.write("b/two.bin", randomBytes: 1_500_000)
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: s.dc + "/data/a/one.bin"))
        h.seekToEndOfFile()
        h.write(Data((0..<300_000).map { _ in UInt8.random(in: 0...255) }))
        try h.close()
      },
      {},  // nothing changed: a new snapshot, nothing new to send but the snapshot file
      {
        try FileManager.default.removeItem(atPath: s.dc + "/data/a/one.bin")
        for i in 0..<40 { try s.write("c/small\(i)", randomBytes: 5_000 + i * 100) }
      },
      {
        try FileManager.default.moveItem(atPath: s.dc + "/data/b", toPath: s.dc + "/data/b-moved")
        try s.write("d/three.bin", randomBytes: 2_000_000)
      },
    ]
    var drData: Int64 = 0
    for (cycle, change) in changes.enumerated() {
      try change()
      let c = try s.cycle()
      #expect(c.status == 0, "cycle \(cycle): \(c.out) \(c.stderr)")
      let st = try s.state()
      let added = Int64(st["backupBytesAdded"] as? Int ?? -1)
      let target = (st["targets"] as? [[String: Any]])?.first ?? [:]
      #expect(target["lastError"] == nil && target["name"] as? String == "dr", "cycle \(cycle): \(target)")
      // DR's data/ grew by what the backup added (pack headers aside).
      let now = try s.files(s.dr).filter { $0.key.hasPrefix("data/") }.values.reduce(0, +)
      let growth = now - drData
      drData = now
      #expect(
        growth >= added && growth <= added + added / 5 + 16_384, "cycle \(cycle): DR grew \(growth), added \(added)")
      let copied = Int64(target["bytesCopiedLast"] as? Int ?? -1)
      #expect(
        copied >= growth && copied <= added + added / 5 + 16_384, "cycle \(cycle): copied \(copied), added \(added)")
      let check = try s.ws.restic(s.resticDR + ["check", "--read-data"], password: "secret")
      #expect(check.status == 0, "cycle \(cycle): \(check.out) \(check.stderr)")
      let dcIDs = try s.dcSnapshotIDs()
      #expect(dcIDs.count == cycle + 1)
      #expect(try s.drSnapshotIDs() == dcIDs, "cycle \(cycle)")
    }
    // The same paths, different disks: the DC's repository and data stayed on the DC's disk, DR holds a replica
    // (same config, its own key file) and nothing else; the shared path itself never held anything.
    #expect(try FileManager.default.contentsOfDirectory(atPath: s.shared).isEmpty)
    #expect(try Set(FileManager.default.contentsOfDirectory(atPath: s.dr)) == ["pw", "repo"])
    #expect(FileManager.default.contentsEqual(atPath: s.dc + "/repo/config", andPath: s.dr + "/repo/config"))
    #expect(try s.files(s.dc) == (try s.files(s.dr)))
    let keys = { (site: String) in
      Set((try? FileManager.default.contentsOfDirectory(atPath: site + "/repo/keys")) ?? [])
    }
    #expect(keys(s.dc).isDisjoint(with: keys(s.dr)) && !keys(s.dr).isEmpty)

    // A daemon on the DC: two more cycles with new data, then SIGTERM; DR still checks clean and matches.
    try s.write("e/daemon.bin", randomBytes: 700_000)
    let cyclesBefore = try s.state()["cycles"] as? Int ?? 0
    let pid = try spawn(s.spawnArgs(s.dc, "\"\(Tools.tidemark)\" daemon --config \(s.shared)/dc.yaml"))
    var exited = false
    defer {
      if !exited {
        kill(pid, SIGKILL)
        _ = waitpid(pid, nil, 0)
      }
    }
    func cycles() -> Int { ((try? s.state()) ?? [:])["cycles"] as? Int ?? 0 }
    for _ in 0..<150 where cycles() < cyclesBefore + 2 {
      Thread.sleep(forTimeInterval: 0.1)
    }
    kill(pid, SIGTERM)
    var status: Int32 = 0
    for _ in 0..<200 where !exited {
      exited = waitpid(pid, &status, WNOHANG) == pid
      if !exited { Thread.sleep(forTimeInterval: 0.05) }
    }
    #expect(exited && (status >> 8) & 0xff == 0, "daemon status \(status)")
    let st = try s.state()
    #expect((st["cycles"] as? Int ?? 0) >= cyclesBefore + 2 && st["lastCycleSuccess"] as? Bool == true, "\(st)")
    let check = try s.ws.restic(s.resticDR + ["check", "--read-data"], password: "secret")
    #expect(check.status == 0, "after the daemon: \(check.out) \(check.stderr)")
    #expect(try s.drSnapshotIDs() == (try s.dcSnapshotIDs()))

    // The DR machine restores the data, at the same path, from its own repository.
    let restore = try s.run(
      s.dr,
      "\"\(Tools.tidemark)\" -r \(s.shared)/repo --password-file \(s.shared)/pw restore latest --target \(s.shared)/restored"
    )
    #expect(restore.status == 0, "\(restore.stderr)")
    let diffs = differences(
      try describeTree(s.dc + "/data"), try describeTree(s.dr + "/restored" + s.shared + "/data"))
    #expect(diffs.isEmpty, "\(diffs.prefix(5))")
  }

  @Test func aCycleKilledAnywhereLeavesDRCleanAndTheNextOneSendsOnlyWhatDRLacked() throws {
    // limit-upload stretches the replication (about 4 MB per round at 8 MiB/s) so that kills land in it too;
    // retention takes exclusive locks, which the killed process's stale locks must not block.
    let s = try TwoSites("two-site-kill", targetExtra: "    limit-upload: 8192", extra: "retention:\n  keep-last: 50")
    #expect(try s.run(s.dc, "\"\(Tools.tidemark)\" init --config \(s.shared)/dc.yaml").status == 0)
    try s.write("base.bin", randomBytes: 500_000)
    let first = try s.cycle()
    #expect(first.status == 0, "\(first.stderr)")
    let roundBytes = 4_000_000
    func freshData(_ round: Int) throws {
      for f in 0..<4 { try s.write("r\(round)/f\(f)", randomBytes: roundBytes / 4) }
    }
    func dcSnapshotCount() throws -> Int { try s.files(s.dc).keys.filter { $0.hasPrefix("snapshots/") }.count }
    // Calibration: when, in an uninterrupted cycle with a round's worth of new data, the DC snapshot appears
    // (the end of the backup), and when the cycle ends.
    try freshData(-1)
    let snapshotsBefore = try dcSnapshotCount()
    let calibration = try spawn(s.spawnArgs(s.dc, s.cycleCommand))
    let t0 = Date()
    var backupEnd = 0.0
    var status: Int32 = -1
    while waitpid(calibration, &status, WNOHANG) == 0 {
      if backupEnd == 0, try dcSnapshotCount() > snapshotsBefore { backupEnd = Date().timeIntervalSince(t0) }
      usleep(2_000)
    }
    let full = Date().timeIntervalSince(t0)
    #expect(status == 0 && backupEnd > 0, "calibration cycle: status \(status), snapshot after \(backupEnd) s")
    if backupEnd == 0 { backupEnd = full / 3 }

    // Where each kill landed: before the DC snapshot (backup), between it and a complete DR (replication),
    // or after DR was complete (retention, state).
    var landed: [String] = []
    // Kills at a random moment of the backup and of the rest of the cycle, then three aimed at moments: as soon
    // as the backup's lock is on the DC, right after the backup's snapshot, and right after the first new pack
    // reached DR.
    let aims: [(String, ClosedRange<Double>)] = [
      ("random", 0.1 * backupEnd...0.6 * backupEnd), ("random", backupEnd + 0.05 * (full - backupEnd)...full),
      ("lock", 0...0), ("snapshot", 0...0), ("first-pack", 0...0),
    ]
    for (round, (aim, range)) in aims.enumerated() {
      try freshData(round)
      let dcSnapshots = try dcSnapshotCount()
      let drFiles = try s.files(s.dr)
      let drPacks = Set(drFiles.keys.filter { $0.hasPrefix("data/") })
      let pid = try spawn(s.spawnArgs(s.dc, s.cycleCommand))
      var when = ""
      var reaped = false
      switch aim {
      case "lock", "snapshot", "first-pack":
        let start = Date()
        var hit = false
        while !hit && !reaped && Date().timeIntervalSince(start) < 10 {
          reaped = waitpid(pid, nil, WNOHANG) == pid
          if aim == "lock" {
            hit = !s.locks().isEmpty  // the backup's lock on the DC: the backup has begun
          } else if aim == "snapshot" {
            hit = try dcSnapshotCount() > dcSnapshots
          } else {
            hit = try s.files(s.dr).keys.contains { $0.hasPrefix("data/") && !drPacks.contains($0) }
          }
          if !hit { usleep(2_000) }
        }
        when = String(format: "at the %@ (%.2f s)", aim, Date().timeIntervalSince(start))
      default:
        let delay = Double.random(in: range)
        when = String(format: "after %.2f s (backup %.2f s, cycle %.2f s)", delay, backupEnd, full)
        usleep(UInt32(delay * 1_000_000))
      }
      if !reaped {
        kill(pid, SIGKILL)
        _ = waitpid(pid, nil, 0)
      }

      // What the kill left: DR's files (and packs), and the dead process's locks.
      let dcLeft = try s.files(s.dc)
      let drBefore = try s.files(s.dr)
      let staleLocks = s.locks().count
      if dcLeft.keys.filter({ $0.hasPrefix("snapshots/") }).count == dcSnapshots {
        landed.append("backup")
      } else if drBefore != dcLeft {
        landed.append("replication")
      } else {
        landed.append("after")
      }
      let context = "round \(round), killed \(when) in \(landed.last!), \(staleLocks) stale locks"
      // DR is consistent as the kill left it, when the kill left it changed (--no-lock: restic 0.14 would refuse
      // the repository for the stale locks).
      if drBefore != drFiles {
        let check = try s.ws.restic(s.resticDR + ["--no-lock", "check"], password: "secret")
        #expect(check.status == 0, "\(context): \(check.out) \(check.stderr)")
      }

      // The next cycle: not blocked by the stale locks (retention's exclusive ones included), and it sends exactly
      // the files DR lacked: nothing that had already arrived travels again.
      let t = Date()
      let next = try s.cycle()
      let took = Date().timeIntervalSince(t)
      #expect(next.status == 0 && took < 3 * full + 5, "\(context): \(next.stderr) (\(took) s)")
      let dcNow = try s.files(s.dc)
      let lacked = dcNow.filter { drBefore[$0.key] == nil }
      let lackedPacks = lacked.filter { $0.key.hasPrefix("data/") }.values.reduce(0, +)
      let lackedOther = lacked.values.reduce(0, +) - lackedPacks
      let target = (try s.state()["targets"] as? [[String: Any]])?.first ?? [:]
      let copied = Int64(target["bytesCopiedLast"] as? Int ?? -1)
      #expect(
        copied >= 0 && copied <= lackedPacks + lackedOther && lackedOther <= 64 * 1024,
        "\(context): copied \(copied), DR lacked \(lackedPacks) in packs + \(lackedOther) in index/snapshots")
      #expect(copied == lackedPacks + lackedOther, "\(context): copied \(copied) of \(lackedPacks + lackedOther)")
      #expect(try s.files(s.dr) == dcNow, "\(context): DR differs from DC")
      // The dead process's locks are gone with it (restic itself refuses a repository with a stale lock).
      let locksLeft = s.locks()
      #expect(locksLeft.isEmpty, "\(context): locks left: \(locksLeft)")
      let check = try s.ws.restic(s.resticDR + ["check", "--read-data"], password: "secret")
      // (Packs of a killed backup that no index names are on both sides; restic calls them harmless.)
      #expect(check.status == 0, "\(context): \(check.out) \(check.stderr)")
      let (drIDs, dcIDs) = (try s.drSnapshotIDs(), try s.dcSnapshotIDs())
      #expect(drIDs == dcIDs, "\(context): DR \(drIDs), DC \(dcIDs)")
    }
    #expect(landed.contains("backup") && landed.contains("replication"), "kills landed: \(landed)")
    print("two-site kills landed: \(landed), backup \(backupEnd) s, cycle \(full) s")
  }
}
