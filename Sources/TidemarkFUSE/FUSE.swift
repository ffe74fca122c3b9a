// TidemarkFUSE: thin Swift over libfuse3's low-level API. The only module that imports CFuse3.
//
// A `FUSEFilesystem` answers requests with async methods; `FUSESession` mounts it, runs libfuse's
// request loop on a thread of its own and answers each request from a Task, so a slow blob fetch
// never holds up other requests. Read-only: every mutating operation is left unimplemented (EROFS /
// ENOSYS from the kernel).
//
// Never: global mutable state other than the callback trampolines (they capture nothing and find the
// session through `fuse_req_userdata`); an OpenSSL/libfuse type in the public API.
internal import CFuse3
import Foundation
import Synchronization

public enum FUSELibrary {
  /// The libfuse3 version string (fuse_pkgversion).
  public static var version: String { String(cString: fuse_pkgversion()) }
}

/// A failed request: the errno the kernel passes to the caller.
public struct FUSEError: Error, Sendable {
  public let errno: Int32
  public init(_ errno: Int32) { self.errno = errno }
}

/// Attributes of one inode, as `stat` reports them.
public struct FUSEAttributes: Sendable {
  public var ino: UInt64
  public var mode: UInt32
  public var nlink: UInt32 = 1
  public var uid: UInt32 = 0
  public var gid: UInt32 = 0
  public var rdev: UInt64 = 0
  public var size: Int64 = 0
  public var blocks: Int64 = 0
  public var atime: (sec: Int64, nsec: Int64) = (0, 0)
  public var mtime: (sec: Int64, nsec: Int64) = (0, 0)
  public var ctime: (sec: Int64, nsec: Int64) = (0, 0)
  /// How long the kernel may cache these attributes and the name that led to them (seconds).
  public var timeout: Double = 60

  public init(ino: UInt64, mode: UInt32) {
    self.ino = ino
    self.mode = mode
  }
}

public struct FUSEDirEntry: Sendable {
  public var name: [UInt8]
  public var ino: UInt64
  public var mode: UInt32
  public init(name: [UInt8], ino: UInt64, mode: UInt32) {
    self.name = name
    self.ino = ino
    self.mode = mode
  }
}

/// A read-only filesystem. Inode 1 is the root. Methods may run concurrently.
///
/// Requests that need no I/O are answered on the session thread, synchronously: the plain methods
/// below, and the `…Now` variants, which answer from memory or return nil when the async method must
/// load something (that one then runs in a Task). Neither may block.
public protocol FUSEFilesystem: Sendable {
  /// The child `name` of directory `parent`; counts one kernel reference to the returned inode.
  func lookup(parent: UInt64, name: [UInt8]) async throws -> FUSEAttributes
  func lookupNow(parent: UInt64, name: [UInt8]) throws -> FUSEAttributes?
  /// The kernel dropped `count` references to `ino`.
  func forget(ino: UInt64, count: UInt64)
  func getattr(ino: UInt64) async throws -> FUSEAttributes
  func getattrNow(ino: UInt64) throws -> FUSEAttributes?
  func readlink(ino: UInt64) async throws -> [UInt8]
  func readlinkNow(ino: UInt64) throws -> [UInt8]?
  /// Opens a regular file; the handle is passed to `read` and `release`. `keepCache`: the contents
  /// never change, so the kernel may keep cached pages across opens.
  func open(ino: UInt64) async throws -> (handle: UInt64, keepCache: Bool)
  func openNow(ino: UInt64) throws -> (handle: UInt64, keepCache: Bool)?
  /// The bytes at `offset` (at most `size`; fewer only at the end of the file), as consecutive pieces
  /// (slices of cached blobs), which are handed to the kernel without being copied together first.
  func read(ino: UInt64, handle: UInt64, offset: Int64, size: Int) async throws -> [ArraySlice<UInt8>]
  func readNow(ino: UInt64, handle: UInt64, offset: Int64, size: Int) throws -> [ArraySlice<UInt8>]?
  func release(ino: UInt64, handle: UInt64)
  /// The whole listing of a directory, without "." and ".."; `cacheable` when it never changes.
  func readdir(ino: UInt64) async throws -> (entries: [FUSEDirEntry], cacheable: Bool)
  func readdirNow(ino: UInt64) throws -> (entries: [FUSEDirEntry], cacheable: Bool)?
  func listxattr(ino: UInt64) async throws -> [[UInt8]]
  func listxattrNow(ino: UInt64) throws -> [[UInt8]]?
  func getxattr(ino: UInt64, name: [UInt8]) async throws -> [UInt8]
  func getxattrNow(ino: UInt64, name: [UInt8]) throws -> [UInt8]?
  /// True when files need no open or release: `read` finds the file by inode (handle 0) and the
  /// contents may stay cached across opens. The kernel is then told not to send opens and releases
  /// at all (two round trips fewer per file).
  var statelessOpen: Bool { get }
  /// Called once the session is mounted, with a way to put a file's whole content into the kernel's page cache
  /// (`FUSESession.store`), so that reads of it are answered without a request. Only for files whose content
  /// never changes, and only with `statelessOpen` (opens then keep cached pages).
  func attach(store: @escaping @Sendable (_ ino: UInt64, _ content: [UInt8]) -> Bool)
}

