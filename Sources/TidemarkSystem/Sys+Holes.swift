// Sparse files: finding data and holes (SEEK_DATA/SEEK_HOLE), so backups skip holes and restores keep them.
#if canImport(Glibc)
  import Glibc
#endif

extension Sys {
  /// Linux values of flags Glibc's Swift module hides behind _GNU_SOURCE.
  public static let oNoAtime: Int32 = 0o1000000
  public static let seekData: Int32 = 3
  public static let seekHole: Int32 = 4

  /// lseek(fd, offset, SEEK_DATA): the next offset holding data, nil when only a hole remains (ENXIO).
  public static func nextData(_ fd: Int32, from offset: Int64) throws -> Int64? {
    let r = lseek(fd, off_t(offset), seekData)
    if r >= 0 { return Int64(r) }
    if errno == ENXIO { return nil }
    throw SystemError(errno, "lseek(SEEK_DATA)")
  }

  /// lseek(fd, offset, SEEK_HOLE): the next hole (the end of the file counts as one).
  public static func nextHole(_ fd: Int32, from offset: Int64) throws -> Int64 {
    let r = lseek(fd, off_t(offset), seekHole)
    if r >= 0 { return Int64(r) }
    throw SystemError(errno, "lseek(SEEK_HOLE)")
  }
}
