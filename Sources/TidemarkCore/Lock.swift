// Repository locks with restic's rules: exclusive conflicts with everything, shared locks coexist;
// a lock is stale when older than 30 minutes, or from this host and its process is gone.
// A held lock is refreshed every 5 minutes (new file first, then the old one removed).
import Foundation
import Synchronization

public final class RepositoryLock: Sendable {
  public static let staleAfter: Int64 = 30 * 60
  public static let refreshInterval: Duration = .seconds(5 * 60)

  let repository: Repository
  let exclusive: Bool
  private let current: Mutex<String?>
  private let refresher: Mutex<Task<Void, Never>?> = Mutex(nil)

  private init(repository: Repository, exclusive: Bool, name: String) {
    self.repository = repository
    self.exclusive = exclusive
    self.current = Mutex(name)
  }

  public static func info(exclusive: Bool) -> LockInfo {
    LockInfo(
      time: .now(), exclusive: exclusive, hostname: SystemInfo.hostname, username: SystemInfo.username,
      pid: Int(getpid()), uid: getuid(), gid: getgid())
  }

  public static func isStale(_ l: LockInfo, now: Timestamp = .now()) -> Bool {
    if now.seconds - l.time.seconds > staleAfter { return true }
    if l.hostname == SystemInfo.hostname && l.pid > 0 {
      if kill(pid_t(l.pid), 0) != 0 && errno == ESRCH { return true }
    }
    return false
  }

  /// Every lock file with its decoded content; unreadable ones are reported as nil.
  public static func list(_ repo: Repository) async throws -> [(name: String, info: LockInfo?)] {
    var out: [(String, LockInfo?)] = []
    for f in try await repo.backend.list(.lock) {
      let info = try? LockInfo(json: try await repo.loadUnpacked(Handle(.lock, f.name)))
      out.append((f.name, info))
    }
    return out
  }

  static func conflict(_ repo: Repository, exclusive: Bool, ignoring own: String?) async throws -> LockInfo? {
    for (name, info) in try await list(repo) where name != own {
      guard let info else { continue }
      if isStale(info) { continue }
      if exclusive || info.exclusive { return info }
    }
    return nil
  }

  static func lockedError(_ l: LockInfo, _ repo: Repository) -> TidemarkError {
    TidemarkError(
      .locked,
      "repository \(repo.backend.location) is already locked \(l.exclusive ? "exclusively " : "")by PID \(l.pid) on \(l.hostname) by \(l.username) since \(l.time.rfc3339)",
      hint: "wait for it to finish, or if that process is gone run `tidemark unlock`")
  }

  /// Takes a lock, retrying for up to `retry` while another holds a conflicting one.
  /// `meanwhile` runs while the lock is written but not yet confirmed (restic's pause before the second
  /// look): read-only preparation such as loading the index. If the confirmation finds a conflict, its
  /// result is discarded and it runs again on the next attempt.
  public static func acquire(
    _ repo: Repository, exclusive: Bool, retry: Duration = .zero,
    meanwhile: @Sendable () async throws -> Void = {}
  ) async throws -> RepositoryLock {
    let deadline = ContinuousClock.now + retry
    var delay = Duration.milliseconds(200)
    while true {
      if let c = try await conflict(repo, exclusive: exclusive, ignoring: nil) {
        if ContinuousClock.now + delay > deadline { throw lockedError(c, repo) }
        try await Task.sleep(for: delay)
        delay = min(delay * 2, .seconds(10))
        continue
      }
      let name = try await repo.saveUnpacked(.lock, json: info(exclusive: exclusive).encode()).hex
      // Another process may have written its lock at the same moment: look again after a pause,
      // doing the read-only preparation in the meantime.
      let pause = ContinuousClock.now + .milliseconds(100)
      do {
        try await meanwhile()
      } catch {
        try? await repo.backend.remove(Handle(.lock, name))
        throw error
      }
      try await Task.sleep(until: pause)
      if let c = try await conflict(repo, exclusive: exclusive, ignoring: name) {
        try? await repo.backend.remove(Handle(.lock, name))
        if ContinuousClock.now + delay > deadline { throw lockedError(c, repo) }
        try await Task.sleep(for: delay)
        continue
      }
      let lock = RepositoryLock(repository: repo, exclusive: exclusive, name: name)
      lock.startRefreshing()
      return lock
    }
  }

  private func startRefreshing() {
    let t = Task { [weak self] in
      while !Task.isCancelled {
        try? await Task.sleep(for: RepositoryLock.refreshInterval)
        guard let self, !Task.isCancelled else { return }
        await self.refresh()
      }
    }
    refresher.withLock { $0 = t }
  }

  func refresh() async {
    guard
      let new = try? await repository.saveUnpacked(.lock, json: RepositoryLock.info(exclusive: exclusive).encode()).hex
    else { return }
    let old = current.withLock { c in
      let o = c
      c = new
      return o
    }
    if let old { try? await repository.backend.remove(Handle(.lock, old)) }
  }

  public func release() async {
    refresher.withLock { $0?.cancel() }
    let name = current.withLock { c in
      let o = c
      c = nil
      return o
    }
    if let name { try? await repository.backend.remove(Handle(.lock, name)) }
  }

  /// Removes the locks of processes on this host that are gone (stale by restic's second rule, with no doubt
  /// about the clock); returns how many were removed. A process killed while it held a lock leaves its file
  /// behind: tidemark ignores it, but restic refuses the repository (an exclusive lock even for `restic
  /// snapshots`) until `unlock`.
  public static func removeDead(_ repo: Repository) async throws -> Int {
    var n = 0
    for (name, info) in try await list(repo) {
      guard let info, info.hostname == SystemInfo.hostname, info.pid > 0, kill(pid_t(info.pid), 0) != 0,
        errno == ESRCH
      else { continue }
      try await repo.backend.remove(Handle(.lock, name))
      n += 1
    }
    return n
  }

  /// Removes stale locks (or all locks); returns how many were removed.
  public static func unlock(_ repo: Repository, all: Bool) async throws -> Int {
    var n = 0
    for (name, info) in try await list(repo) {
      if all || info.map({ isStale($0) }) ?? false {
        try await repo.backend.remove(Handle(.lock, name))
        n += 1
      }
    }
    return n
  }
}