extension FUSEFilesystem {
  public var statelessOpen: Bool { false }
  public func attach(store: @escaping @Sendable (_ ino: UInt64, _ content: [UInt8]) -> Bool) {}
  public func lookupNow(parent: UInt64, name: [UInt8]) throws -> FUSEAttributes? { nil }
  public func readNow(ino: UInt64, handle: UInt64, offset: Int64, size: Int) throws -> [ArraySlice<UInt8>]? {
    nil
  }
  public func readdirNow(ino: UInt64) throws -> (entries: [FUSEDirEntry], cacheable: Bool)? { nil }
  public func getattrNow(ino: UInt64) throws -> FUSEAttributes? { nil }
  public func readlinkNow(ino: UInt64) throws -> [UInt8]? { nil }
  public func openNow(ino: UInt64) throws -> (handle: UInt64, keepCache: Bool)? { nil }
  public func listxattrNow(ino: UInt64) throws -> [[UInt8]]? { nil }
  public func getxattrNow(ino: UInt64, name: [UInt8]) throws -> [UInt8]? { nil }
}

/// A mounted filesystem. `run()` blocks until the filesystem is unmounted or `exit()` is called (the
/// caller wires signals to `exit()`).
public final class FUSESession: @unchecked Sendable {
  // @unchecked: `session` is set once in init and used by the loop thread and by `exit()`, which
  // libfuse allows; everything mutable lives behind Mutexes in `Context`.
  private let session: OpaquePointer
  private let context: Unmanaged<Context>
  public let mountpoint: String

  /// Mounts `filesystem` at `mountpoint` with `options` (as for `-o`: "ro", "auto_unmount", …).
  public init(filesystem: any FUSEFilesystem, mountpoint: String, options: [String]) throws {
    self.mountpoint = mountpoint
    let ctx = Unmanaged.passRetained(Context(fs: filesystem))
    var argv: [UnsafeMutablePointer<CChar>?] = [strdup("tidemark")]
    if !options.isEmpty {
      argv.append(strdup("-o"))
      argv.append(strdup(options.joined(separator: ",")))
    }
    defer { for a in argv { free(a) } }
    var ops = FUSESession.operations()
    let se: OpaquePointer? = argv.withUnsafeMutableBufferPointer { buf in
      var args = fuse_args(argc: Int32(buf.count), argv: buf.baseAddress, allocated: 0)
      let s = fuse_session_new(&args, &ops, MemoryLayout<fuse_lowlevel_ops>.size, ctx.toOpaque())
      fuse_opt_free_args(&args)
      return s
    }
    guard let se else {
      ctx.release()
      throw FUSEError(EINVAL)
    }
    guard fuse_session_mount(se, mountpoint) == 0 else {
      fuse_session_destroy(se)
      ctx.release()
      throw FUSEError(errno == 0 ? EIO : errno)
    }
    session = se
    context = ctx
    filesystem.attach { [weak self] ino, content in self?.store(ino: ino, content: content) ?? false }
  }

