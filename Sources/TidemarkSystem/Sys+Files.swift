// File operations beyond single syscalls: extended attributes by C pointer (restore's hot path), tree
// removal, in-kernel copies, writeback hints, realpath, and writes to standard output that cannot fail.
internal import CPosix

#if canImport(Glibc)
  import Glibc
#endif

extension Sys {
  /// lsetxattr(2); returns 0 or -1 with errno set.
  public static func setXattr(
    _ path: UnsafePointer<CChar>, _ name: UnsafePointer<CChar>, _ value: UnsafeRawBufferPointer
  ) -> Int32 {
    lsetxattr(path, name, value.baseAddress, value.count, 0)
  }

  /// fsetxattr(2); returns 0 or -1 with errno set.
  public static func setXattr(_ fd: Int32, _ name: UnsafePointer<CChar>, _ value: UnsafeRawBufferPointer) -> Int32 {
    fsetxattr(fd, name, value.baseAddress, value.count, 0)
  }
}

extension Sys {
  public static func rmdir(_ p: BytePath) throws {
    _ = try p.withCString { c in try check("rmdir", p.description) { Glibc.rmdir(c) } }
  }

  /// Removes `p` and, if it is a directory, everything below it. Never follows a symlink (a link is
  /// removed, not what it points to). Returns the number of entries removed.
  @discardableResult
  public static func removeTree(_ p: BytePath) throws -> Int {
    let st = try lstat(p)
    guard st.isDirectory else {
      try unlink(p)
      return 1
    }
    var n = 0
    for name in try readDirectory(p) { n += try removeTree(p.appending(name)) }
    try rmdir(p)
    return n + 1
  }

  /// Copies `count` bytes from `src` at `from` to `dst` at `to` inside the kernel (copy_file_range:
  /// a reflink on filesystems that share extents), falling back to read and write.
  public static func copyRange(from src: Int32, at from: Int64, to dst: Int32, at to: Int64, count: Int) throws {
    var inOff = off_t(from)
    var outOff = off_t(to)
    var left = count
    while left > 0 {
      let n = copy_file_range(src, &inOff, dst, &outOff, left, 0)
      if n > 0 {
        left -= n
        continue
      }
      if n == 0 { throw SystemError(EIO, "copy_file_range", "source ended early") }
      if errno == EINTR { continue }
      if errno == EXDEV || errno == ENOSYS || errno == EOPNOTSUPP || errno == EINVAL { break }
      throw SystemError(errno, "copy_file_range", "")
    }
    // Fallback: plain reads and writes in 1 MiB pieces.
    var buf = [UInt8](repeating: 0, count: min(left, 1 << 20))
    while left > 0 {
      let want = min(left, buf.count)
      let got = try buf.withUnsafeMutableBytes {
        try pread(src, UnsafeMutableRawBufferPointer(rebasing: $0[0..<want]), offset: Int64(inOff))
      }
      if got <= 0 { throw SystemError(EIO, "read", "source ended early") }
      _ = try buf.withUnsafeBytes {
        try pwrite(dst, UnsafeRawBufferPointer(rebasing: $0[0..<got]), offset: Int64(outOff))
      }
      inOff += off_t(got)
      outOff += off_t(got)
      left -= got
    }
  }
}

extension Sys {
  /// Starts writeback of a file range without waiting for it (sync_file_range(2) with
  /// SYNC_FILE_RANGE_WRITE; `count` 0 means to the end); a hint, so errors are ignored.
  public static func startWriteback(_ fd: Int32, at offset: Int64 = 0, count: Int = 0) {
    _ = sync_file_range(fd, off_t(offset), off_t(count), UInt32(CPOSIX_SYNC_FILE_RANGE_WRITE))
  }

  /// realpath(3): the absolute path with every symlink resolved, or nil if it does not exist.
  public static func realpath(_ p: BytePath) -> BytePath? {
    p.withCString { c in
      guard let r = Glibc.realpath(c, nil) else { return nil }
      defer { free(r) }
      return BytePath(bytes: Array(UnsafeRawBufferPointer(start: r, count: strlen(r))))
    }
  }
}

extension Sys {
  /// Writes all of `bytes` to `fd` in as few write(2) calls as it takes (retrying EINTR); a write error ends it
  /// silently (for standard output and error, where there is nowhere left to report it).
  public static func writeAll(fd: Int32, _ bytes: [UInt8]) {
    bytes.withUnsafeBytes { buf in
      var done = 0
      while done < buf.count {
        let n = Glibc.write(fd, buf.baseAddress! + done, buf.count - done)
        if n < 0 {
          if errno == EINTR { continue }
          return
        }
        done += n
      }
    }
  }
}
