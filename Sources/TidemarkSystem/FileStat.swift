// struct stat as a Sendable value, so results of lstat and friends can cross threads.
#if canImport(Glibc)
  import Glibc
#endif

public struct FileStat: Sendable {
  public var mode: UInt32
  public var uid: UInt32
  public var gid: UInt32
  public var size: Int64
  public var inode: UInt64
  public var device: UInt64
  public var links: UInt64
  public var rdev: UInt64
  public var blocks: Int64
  public var atime: (Int64, Int32)
  public var mtime: (Int64, Int32)
  public var ctime: (Int64, Int32)

  init(_ s: Glibc.stat) {
    mode = UInt32(s.st_mode)
    uid = s.st_uid
    gid = s.st_gid
    size = Int64(s.st_size)
    inode = UInt64(s.st_ino)
    device = UInt64(s.st_dev)
    links = UInt64(s.st_nlink)
    rdev = UInt64(s.st_rdev)
    blocks = Int64(s.st_blocks)
    atime = (Int64(s.st_atim.tv_sec), Int32(s.st_atim.tv_nsec))
    mtime = (Int64(s.st_mtim.tv_sec), Int32(s.st_mtim.tv_nsec))
    ctime = (Int64(s.st_ctim.tv_sec), Int32(s.st_ctim.tv_nsec))
  }

  public var fileType: UInt32 { mode & 0o170000 }
  public var isDirectory: Bool { fileType == 0o040000 }
  public var isRegular: Bool { fileType == 0o100000 }
  public var isSymlink: Bool { fileType == 0o120000 }
}