  /// Puts `content` into the kernel's page cache as the whole of file `ino` (FUSE_NOTIFY_STORE): the kernel then
  /// answers reads of it from memory, without a request, for as long as it keeps the pages. False when the
  /// kernel holds no such inode (not looked up yet, or forgotten), or the session has ended. A write to the
  /// FUSE device: call it off Swift's cooperative pool.
  ///
  /// It may wait: the kernel locks each page it fills, and a page that a read is fetching stays locked until that
  /// read is answered. So the caller must not hold anything the answer to a read needs (a lock, or a thread of a
  /// pool that reads are served from), and no lock is held here during the call.
  public func store(ino: UInt64, content: [UInt8]) -> Bool {
    guard !content.isEmpty else { return true }
    let entered = storing.withLock { s in
      if s.open { s.calls += 1 }
      return s.open
    }
    guard entered else { return false }
    defer { storing.withLock { $0.calls -= 1 } }
    return content.withUnsafeBytes { b in
      var v = fuse_bufvec()
      v.count = 1
      v.buf.size = b.count
      v.buf.mem = UnsafeMutableRawPointer(mutating: b.baseAddress)
      v.buf.fd = -1
      return fuse_lowlevel_notify_store(session, ino, 0, &v, fuse_buf_copy_flags(0)) == 0
    }
  }

  /// Whether `store` may still use the session (not from the end of the loop on), and its calls under way (the
  /// session is freed only when none is).
  private let storing = Mutex((open: true, calls: 0))

  /// Serves requests on the calling thread until unmounted; then unmounts and frees the session.
  /// Call once, from a thread that may block (not from Swift's cooperative pool).
  public func run() {
    // exit() interrupts the loop's blocking read with SIGUSR2 (a handler without SA_RESTART, so the
    // read fails with EINTR and the loop sees the exit flag).
    var sa = sigaction()
    sa.__sigaction_handler.sa_handler = { _ in }
    sigemptyset(&sa.sa_mask)
    sa.sa_flags = 0
    sigaction(SIGUSR2, &sa, nil)
    // Threads started from Dispatch's pool inherit its mask, which blocks SIGUSR2.
    var set = sigset_t()
    sigemptyset(&set)
    sigaddset(&set, SIGUSR2)
    pthread_sigmask(SIG_UNBLOCK, &set, nil)
    loopThread.withLock { $0 = pthread_self() }
    _ = fuse_session_loop(session)
    loopThread.withLock { $0 = nil }
    // `exit()` let the stores under way finish while the loop still answered reads; when the kernel ended the
    // loop (an unmount from outside), it ended the pending requests too, so no store waits on one of their pages.
    let idle = stopStoring()
    fuse_session_unmount(session)
    // A store still waiting uses the session when it returns: then the session is left to the process's exit.
    if idle { fuse_session_destroy(session) }
    context.release()
  }

  /// Lets no new store start and waits (up to 5 s) for those under way; true when none is left.
  private func stopStoring() -> Bool {
    storing.withLock { $0.open = false }
    for _ in 0..<5000 {
      if storing.withLock({ $0.calls }) == 0 { return true }
      usleep(1000)
    }
    return false
  }

  private let loopThread = Mutex<pthread_t?>(nil)

  /// Stops the loop (from any thread, without waiting); `run()` then unmounts and returns. Stores under way finish
  /// first, while the loop still answers the reads whose pages they may be waiting for.
  public func exit() {
    Thread.detachNewThread { [self] in
      _ = stopStoring()
      fuse_session_exit(session)
      loopThread.withLock { t in
        if let t { pthread_kill(t, SIGUSR2) }
      }
    }
  }

