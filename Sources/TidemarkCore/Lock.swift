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
  /// With `overlap`: the second look for conflicting locks, running while the caller works
  /// (nil: confirmed before `acquire` returned). Its result is nil when the lock is confirmed.
  private let confirmation: Mutex<Task<Error?, Never>?> = Mutex(nil)
  /// The command's set of held locks this lock belongs to (see `HeldLocks`).
  private let held: HeldLocks?

  private init(repository: Repository, exclusive: Bool, name: String) {
    self.repository = repository
    self.exclusive = exclusive
    self.current = Mutex(name)
    self.held = HeldLocks.current
    held?.add(self)
  }

  /// Removes a lock file even when the calling task is cancelled (an interrupt must still clean up): the removal
  /// runs in a task of its own, which does not inherit the cancellation.
  static func removeFile(_ repo: Repository, _ name: String) async {
    await Task { try? await repo.backend.remove(Handle(.lock, name)) }.value
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
  ///
  /// `overlap` (only without `retry`): returns as soon as the lock file is written and `meanwhile` has
  /// run; the pause and the second look run in the background while the caller works. Until the lock is
  /// confirmed the repository's `writeGate` holds every write (packs, index, snapshot): nothing but the
  /// lock file reaches the repository before the confirmation, as without `overlap`. If the second look
  /// finds a conflict, held and later writes fail with the lock error, and so does `confirmed()`.
  public static func acquire(
    _ repo: Repository, exclusive: Bool, retry: Duration = .zero, overlap: Bool = false,
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
        try Task.checkCancellation()
      } catch {
        await removeFile(repo, name)
        throw error
      }
      if overlap && retry == .zero {
        let lock = RepositoryLock(repository: repo, exclusive: exclusive, name: name)
        lock.confirmInBackground(until: pause)
        return lock
      }
      let found: LockInfo?
      do {
        try await Task.sleep(until: pause)
        found = try await conflict(repo, exclusive: exclusive, ignoring: name)
      } catch {
        await removeFile(repo, name)
        throw error
      }
      if let c = found {
        await removeFile(repo, name)
        if ContinuousClock.now + delay > deadline { throw lockedError(c, repo) }
        try await Task.sleep(for: delay)
        continue
      }
      let lock = RepositoryLock(repository: repo, exclusive: exclusive, name: name)
      lock.startRefreshing()
      return lock
    }
  }

  /// Takes locks on several repositories at once, so that their pauses before the second look overlap: all
  /// of them (in the order asked) or none. `meanwhile` runs for each as in `acquire`.
  public static func acquireAll(
    _ requests: [(repository: Repository, meanwhile: @Sendable () async throws -> Void)], exclusive: Bool = false,
    retry: Duration = .zero, overlap: Bool = false
  ) async throws -> [RepositoryLock] {
    let results = await withTaskGroup(of: (Int, Result<RepositoryLock, Error>).self) { g in
      for (i, r) in requests.enumerated() {
        g.addTask {
          do {
            let l = try await acquire(
              r.repository, exclusive: exclusive, retry: retry, overlap: overlap, meanwhile: r.meanwhile)
            return (i, .success(l))
          } catch {
            return (i, .failure(error))
          }
        }
      }
      var out: [(Int, Result<RepositoryLock, Error>)] = []
      for await x in g { out.append(x) }
      return out.sorted { $0.0 < $1.0 }.map(\.1)
    }
    var locks: [RepositoryLock] = []
    var failure: Error? = nil
    for r in results {
      switch r {
      case .success(let l): locks.append(l)
      case .failure(let e): failure = failure ?? e
      }
    }
    if let failure {
      for l in locks { await l.release() }
      throw failure
    }
    return locks
  }

  /// The second look of an overlapped `acquire`: holds the repository's writes until it is done.
  private func confirmInBackground(until pause: ContinuousClock.Instant) {
    let repo = repository
    repo.writeGate.close()
    let t = Task { [self] () -> Error? in
      var failure: Error? = nil
      do {
        try await Task.sleep(until: pause)
        let own = current.withLock { $0 }
        if let c = try await RepositoryLock.conflict(repo, exclusive: exclusive, ignoring: own) {
          failure = RepositoryLock.lockedError(c, repo)
        }
      } catch {
        failure = error
      }
      if failure == nil {
        startRefreshing()
      } else if let name = current.withLock({ c -> String? in
        defer { c = nil }
        return c
      }) {
        await RepositoryLock.removeFile(repo, name)
      }
      repo.writeGate.finish(failing: failure)
      return failure
    }
    confirmation.withLock { $0 = t }
  }

  /// Throws the lock error if an overlapped `acquire`'s second look found a conflicting lock (waits
  /// for it). Call after the work and before `release`: a conflict is reported even when nothing was
  /// written.
  public func confirmed() async throws {
    guard let t = confirmation.withLock({ $0 }) else { return }
    if let e = await t.value { throw e }
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
    if let t = confirmation.withLock({ $0 }) {
      t.cancel()
      if await t.value != nil { repository.writeGate.clearFailure() }
    }
    refresher.withLock { $0?.cancel() }
    let name = current.withLock { c in
      let o = c
      c = nil
      return o
    }
    if let name { await RepositoryLock.removeFile(repository, name) }
    held?.remove(self)
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

/// The locks a command holds, whichever step took them (backup, the replica sync, retention, prune), so that an
/// interrupt can release every one of them: a command's lifecycle sets `HeldLocks.current` for its task tree
/// (a task local, inherited by child and unstructured tasks) and, when the work does not end soon enough after
/// cancellation, calls `releaseAll()` before exiting.
public final class HeldLocks: Sendable {
  @TaskLocal public static var current: HeldLocks?
  private let locks = Mutex<[ObjectIdentifier: RepositoryLock]>([:])

  public init() {}

  func add(_ l: RepositoryLock) { locks.withLock { $0[ObjectIdentifier(l)] = l } }
  func remove(_ l: RepositoryLock) { _ = locks.withLock { $0.removeValue(forKey: ObjectIdentifier(l)) } }

  /// How many locks are held now.
  public var count: Int { locks.withLock { $0.count } }

  /// Releases every lock still held (their files are removed).
  public func releaseAll() async {
    let all = locks.withLock { Array($0.values) }
    for l in all { await l.release() }
  }
}

/// Holds a repository's writes while a lock on it is written but not yet confirmed (an overlapped
/// `RepositoryLock.acquire`); they go ahead once every pending confirmation is done, or fail with the lock
/// error if one found a conflict. Open (no waiting) otherwise.
public final class WriteGate: Sendable {
  private struct State {
    var pending = 0
    var failure: Error? = nil
    var waiters: [CheckedContinuation<Void, Error>] = []
  }
  private let state = Mutex(State())

  public init() {}

  /// A confirmation starts.
  func close() {
    state.withLock { $0.pending += 1 }
  }

  /// A confirmation ended (with the error it found, if any); held writes go ahead or fail when none is left.
  func finish(failing failure: Error?) {
    let (waiting, result): ([CheckedContinuation<Void, Error>], Result<Void, Error>) = state.withLock { s in
      s.pending = max(0, s.pending - 1)
      if let failure { s.failure = failure }
      guard s.pending == 0 || s.failure != nil else { return ([], .success(())) }
      defer { s.waiters = [] }
      return (s.waiters, s.failure.map { .failure($0) } ?? .success(()))
    }
    for c in waiting { c.resume(with: result) }
  }

  /// Forgets a failure once its lock is released (the repository may be locked again later).
  func clearFailure() {
    state.withLock { $0.failure = nil }
  }

  /// Returns when writes may go ahead; throws the lock error if the lock could not be confirmed.
  public func pass() async throws {
    let now: Result<Void, Error>? = state.withLock { s in
      if let f = s.failure { return .failure(f) }
      return s.pending == 0 ? .success(()) : nil
    }
    if let now { return try now.get() }
    try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, Error>) in
      let now: Result<Void, Error>? = state.withLock { s in
        if let f = s.failure { return .failure(f) }
        if s.pending == 0 { return .success(()) }
        s.waiters.append(c)
        return nil
      }
      if let now { c.resume(with: now) }
    }
  }
}
