// The change journal: which directories under a set of roots changed since the last time it was asked, from
// fanotify(7) with file handles (FAN_MARK_FILESYSTEM, FAN_REPORT_DFID_NAME). The kernel reports each change as
// the file handle of the directory it happened in and the entry's name (or "." for a change to the directory
// itself); the journal keeps the set of directory handles and turns them into paths when asked (`take`).
//
// What it promises: every change to an entry made through a system call before `take` returns (create, delete,
// rename, write, truncate, chmod, chown, xattrs, timestamps) names its directory in the result, or the result
// says why it cannot be trusted (`doubt`): the kernel's queue overflowed, an event came without a directory,
// the mounts under the roots changed. Writes through a shared mapping are not seen until the file is closed or
// written otherwise; callers walk the whole tree now and then for those (and for changes made while no
// journal ran).
//
// Events are queued by the kernel during the system call that makes the change, so draining the queue at the
// start of `take` (under the same lock as the background reader) gives every change made before it.
internal import CPosix
import Foundation
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

public final class ChangeJournal: Sendable {
  /// Why a journal could not start: shown once, and full walks are used instead.
  public struct Unavailable: Error, CustomStringConvertible, Sendable {
    public var reason: String
    public var description: String { reason }
  }

  /// What changed since the previous `take`.
  public struct Changes: Sendable {
    /// Directories whose entries (names, or any entry's content or metadata) changed.
    public var dirty: Set<BytePath> = []
    /// Directories created or moved in since: nothing of their old contents can be assumed.
    public var fresh: Set<BytePath> = []
    /// Set when the changes cannot be trusted: a full walk is needed, and this says why.
    public var doubt: String? = nil
    /// Events read.
    public var events = 0
    public init() {}
  }

  /// The journal's counters since it started.
  public struct Counters: Sendable {
    public var events = 0
    public var overflows = 0
    /// Directories recorded and not yet taken.
    public var pendingDirectories = 0
    /// When the first change not yet taken arrived (Unix seconds).
    public var firstPending: Double? = nil
  }

  /// A directory as the kernel names it: the file system and its handle.
  struct HandleKey: Hashable {
    var fsid: UInt64
    var type: Int32
    var bytes: [UInt8]
  }

  struct Mark {
    /// Its entries changed.
    var listing = false
    /// The directory's own metadata changed (its entry in its parent is stale).
    var itself = false
    /// Names of directories created or moved into it.
    var newDirectories: Set<[UInt8]> = []
    /// Under one of the `quiet` paths: no `onChange` for it.
    var quiet = false
  }

  struct State {
    var marks: [HandleKey: Mark] = [:]
    /// Directories seen outside the roots; forgotten when any directory is moved (it could move in).
    var outside: Set<HandleKey> = []
    var doubt: String? = nil
    var events = 0
    var counters = Counters()
    var closed = false
    /// The buffer `drain` reads the queue into, allocated at the first read and kept until the journal goes.
    var buffer: UnsafeMutableRawPointer? = nil
  }

  static let bufferSize = 64 << 10

  /// Beyond this many pending directories the journal stops recording and asks for a full walk.
  static let maxPending = 200_000

  let fd: Int32
  /// One open directory per marked file system, to open handles against.
  let mountFDs: [UInt64: Int32]
  let roots: [BytePath]
  let quiet: [BytePath]
  let mounts: [String]
  let state = Mutex(State())
  let wake: (read: Int32, write: Int32)
  /// The background reader is running.
  let reading = Atomic<Bool>(false)
  let onChange: (@Sendable () -> Void)?