  /// The callbacks: they capture nothing, find the context through userdata, and answer from a Task.
  private static func operations() -> fuse_lowlevel_ops {
    var ops = fuse_lowlevel_ops()
    ops.`init` = { userdata, conn in
      guard let conn, let userdata else { return }
      let context = Unmanaged<Context>.fromOpaque(userdata).takeUnretainedValue()
      // Large reads when the kernel allows them; requests are answered concurrently.
      conn.pointee.max_readahead = 1 << 20
      // Symlink targets never change: let the kernel keep them.
      if conn.pointee.capable & UInt32(FUSE_CAP_CACHE_SYMLINKS) != 0 {
        conn.pointee.want |= UInt32(FUSE_CAP_CACHE_SYMLINKS)
      }
      // Directory listings carry attributes (readdirplus), always rather than "adaptively": it saves
      // a lookup per entry for tools that stat what they list (rsync, ls -l, du), and the adaptive
      // mode measured slower even for `find` (docs/performance.md).
      if conn.pointee.capable & UInt32(FUSE_CAP_READDIRPLUS) != 0 {
        conn.pointee.want |= UInt32(FUSE_CAP_READDIRPLUS)
        conn.pointee.want &= ~UInt32(FUSE_CAP_READDIRPLUS_AUTO)
      }
      if context.fs.statelessOpen && conn.pointee.capable & UInt32(FUSE_CAP_NO_OPEN_SUPPORT) != 0 {
        context.noOpen.store(true, ordering: .relaxed)
      }
    }
    ops.lookup = { req, parent, name in
      let r = Request(req), n = bytes(name)
      if r.answered({ try $0.lookupNow(parent: parent, name: n) }, r.replyEntry) { return }
      r.serve { fs in r.replyEntry(try await fs.lookup(parent: parent, name: n)) }
    }
    ops.forget = { req, ino, n in
      Request(req).context.fs.forget(ino: ino, count: n)
      fuse_reply_none(req)
    }
    ops.forget_multi = { req, count, forgets in
      let fs = Request(req).context.fs
      for i in 0..<count {
        if let f = forgets?[i] { fs.forget(ino: f.ino, count: f.nlookup) }
      }
      fuse_reply_none(req)
    }
    ops.getattr = { req, ino, _ in
      let r = Request(req)
      if r.answered({ try $0.getattrNow(ino: ino) }, r.replyAttr) { return }
      r.serve { fs in r.replyAttr(try await fs.getattr(ino: ino)) }
    }
    ops.readlink = { req, ino in
      let r = Request(req)
      if r.answered({ try $0.readlinkNow(ino: ino) }, r.replyLink) { return }
      r.serve { fs in r.replyLink(try await fs.readlink(ino: ino)) }
    }
    ops.open = { req, ino, fi in
      let r = Request(req)
      guard let fi else { return r.fail(EIO) }
      if fi.pointee.flags & O_ACCMODE != O_RDONLY { return r.fail(EROFS) }
      // ENOSYS here means "opens always succeed, stop sending them" (FUSE_CAP_NO_OPEN_SUPPORT).
      if r.context.noOpen.load(ordering: .relaxed) { return r.fail(ENOSYS) }
      if r.answered(
        { try $0.openNow(ino: ino) },
        { (fh, keep) in
          fi.pointee.fh = fh
          fi.pointee.keep_cache = keep ? 1 : 0
          _ = fuse_reply_open(r.req, fi)
        })
      {
        return
      }
      let info = FileInfo(fi.pointee)
      r.serve { fs in
        let (fh, keep) = try await fs.open(ino: ino)
        var i = info.value
        i.fh = fh
        i.keep_cache = keep ? 1 : 0
        _ = fuse_reply_open(r.req, &i)
      }
    }
    ops.read = { req, ino, size, off, fi in
      let r = Request(req)
      let fh = fi?.pointee.fh ?? 0
      if r.answered({ try $0.readNow(ino: ino, handle: fh, offset: Int64(off), size: size) }, r.replyData) { return }
      r.serve { fs in r.replyData(try await fs.read(ino: ino, handle: fh, offset: Int64(off), size: size)) }
    }
    ops.release = { req, ino, fi in
      Request(req).context.fs.release(ino: ino, handle: fi?.pointee.fh ?? 0)
      fuse_reply_err(req, 0)
    }
    ops.opendir = { req, ino, fi in
      let r = Request(req)
      guard let fi else { return r.fail(EIO) }
      if r.answered(
        { try $0.readdirNow(ino: ino) },
        { (entries, cacheable) in
          fi.pointee.fh = r.context.openListing(entries)
          // An unchanging listing stays in the kernel across opens too (keep_cache), so a second `ls`
          // or walk of the same directory sends no readdir at all.
          fi.pointee.cache_readdir = cacheable ? 1 : 0
          fi.pointee.keep_cache = cacheable ? 1 : 0
          _ = fuse_reply_open(r.req, fi)
        })
      {
        return
      }
      let info = FileInfo(fi.pointee)
      r.serve { fs in
        let (entries, cacheable) = try await fs.readdir(ino: ino)
        var i = info.value
        i.fh = r.context.openListing(entries)
        i.cache_readdir = cacheable ? 1 : 0
        i.keep_cache = cacheable ? 1 : 0
        _ = fuse_reply_open(r.req, &i)
      }
    }
    ops.readdir = { req, ino, size, off, fi in
      let r = Request(req)
      let entries = r.context.listing(fi?.pointee.fh ?? 0) ?? []
      r.replyDir(ino: ino, entries: entries, size: size, offset: Int(off))
    }
    ops.readdirplus = { req, ino, size, off, fi in
      let r = Request(req)
      let entries = r.context.listing(fi?.pointee.fh ?? 0) ?? []
      r.replyDirPlus(ino: ino, entries: entries, size: size, offset: Int(off))
    }
    ops.releasedir = { req, _, fi in
      Request(req).context.closeListing(fi?.pointee.fh ?? 0)
      fuse_reply_err(req, 0)
    }
    ops.statfs = { req, _ in
      var s = statvfs()
      s.f_bsize = 4096
      s.f_frsize = 4096
      s.f_namemax = 255
      fuse_reply_statfs(req, &s)
    }
    ops.listxattr = { req, ino, size in
      let r = Request(req)
      let reply: @Sendable ([[UInt8]]) -> Void = { names in
        var out: [UInt8] = []
        for n in names { out += n + [0] }
        r.replyXattr(out, size: size)
      }
      if r.answered({ try $0.listxattrNow(ino: ino) }, reply) { return }
      r.serve { fs in reply(try await fs.listxattr(ino: ino)) }
    }
    ops.getxattr = { req, ino, name, size in
      let r = Request(req), n = bytes(name)
      if r.answered({ try $0.getxattrNow(ino: ino, name: n) }, { r.replyXattr($0, size: size) }) { return }
      r.serve { fs in r.replyXattr(try await fs.getxattr(ino: ino, name: n), size: size) }
    }
    return ops
  }
}

