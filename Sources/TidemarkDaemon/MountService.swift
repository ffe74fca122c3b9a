// `tidemark mount` as a ServiceGroup: the repository's snapshots served through FUSE until a signal (SIGINT,
// SIGTERM, SIGHUP: a graceful shutdown) or an unmount (the FUSE service ends, which ends the group), with a
// shared lock held meanwhile, the listings refreshed in the background by a second service, and (unless told
// not to) the master key handed to `tidemark restore PATH-IN-THE-MOUNT` on an abstract socket (root or this
// user only; see SecretServer).
import Foundation
import Logging
import ServiceLifecycle
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
    let group = ServiceGroup(
      configuration: .init(
        services: [
          .init(service: FUSEService(session: session), successTerminationBehavior: .gracefullyShutdownGroup),
          .init(service: RefreshService(fs: fs, say: say)),
        ],
        gracefulShutdownSignals: [.sigterm, .sigint, .sighup], cancellationSignals: [],
        logger: Logger(label: "tidemark.mount") { _ in SwiftLogNoOpLogHandler() }))
    do {
      try await group.run()
    } catch {
      await lock?.release()
      throw error
    }
    await lock?.release()
  }
}

/// libfuse's session loop on a thread of its own (it blocks), off the cooperative pool; a graceful shutdown
/// makes the loop return, which unmounts. An unmount from outside ends the loop, and with it the service.
struct FUSEService: Service {
  let session: FUSESession

  func run() async throws {
    let session = self.session
    await withGracefulShutdownHandler {
      await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
        let t = Thread {
          session.run()
          c.resume()
        }
        t.name = "tidemark-fuse"
        t.start()
      }
    } onGracefulShutdown: {
      session.exit()
    }
  }
}

/// Looks for new snapshots every `refresh` seconds until the group shuts down.
struct RefreshService: Service {
  let fs: SnapshotFS
  let say: @Sendable (String) -> Void

  func run() async {
    let (fs, say) = (self.fs, self.say)
    await cancelWhenGracefulShutdown { await fs.refreshLoop { say("tidemark mount: \($0)") } }
  }
}
