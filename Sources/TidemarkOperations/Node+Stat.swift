// Building tree nodes from the filesystem.
import TidemarkCore
import TidemarkSystem

extension Node {
  /// A node for `path` from its lstat result: metadata, xattrs, link target, device number. With `directory`
  /// (the open parent directory, whose entry `name` is), the link target and xattrs are read by the name alone.
  static func from(path: BytePath, name: [UInt8], stat st: FileStat, names: NameCache, directory: Int32? = nil)
    throws -> Node
  {
    let type: NodeType
    switch st.fileType {
    case 0o100000: type = .file
    case 0o040000: type = .dir
    case 0o120000: type = .symlink
    case 0o060000: type = .dev
    case 0o020000: type = .chardev
    case 0o010000: type = .fifo
    case 0o140000: type = .socket
    default: type = .irregular
    }
    var n = Node(name: name, type: type)
    n.mode = GoMode.from(stMode: st.mode)
    n.mtime = .local(seconds: st.mtime.0, nanoseconds: st.mtime.1)
    // restic records atime = mtime unless asked otherwise: reading a file must not change its tree.
    n.atime = n.mtime
    n.ctime = .local(seconds: st.ctime.0, nanoseconds: st.ctime.1)
    n.uid = st.uid
    n.gid = st.gid
    n.user = names.user(st.uid)
    n.group = names.group(st.gid)
    n.inode = st.inode
    n.deviceID = st.device
    switch type {
    case .file:
      n.size = UInt64(st.size)
      n.links = st.links
      n.content = []
    case .symlink:
      n.linkTarget = try directory.map { try Sys.readlink(at: $0, name, path: path) } ?? Sys.readlink(path)
      n.links = st.links
    case .dev, .chardev:
      n.device = st.rdev
      n.links = st.links
    default: break
    }
    let xattrs =
      try? directory.map { try Sys.extendedAttributes(at: $0, name, path: path) } ?? Sys.extendedAttributes(path)
    n.xattrs = (xattrs ?? []).map { ExtendedAttribute(name: $0.name, value: $0.value) }
    return n
  }
}