private func bytes(_ p: UnsafePointer<CChar>?) -> [UInt8] {
  guard let p else { return [] }
  return Array(UnsafeRawBufferPointer(start: p, count: strlen(p)))
}

/// fuse_file_info copied by value into a Task (libfuse's pointer is only valid during the callback).
private struct FileInfo: @unchecked Sendable {
  let value: fuse_file_info
  init(_ v: fuse_file_info) { value = v }
}

/// Per-session state: the filesystem and open directory listings.
private final class Context: Sendable {
  let fs: any FUSEFilesystem
  /// The kernel agreed not to send opens (set once, in `init`).
  let noOpen = Atomic<Bool>(false)
  private let listings = Mutex<(next: UInt64, open: [UInt64: [FUSEDirEntry]])>((1, [:]))

  init(fs: any FUSEFilesystem) { self.fs = fs }

  func openListing(_ e: [FUSEDirEntry]) -> UInt64 {
    listings.withLock { l in
      let h = l.next
      l.next += 1
      l.open[h] = e
      return h
    }
  }
  func listing(_ h: UInt64) -> [FUSEDirEntry]? { listings.withLock { $0.open[h] } }
  func closeListing(_ h: UInt64) { _ = listings.withLock { $0.open.removeValue(forKey: h) } }
}

/// One kernel request. libfuse lets any thread answer it, exactly once, later.
private struct Request: @unchecked Sendable {
  let req: fuse_req_t
  init(_ r: fuse_req_t?) { req = r! }

  var context: Context { Unmanaged<Context>.fromOpaque(fuse_req_userdata(req)!).takeUnretainedValue() }

  func fail(_ e: Int32) { fuse_reply_err(req, e) }

