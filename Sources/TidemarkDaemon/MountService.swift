// `tidemark mount` as a long-running service: the repository's snapshots served through FUSE until a signal
// (SIGINT, SIGTERM, SIGHUP) or an unmount, with a shared lock held meanwhile, the listings refreshed in the
// background, and (unless told not to) the master key handed to `tidemark restore PATH-IN-THE-MOUNT` on an
// abstract socket (root or this user only; see SecretServer).
import Foundation
import TidemarkCore
import TidemarkFUSE
import TidemarkMount
import TidemarkSystem

public enum MountService {
  public static func serve(
    _ repo: Repository, options: MountOptions, shareKey: Bool, lock takeLock: Bool, lockRetry: Duration,
    say: @escaping @Sendable (String) -> Void
  ) async throws {
    var o = options
    var keyServer: SecretServer? = nil
    if shareKey {
      do {
        keyServer = try SecretServer(prefix: "tidemark-mount", secret: repo.key.json)
        o.keySocket = keyServer?.name
      } catch {
        say("tidemark mount: not sharing the key with restore: \(error)")
      }
    }
    defer { keyServer?.stop() }
    let fs = SnapshotFS(repository: repo, options: o)
    let lock: RepositoryLock? =
      takeLock
      ? try await RepositoryLock.acquire(repo, exclusive: false, retry: lockRetry) { try await fs.refresh() } : nil
    if lock == nil { try await fs.refresh() }
    var opts = ["ro", "fsname=tidemark", "subtype=tidemark", "default_permissions", "auto_unmount"]
    if o.allowOther { opts.append("allow_other") }
    let session: FUSESession
    do {
      session = try FUSESession(filesystem: fs, mountpoint: o.mountpoint, options: opts)
    } catch let e as FUSEError {
      await lock?.release()
      throw TidemarkError(
        .general,
        "cannot mount at \(o.mountpoint): \(String(cString: strerror(e.errno)))",
        hint: "is /dev/fuse available and the fuse3 package (fusermount3) installed?")
    }
    say("serving \(repo.backend.location) at \(o.mountpoint); Ctrl-C or `fusermount3 -u \(o.mountpoint)` unmounts")
    let refresher = Task { await fs.refreshLoop { say("tidemark mount: \($0)") } }
    // SIGINT/SIGTERM/SIGHUP: stop serving; the loop then unmounts and the lock is released below.
    await BlockingService.run(name: "tidemark-fuse", { session.run() }, stop: { session.exit() })
    refresher.cancel()
    await lock?.release()
  }
}