  /// Starts a journal over `roots` (absolute paths without symlinks). With `background`, a thread reads the
  /// kernel's queue as events arrive and calls `onChange` at the first change after each `take`, leaving out
  /// changes in directories under `quiet` (they are recorded all the same); without it, events wait in the
  /// kernel's queue until `take`.
  public init(
    roots: [BytePath], quiet: [BytePath] = [], background: Bool = true, onChange: (@Sendable () -> Void)? = nil
  ) throws(Unavailable) {
    for r in roots {
      guard r.isAbsolute else { throw Unavailable(reason: "\(r) is not an absolute path") }
      guard let real = Sys.realpath(r)?.bytes, real == r.bytes || (r.bytes.count > 1 && real + [47] == r.bytes) else {
        throw Unavailable(reason: "\(r) goes through a symbolic link")
      }
    }
    let fd = cposix_fanotify_init(
      UInt32(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_DIR_FID | FAN_REPORT_NAME),
      UInt32(O_RDONLY | O_CLOEXEC))
    if fd < 0 {
      let e = errno
      throw Unavailable(
        reason: e == EPERM
          ? "fanotify needs CAP_SYS_ADMIN (run the daemon as root)"
          : "this kernel has no fanotify with file handles (\(String(cString: strerror(e))))")
    }
    var mountFDs: [UInt64: Int32] = [:]
    func fail(_ reason: String) -> Unavailable {
      for m in mountFDs.values { Glibc.close(m) }
      Glibc.close(fd)
      return Unavailable(reason: reason)
    }
    let mounts = ChangeJournal.mountPoints(under: roots)
    let mask: UInt64 =
      UInt64(FAN_MODIFY | FAN_ATTRIB | FAN_CLOSE_WRITE | FAN_MOVED_FROM | FAN_MOVED_TO | FAN_CREATE | FAN_DELETE)
      | UInt64(FAN_ONDIR)
    for place in roots.map(\.description) + mounts {
      let dfd = place.withCString { Glibc.open($0, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
      if dfd < 0 { throw fail("cannot open \(place): \(String(cString: strerror(errno)))") }
      var fsid: UInt64 = 0
      if cposix_fsid(dfd, &fsid) != 0 {
        Glibc.close(dfd)
        throw fail("cannot read the file system of \(place)")
      }
      if mountFDs[fsid] != nil {
        Glibc.close(dfd)
        continue
      }
      mountFDs[fsid] = dfd
      if cposix_fanotify_mark(fd, UInt32(FAN_MARK_ADD | FAN_MARK_FILESYSTEM), mask, dfd, nil) != 0 {
        let e = errno
        if e == EPERM { throw fail("watching a whole file system needs CAP_SYS_ADMIN (run the daemon as root)") }
        throw fail(
          "the file system of \(place) cannot be watched (\(String(cString: strerror(e))))"
            + (e == ENODEV || e == EXDEV || e == EOPNOTSUPP ? ": it has no file handles for fanotify" : ""))
      }
    }
    var p: [Int32] = [0, 0]
    guard pipe2(&p, O_CLOEXEC | O_NONBLOCK) == 0 else { throw fail("pipe2: \(String(cString: strerror(errno)))") }
    self.fd = fd
    self.mountFDs = mountFDs
    self.roots = roots
    self.quiet = quiet
    self.mounts = mounts
    self.wake = (p[0], p[1])
    self.onChange = onChange
    if background {
      reading.store(true, ordering: .sequentiallyConsistent)
      let t = Thread { [self] in
        self.readLoop()
        self.reading.store(false, ordering: .sequentiallyConsistent)
      }
      t.name = "tidemark.journal"
      t.start()
    }
  }

  /// Without a background reader nothing else holds the journal; with one, `close` must be called (the reader
  /// holds it until then).
  deinit {
    close()
    state.withLock { $0.buffer?.deallocate() }
  }

  /// Stops reading and closes the kernel's queue.
  public func close() {
    let first = state.withLock { s -> Bool in
      defer { s.closed = true }
      return !s.closed
    }
    guard first else { return }
    var b: UInt8 = 1
    _ = Glibc.write(wake.write, &b, 1)
    // The reader sees `closed` and returns; wait for it so that no read runs on a closed descriptor.
    while reading.load(ordering: .sequentiallyConsistent) { usleep(1000) }
    Glibc.close(fd)
    Glibc.close(wake.read)
    Glibc.close(wake.write)
    for m in mountFDs.values { Glibc.close(m) }
  }

  public var counters: Counters { state.withLock { $0.counters } }

  /// The changes since the previous call (or since the journal started), and a fresh start for the next.
  /// Blocking: turning handles into paths takes system calls.
  public func take() -> Changes {
    let (marks, doubt, events) = state.withLock { s -> ([HandleKey: Mark], String?, Int) in
      drain(&s)
      defer {
        s.marks = [:]
        s.doubt = nil
        s.events = 0
        s.counters.pendingDirectories = 0
        s.counters.firstPending = nil
      }
      return (s.marks, s.doubt, s.events)
    }
    var out = Changes()
    out.events = events
    out.doubt = doubt
    if ChangeJournal.mountPoints(under: roots) != mounts {
      out.doubt = out.doubt ?? "the file systems mounted under the sources changed"
    }
    for (key, mark) in marks {
      let path: BytePath
      switch resolve(key) {
      case .gone: continue  // removed since: its removal marked its parent
      case .failed(let why):
        out.doubt = out.doubt ?? why
        continue
      case .path(let p): path = p
      }
      if mark.listing { out.dirty.insert(path) }
      if mark.itself, path.bytes.count > 1 {
        out.dirty.insert(path.parent)
      }
      for n in mark.newDirectories { out.fresh.insert(path.appending(n)) }
    }
    return out
  }

  // MARK: Reading the queue

  func readLoop() {
    var fds = [
      pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: wake.read, events: Int16(POLLIN), revents: 0),
    ]
    while true {
      let r = poll(&fds, 2, -1)
      if r < 0 && errno == EINTR { continue }
      var notify = false
      let stop = state.withLock { s -> Bool in
        if s.closed { return true }
        let before = s.counters.firstPending
        drain(&s)
        notify = before == nil && s.counters.firstPending != nil
        return false
      }
      if stop || r < 0 { return }
      if notify { onChange?() }
    }
  }

  /// Reads every queued event into `s`. Called with the lock held.
  func drain(_ s: inout State) {
    guard !s.closed else { return }
    let size = ChangeJournal.bufferSize
    let buf = s.buffer ?? UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
    s.buffer = buf
    while true {
      let n = Glibc.read(fd, buf, size)
      if n < 0 {
        if errno == EINTR { continue }
        if errno != EAGAIN {
          s.doubt = s.doubt ?? "reading the change journal failed: \(String(cString: strerror(errno)))"
        }
        return
      }
      if n == 0 { return }
      parse(UnsafeRawBufferPointer(start: buf, count: n), &s)
    }
  }

  // struct fanotify_event_metadata: u32 event_len, u8 vers, u8 reserved, u16 metadata_len, u64 mask, s32 fd,
  // s32 pid. Then info records: u8 type, u8 pad, u16 len; for the FID types: fsid (2 x s32), then
  // struct file_handle (u32 handle_bytes, s32 handle_type, bytes), then for DFID_NAME the name, NUL-terminated.
  func parse(_ b: UnsafeRawBufferPointer, _ s: inout State) {
    var off = 0
    while off + 24 <= b.count {
      let len = Int(b.loadUnaligned(fromByteOffset: off, as: UInt32.self))
      let metaLen = Int(b.loadUnaligned(fromByteOffset: off + 6, as: UInt16.self))
      let mask = b.loadUnaligned(fromByteOffset: off + 8, as: UInt64.self)
      let efd = b.loadUnaligned(fromByteOffset: off + 16, as: Int32.self)
      guard len >= 24, off + len <= b.count else { break }
      if efd >= 0 { Glibc.close(efd) }
      s.events += 1
      s.counters.events += 1
      if mask & UInt64(FAN_Q_OVERFLOW) != 0 {
        s.doubt = "the kernel's event queue overflowed"
        s.counters.overflows += 1
        notePending(&s)
        off += len
        continue
      }
      var info = off + metaLen
      var recorded = false
      while info + 4 <= off + len {
        let type = b[info]
        let ilen = Int(b.loadUnaligned(fromByteOffset: info + 2, as: UInt16.self))
        guard ilen >= 4, info + ilen <= off + len else { break }
        if type == UInt8(FAN_EVENT_INFO_TYPE_DFID_NAME) || type == UInt8(FAN_EVENT_INFO_TYPE_DFID),
          ilen >= 20
        {
          let v0 = UInt64(b.loadUnaligned(fromByteOffset: info + 4, as: UInt32.self))
          let v1 = UInt64(b.loadUnaligned(fromByteOffset: info + 8, as: UInt32.self))
          let hbytes = Int(b.loadUnaligned(fromByteOffset: info + 12, as: UInt32.self))
          let htype = b.loadUnaligned(fromByteOffset: info + 16, as: Int32.self)
          guard info + 20 + hbytes <= info + ilen else { break }
          let key = HandleKey(
            fsid: v1 << 32 | v0, type: htype, bytes: Array(b[(info + 20)..<(info + 20 + hbytes)]))
          var name: [UInt8] = []
          if type == UInt8(FAN_EVENT_INFO_TYPE_DFID_NAME) {
            name = Array(b[(info + 20 + hbytes)..<(info + ilen)].prefix { $0 != 0 })
          }
          record(key, name: name, mask: mask, &s)
          recorded = true
        }
        info += ilen
      }
      if !recorded {
        s.doubt = s.doubt ?? "an event came without the directory it happened in"
        notePending(&s)
      }
      off += len
    }
  }

  func notePending(_ s: inout State) {
    if s.counters.firstPending == nil { s.counters.firstPending = Date().timeIntervalSince1970 }
  }

  func record(_ key: HandleKey, name: [UInt8], mask: UInt64, _ s: inout State) {
    let ondir = mask & UInt64(FAN_ONDIR) != 0
    let moved = mask & UInt64(FAN_MOVED_FROM | FAN_MOVED_TO) != 0
    // A directory moved anywhere may have moved into the roots: what was outside is asked again.
    if ondir && moved { s.outside.removeAll() }
    var m = s.marks[key] ?? Mark()
    if s.marks[key] == nil {
      if s.outside.contains(key) { return }
      switch resolve(key) {
      case .gone: return
      case .failed(let why):
        s.doubt = s.doubt ?? why
        notePending(&s)
        return
      case .path(let p):
        if !within(p, roots) {
          if s.outside.count > 10_000 { s.outside.removeAll() }
          s.outside.insert(key)
          return
        }
        m.quiet = !quiet.isEmpty && within(p, quiet)
      }
      if s.marks.count >= ChangeJournal.maxPending {
        s.doubt = s.doubt ?? "more than \(ChangeJournal.maxPending) directories changed"
        notePending(&s)
        return
      }
    }
    if name == [46] {
      m.itself = true
    } else {
      m.listing = true
      if ondir && mask & UInt64(FAN_CREATE | FAN_MOVED_TO) != 0 { m.newDirectories.insert(name) }
    }
    s.marks[key] = m
    s.counters.pendingDirectories = s.marks.count
    if !m.quiet { notePending(&s) }
  }

  func within(_ p: BytePath, _ places: [BytePath]) -> Bool {
    places.contains { r in
      p.bytes == r.bytes || r.bytes == [47]
        || (p.bytes.count > r.bytes.count && p.bytes.starts(with: r.bytes) && p.bytes[r.bytes.count] == 47)
    }
  }

  enum Resolved {
    case path(BytePath)
    case gone
    case failed(String)
  }

  /// The directory's path now, through /proc/self/fd.
  func resolve(_ key: HandleKey) -> Resolved {
    guard let mfd = mountFDs[key.fsid] else { return .failed("an event came from a file system not watched") }
    let dfd = key.bytes.withUnsafeBufferPointer {
      cposix_open_by_handle(mfd, key.type, $0.baseAddress, UInt32($0.count), CPOSIX_O_PATH | O_CLOEXEC)
    }
    if dfd < 0 {
      let e = errno
      if e == ESTALE || e == ENOENT { return .gone }
      return .failed("cannot open a changed directory by its handle (\(String(cString: strerror(e))))")
    }
    defer { Glibc.close(dfd) }
    guard let target = try? Sys.readlink(BytePath("/proc/self/fd/\(dfd)")), target.first == 47 else {
      return .failed("cannot find the path of a changed directory")
    }
    let deleted = Array(" (deleted)".utf8)
    if target.count > deleted.count && Array(target.suffix(deleted.count)) == deleted { return .gone }
    return .path(BytePath(bytes: target))
  }

  /// Mount points strictly under any of `roots` (from /proc/self/mountinfo), sorted.
  static func mountPoints(under roots: [BytePath]) -> [String] {
    guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return [] }
    var out: [String] = []
    for line in text.split(separator: "\n") {
      let fields = line.split(separator: " ")
      guard fields.count > 4 else { continue }
      let point = unescape(String(fields[4]))
      let p = Array(point.utf8)
      if roots.contains(where: { r in
        r.bytes == [47] ? p.count > 1 : p.count > r.bytes.count && p.starts(with: r.bytes) && p[r.bytes.count] == 47
      }) {
        out.append(point)
      }
    }
    return out.sorted()
  }

  /// mountinfo escapes space, tab, newline and backslash as \ooo.
  static func unescape(_ s: String) -> String {
    guard s.contains("\\") else { return s }
    var out: [UInt8] = []
    let b = Array(s.utf8)
    var i = 0
    while i < b.count {
      if b[i] == 92, i + 3 < b.count, let v = UInt8(String(decoding: b[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
        out.append(v)
        i += 4
      } else {
        out.append(b[i])
        i += 1
      }
    }
    return String(decoding: out, as: UTF8.self)
  }
}

extension BytePath {
  /// The directory that holds this path ("/" for "/x").
  public var parent: BytePath {
    guard let i = bytes.lastIndex(of: 47) else { return BytePath(".") }
    return BytePath(bytes: i == 0 ? [47] : Array(bytes[..<i]))
  }
}