  /// Answers on this thread when `body` can (a value: `reply`; an error: its errno) and says so; false
  /// when `body` returned nil (the caller then serves the request from a Task).
  func answered<T>(_ body: (any FUSEFilesystem) throws -> T?, _ reply: (T) -> Void) -> Bool {
    do {
      guard let v = try body(context.fs) else { return false }
      reply(v)
    } catch let e as FUSEError {
      fail(e.errno)
    } catch {
      fail(EIO)
    }
    return true
  }

  /// Answers a read with `pieces`, gathered by the kernel (fuse_reply_iov): no copy on our side.
  func replyData(_ pieces: [ArraySlice<UInt8>]) {
    var iov: [iovec] = []
    iov.reserveCapacity(pieces.count)
    // Each piece's pointer is valid only inside its closure: nest them, then reply at the bottom.
    func gather(_ k: Int) {
      guard k < pieces.count else {
        if iov.isEmpty {
          fuse_reply_buf(req, nil, 0)  // end of file
        } else {
          _ = iov.withUnsafeBufferPointer { fuse_reply_iov(req, $0.baseAddress, Int32($0.count)) }
        }
        return
      }
      pieces[k].withUnsafeBufferPointer { b in
        if let base = b.baseAddress, b.count > 0 {
          iov.append(iovec(iov_base: UnsafeMutableRawPointer(mutating: base), iov_len: b.count))
        }
        gather(k + 1)
      }
    }
    gather(0)
  }

  /// Runs `body` in a Task; a thrown FUSEError becomes its errno, anything else EIO.
  func serve(_ body: @escaping @Sendable (any FUSEFilesystem) async throws -> Void) {
    let fs = context.fs
    Task {
      do {
        try await body(fs)
      } catch let e as FUSEError {
        fail(e.errno)
      } catch {
        fail(EIO)
      }
    }
  }

  func replyEntry(_ a: FUSEAttributes) {
    var e = Request.entry(a)
    fuse_reply_entry(req, &e)
  }

  func replyLink(_ target: [UInt8]) {
    _ = (target + [0]).withUnsafeBufferPointer { b in
      fuse_reply_readlink(req, UnsafeRawPointer(b.baseAddress!).assumingMemoryBound(to: CChar.self))
    }
  }

  func replyAttr(_ a: FUSEAttributes) {
    var s = Request.stat(a)
    fuse_reply_attr(req, &s, a.timeout)
  }

  func replyXattr(_ value: [UInt8], size: Int) {
    if size == 0 {
      fuse_reply_xattr(req, value.count)
    } else if value.count > size {
      fail(ERANGE)
    } else {
      _ = value.withUnsafeBytes { fuse_reply_buf(req, $0.baseAddress?.assumingMemoryBound(to: CChar.self), $0.count) }
    }
  }

  /// Answers one readdir request: "." and "..", then the entries, from position `offset`.
  func replyDir(ino: UInt64, entries: [FUSEDirEntry], size: Int, offset: Int) {
    var buf = [CChar](repeating: 0, count: size)
    var used = 0
    let total = entries.count + 2
    var i = offset
    while i < total {
      let (name, eino, mode): ([UInt8], UInt64, UInt32) =
        i == 0
        ? ([46], ino, 0o040000)
        : i == 1
          ? ([46, 46], 1, 0o040000)
          : (entries[i - 2].name, entries[i - 2].ino, entries[i - 2].mode)
      var st = Glibc.stat()
      st.st_ino = UInt(eino)
      st.st_mode = mode
      let n = (name + [0]).withUnsafeBufferPointer { nb in
        buf.withUnsafeMutableBufferPointer { b in
          fuse_add_direntry(
            req, b.baseAddress! + used, size - used,
            UnsafeRawPointer(nb.baseAddress!).assumingMemoryBound(to: CChar.self), &st, off_t(i + 1))
        }
      }
      if n > size - used { break }
      used += n
      i += 1
    }
    _ = buf.withUnsafeBufferPointer { fuse_reply_buf(req, $0.baseAddress, used) }
  }

