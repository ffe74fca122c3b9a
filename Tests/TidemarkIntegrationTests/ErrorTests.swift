// Bad input gets one clear line and restic's exit code.
import Foundation
import Synchronization
import Testing
import TidemarkBackends
import TidemarkCore
import TidemarkOperations
import TidemarkSystem

@Suite(.serialized) struct ErrorTests {
  @Test func wrongPasswordMissingRepositoryAndNoPassword() throws {
    let ws = try Workspace("err")
    #expect(try ws.tidemark(["-r", "repo", "init"]).status == 0)
    let again = try ws.tidemark(["-r", "repo", "init"])
    #expect(again.status == 1 && again.stderr.contains("already exists"))

    let wrong = try ws.tidemark(["-r", "repo", "snapshots"], password: "not-it")
    #expect(wrong.status == 12)
    #expect(wrong.stderr.contains("wrong password"))
    #expect(wrong.stderr.split(separator: "\n").count == 1)

    let missing = try ws.tidemark(["-r", "nowhere", "snapshots"])
    #expect(missing.status == 10)
    #expect(missing.stderr.contains("no repository at"))

    let nopw = try ws.tidemark(["-r", "repo", "snapshots"], password: "")
    #expect(nopw.status == 1 && nopw.stderr.contains("no password given"))

    // RESTIC_* names work as fallbacks; --password-file too.
    let viaRestic = try Tools.run(
      Tools.tidemark, ["snapshots"], env: ["RESTIC_REPOSITORY": ws.sub("repo"), "RESTIC_PASSWORD": "test-pw"])
    #expect(viaRestic.status == 0, "\(viaRestic.stderr)")
    try "test-pw\n".write(toFile: ws.sub("pwfile"), atomically: true, encoding: .utf8)
    #expect(try ws.tidemark(["-r", "repo", "snapshots", "--password-file", "pwfile"], password: "").status == 0)

    let badArg = try ws.tidemark(["-r", "repo", "backup"])
    #expect(badArg.status == 1)
    let bogusPath = try ws.tidemark(["-r", "repo", "backup", "does-not-exist"])
    #expect(bogusPath.status == 1 && bogusPath.stderr.contains("does not exist"))
  }

  @Test func heldLockGivesExitCode11AndStaleLocksAreIgnored() async throws {
    let ws = try Workspace("lock")
    try Tools.sh("mkdir data && echo hi > data/f", cwd: ws.path)
    #expect(try ws.tidemark(["-r", "repo", "init"]).status == 0)
    let repo = try await Repository.open(
      backend: LocalBackend(path: BytePath(ws.sub("repo"))), password: Array("test-pw".utf8))

    let lock = try await RepositoryLock.acquire(repo, exclusive: true)
    let locked = try ws.tidemark(["-r", "repo", "backup", "data"])
    #expect(locked.status == 11)
    #expect(locked.stderr.contains("locked exclusively by PID \(getpid())"))
    #expect(locked.stderr.contains("tidemark unlock"))
    // restic sees tidemark's lock too.
    let rlocked = try ws.restic(["-r", "repo", "backup", "data"])
    #expect(rlocked.status != 0 && rlocked.stderr.contains("locked"))
    await lock.release()

    // A lock left by a process that no longer exists on this host is stale.
    var dead = RepositoryLock.info(exclusive: true)
    dead.pid = 4_000_000
    _ = try await repo.saveUnpacked(.lock, json: dead.encode())
    let ok = try ws.tidemark(["-r", "repo", "backup", "data"])
    #expect(ok.status == 0, "\(ok.stderr)")
    let unlock = try ws.tidemark(["-r", "repo", "unlock"])
    #expect(unlock.status == 0 && unlock.out.contains("removed 1 lock"))
    #expect(try await repo.backend.list(.lock).isEmpty)
  }