  /// Answers one readdirplus request: like `replyDir`, but each entry carries its attributes, which
  /// saves the lookup the kernel would otherwise send for it. Every entry returned (but "." and "..")
  /// counts as a lookup, so an entry is looked up only once it is certain to fit in the answer. An
  /// entry that cannot be answered from memory ends the answer early (the kernel asks again for the
  /// rest); if it is the first one, the answer comes from a Task.
  func replyDirPlus(ino: UInt64, entries: [FUSEDirEntry], size: Int, offset: Int) {
    var buf = [CChar](repeating: 0, count: size)
    var used = 0
    let total = entries.count + 2
    var i = offset
    let fs = context.fs
    while i < total {
      let name: [UInt8] = i == 0 ? [46] : i == 1 ? [46, 46] : entries[i - 2].name
      let cname = name + [0]
      let need = cname.withUnsafeBufferPointer { nb in
        fuse_add_direntry_plus(
          req, nil, 0, UnsafeRawPointer(nb.baseAddress!).assumingMemoryBound(to: CChar.self), nil, 0)
      }
      if need > size - used { break }
      var e = fuse_entry_param()
      if i < 2 {
        e.attr.st_ino = UInt(i == 0 ? ino : 1)
        e.attr.st_mode = 0o040000
      } else {
        let a: FUSEAttributes?
        do {
          a = try fs.lookupNow(parent: ino, name: name)
        } catch {
          a = nil
        }
        guard let a else {
          if used == 0 { return serveOneDirPlus(ino: ino, entry: entries[i - 2], index: i) }
          break
        }
        e = Request.entry(a)
      }
      buf.withUnsafeMutableBufferPointer { b in
        cname.withUnsafeBufferPointer { nb in
          _ = fuse_add_direntry_plus(
            req, b.baseAddress! + used, size - used,
            UnsafeRawPointer(nb.baseAddress!).assumingMemoryBound(to: CChar.self), &e, off_t(i + 1))
        }
      }
      used += need
      i += 1
    }
    _ = buf.withUnsafeBufferPointer { fuse_reply_buf(req, $0.baseAddress, used) }
  }

  /// The slow path of readdirplus: one entry, looked up from a Task (a name that vanished is skipped
  /// by answering with a plain entry that carries no attributes).
  private func serveOneDirPlus(ino: UInt64, entry: FUSEDirEntry, index: Int) {
    let r = self
    let name = entry.name
    Task {
      var e = fuse_entry_param()
      e.attr.st_ino = UInt(entry.ino)
      e.attr.st_mode = entry.mode
      if let a = try? await r.context.fs.lookup(parent: ino, name: name) { e = Request.entry(a) }
      var buf = [CChar](repeating: 0, count: 4096 + name.count)
      let n = (name + [0]).withUnsafeBufferPointer { nb in
        buf.withUnsafeMutableBufferPointer { b in
          fuse_add_direntry_plus(
            r.req, b.baseAddress!, b.count, UnsafeRawPointer(nb.baseAddress!).assumingMemoryBound(to: CChar.self),
            &e, off_t(index + 1))
        }
      }
      _ = buf.withUnsafeBufferPointer { fuse_reply_buf(r.req, $0.baseAddress, n) }
    }
  }

  static func entry(_ a: FUSEAttributes) -> fuse_entry_param {
    var e = fuse_entry_param()
    e.ino = a.ino
    e.generation = 1
    e.attr = stat(a)
    e.attr_timeout = a.timeout
    e.entry_timeout = a.timeout
    return e
  }

  private static func stat(_ a: FUSEAttributes) -> Glibc.stat {
    var s = Glibc.stat()
    s.st_ino = UInt(a.ino)
    s.st_mode = a.mode
    s.st_nlink = UInt(a.nlink)
    s.st_uid = a.uid
    s.st_gid = a.gid
    s.st_rdev = UInt(a.rdev)
    s.st_size = Int(a.size)
    s.st_blocks = Int(a.blocks)
    s.st_blksize = 4096
    s.st_atim = timespec(tv_sec: Int(a.atime.sec), tv_nsec: Int(a.atime.nsec))
    s.st_mtim = timespec(tv_sec: Int(a.mtime.sec), tv_nsec: Int(a.mtime.nsec))
    s.st_ctim = timespec(tv_sec: Int(a.ctime.sec), tv_nsec: Int(a.ctime.nsec))
    return s
  }
}