  /// A backup starts while its lock is being confirmed (restic's pause before the second look); its
  /// writes wait for the confirmation, and a lock that appeared in the meantime fails them.
  @Test func overlappedLockHoldsWritesUntilConfirmedAndFailsThemOnAConflict() async throws {
    let ws = try Workspace("lock-overlap")
    #expect(try ws.tidemark(["-r", "repo", "init"]).status == 0)
    let repo = try await Repository.open(
      backend: LocalBackend(path: BytePath(ws.sub("repo"))), password: Array("test-pw".utf8))
    let emptyIndex = Array(#"{"packs":[]}"#.utf8)

    // No conflict: the write waits for the confirmation, then lands.
    let start = ContinuousClock.now
    let lock = try await RepositoryLock.acquire(repo, exclusive: false, overlap: true)
    #expect(try await repo.backend.list(.lock).count == 1)
    let index = try await repo.saveUnpacked(.index, json: emptyIndex)
    #expect(ContinuousClock.now - start >= .milliseconds(90))
    #expect(try await repo.backend.list(.index).map(\.name) == [index.hex])
    try await lock.confirmed()
    await lock.release()
    #expect(try await repo.backend.list(.lock).isEmpty)

    // Two overlapped locks on one repository (a cycle's syncs to two targets lock the DC twice): a write
    // waits for both confirmations, not just the first.
    let early = try await RepositoryLock.acquire(repo, exclusive: false, overlap: true)
    try await Task.sleep(for: .milliseconds(60))
    let laterStart = ContinuousClock.now
    let later = try await RepositoryLock.acquire(repo, exclusive: false, overlap: true)
    _ = try await repo.saveUnpacked(.index, json: Array(#"{"packs":[],"supersedes":[]}"#.utf8))
    #expect(ContinuousClock.now - laterStart >= .milliseconds(90))
    try await early.confirmed()
    try await later.confirmed()
    await later.release()
    await early.release()
    for f in try await repo.backend.list(.index) where f.name != index.hex {
      try await repo.backend.remove(Handle(.index, f.name))
    }

    // An exclusive lock (a prune starting at the same moment) appears during the pause: the held write
    // fails with the lock error and writes nothing; our lock file is gone, the other one stays.
    // The exclusive lock is written inside the pause (by `meanwhile`), so the second look finds it however
    // slowly this machine runs.
    let otherName = Mutex<String?>(nil)
    let second = try await RepositoryLock.acquire(
      repo, exclusive: false, overlap: true,
      meanwhile: {
        let id = try await repo.saveUnpacked(.lock, json: RepositoryLock.info(exclusive: true).encode())
        otherName.withLock { $0 = id.hex }
      })
    let other = try #require(otherName.withLock { $0 })
    await #expect {
      _ = try await repo.saveUnpacked(.index, json: Array(#"{"packs":[],"supersedes":[]}"#.utf8))
    } throws: { ($0 as? TidemarkError)?.kind == .locked }
    await #expect { try await second.confirmed() } throws: { ($0 as? TidemarkError)?.kind == .locked }
    await second.release()
    #expect(try await repo.backend.list(.index).map(\.name) == [index.hex])
    #expect(try await repo.backend.list(.lock).map(\.name) == [other])
    // Writes go ahead again once that lock is gone (the gate does not stay shut).
    try await repo.backend.remove(Handle(.lock, other))
    let third = try await RepositoryLock.acquire(repo, exclusive: false)
    _ = try await repo.saveUnpacked(.index, json: Array(#"{"packs":[],"supersedes":[]}"#.utf8))
    await third.release()
    #expect(try await repo.backend.list(.index).count == 2)
  }

  /// A replication takes both locks at once and starts copying during their pause: the target receives
  /// nothing before its lock is confirmed, and nothing at all when an exclusive lock appeared there meanwhile.
  @Test func replicationWritesNothingToATargetWhoseLockIsNotConfirmed() async throws {
    let ws = try Workspace("lock-replica")
    try Tools.sh("mkdir data && head -c 300000 /dev/urandom > data/f", cwd: ws.path)
    #expect(try ws.tidemark(["-r", "dc", "init"]).status == 0)
    #expect(try ws.tidemark(["-r", "dc", "backup", "data"]).status == 0)
    let pw = Array("test-pw".utf8)
    let dc = try await Repository.open(backend: LocalBackend(path: BytePath(ws.sub("dc"))), password: pw)
    let dr = try await Replica.create(source: dc, target: LocalBackend(path: BytePath(ws.sub("dr"))), password: pw)

    // Both locks as `Replica.lock` takes them; the exclusive lock on the target is written inside the pause
    // (by `meanwhile`), so its second look finds it however slowly this machine runs.
    let otherName = Mutex<String?>(nil)
    let nothing: @Sendable () async throws -> Void = {}
    let lockAppears: @Sendable () async throws -> Void = {
      let id = try await dr.saveUnpacked(.lock, json: RepositoryLock.info(exclusive: true).encode())
      otherName.withLock { $0 = id.hex }
    }
    let locks = try await RepositoryLock.acquireAll([(dc, nothing), (dr, lockAppears)], overlap: true)
    let other = try #require(otherName.withLock { $0 })
    await #expect(throws: (any Error).self) { _ = try await Replica.sync(source: dc, target: dr, locked: true) }
    await #expect { try await locks[1].confirmed() } throws: { ($0 as? TidemarkError)?.kind == .locked }
    for l in locks { await l.release() }
    #expect(try storedFiles(ws, "dr").isEmpty)
    #expect(try await dr.backend.list(.lock).map(\.name) == [other])
    #expect(try await dc.backend.list(.lock).isEmpty)

    // Once that lock is gone the same sync goes through.
    try await dr.backend.remove(Handle(.lock, other))
    _ = try await Replica.sync(source: dc, target: dr)
    #expect(try storedFiles(ws, "dr") == storedFiles(ws, "dc"))
    #expect(try await dr.backend.list(.lock).isEmpty)
  }

  @Test func flippedByteInAPackNamesPackBlobAndFileAndLeavesNoPartialFile() throws {
    let ws = try Workspace("corrupt")
    try Tools.sh("mkdir data && head -c 2000000 /dev/urandom > data/victim && echo fine > data/ok", cwd: ws.path)
    #expect(try ws.tidemark(["-r", "repo", "init", "--compression", "off"]).status == 0)
    #expect(try ws.tidemark(["-r", "repo", "backup", "data"]).status == 0)
    // The largest pack holds the data blobs; flip one byte in its middle.
    let packs = try Tools.sh("find repo/data -type f -printf '%s %p\\n' | sort -n | tail -1", cwd: ws.path).out
    let packPath = String(packs.split(separator: " ")[1].trimmingCharacters(in: .whitespacesAndNewlines))
    let packID = String(packPath.split(separator: "/").last!)
    try flipByte(ws.sub(packPath), at: 1_000_000)

    let r = try ws.tidemark(["-r", "repo", "restore", "latest", "--target", "out"])
    #expect(r.status == 1)
    #expect(r.stderr.contains(String(packID.prefix(8))), "\(r.stderr)")
    #expect(r.stderr.contains("data/victim"))
    #expect(r.stderr.contains("blob "))
    #expect(!FileManager.default.fileExists(atPath: ws.sub("out/data/victim")))
    let leftovers = try Tools.sh("find out -name '.tidemark-restore-*' | wc -l", cwd: ws.path).out
    #expect(leftovers.trimmingCharacters(in: .whitespacesAndNewlines) == "0")
    #expect(FileManager.default.fileExists(atPath: ws.sub("out/data/ok")))
  }

  @Test func unreadableSourceFileGivesExitCode3AndStillSavesTheSnapshot() throws {
    let ws = try Workspace("unreadable")
    // Root reads everything, so run the backup as `nobody` on a tree it can only partly read.
    try Tools.sh(
      "mkdir -p data && echo readable > data/ok && echo secret > data/secret && chmod 000 data/secret && chown -R 65534:65534 data && chown root data/secret && mkdir repo && chown 65534 repo && chmod 755 .",
      cwd: ws.path)
    let pw = ["TIDEMARK_PASSWORD": "test-pw"]
    let asNobody = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", Tools.tidemark]
    let i = try Tools.run(asNobody[0], Array(asNobody.dropFirst()) + ["-r", "repo/r", "init"], env: pw, cwd: ws.path)
    #expect(i.status == 0, "\(i.stderr)")
    let b = try Tools.run(
      asNobody[0], Array(asNobody.dropFirst()) + ["-r", "repo/r", "backup", "data"], env: pw, cwd: ws.path)
    #expect(b.status == 3, "\(b.stderr)")
    #expect(b.stderr.contains("data/secret"))
    #expect(b.out.contains("snapshot ") && b.out.contains(" saved"))
    let ls = try ws.tidemark(["-r", "repo/r", "ls", "latest"])
    #expect(ls.out.contains("/data/ok") && !ls.out.contains("/data/secret"))
  }
}
