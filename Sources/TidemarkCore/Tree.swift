// Trees and nodes: restic's directory listing JSON. Field order, omission rules and string escaping
// follow Go's encoding/json so a tree tidemark writes hashes like the one restic writes.

public enum NodeType: String, Sendable {
  case file, dir, symlink, dev, chardev, fifo, socket, irregular
}

/// Go's os.FileMode bits (restic stores these, not st_mode).
public enum GoMode {
  public static let dir: UInt32 = 1 << 31
  public static let symlink: UInt32 = 1 << 27
  public static let device: UInt32 = 1 << 26
  public static let namedPipe: UInt32 = 1 << 25
  public static let socket: UInt32 = 1 << 24
  public static let setuid: UInt32 = 1 << 23
  public static let setgid: UInt32 = 1 << 22
  public static let charDevice: UInt32 = 1 << 21
  public static let sticky: UInt32 = 1 << 20
  public static let irregular: UInt32 = 1 << 19

  /// st_mode → Go FileMode.
  public static func from(stMode m: UInt32) -> UInt32 {
    var g = m & 0o777
    switch m & 0o170000 {
    case 0o040000: g |= dir
    case 0o120000: g |= symlink
    case 0o060000: g |= device
    case 0o020000: g |= device | charDevice
    case 0o010000: g |= namedPipe
    case 0o140000: g |= socket
    default: break
    }
    if m & 0o4000 != 0 { g |= setuid }
    if m & 0o2000 != 0 { g |= setgid }
    if m & 0o1000 != 0 { g |= sticky }
    return g
  }

  /// Go FileMode → permission bits including setuid/setgid/sticky (for chmod).
  public static func permissions(_ g: UInt32) -> UInt32 {
    var m = g & 0o777
    if g & setuid != 0 { m |= 0o4000 }
    if g & setgid != 0 { m |= 0o2000 }
    if g & sticky != 0 { m |= 0o1000 }
    return m
  }
}

public struct ExtendedAttribute: Sendable, Hashable {
  public var name: [UInt8]
  public var value: [UInt8]
  public init(name: [UInt8], value: [UInt8]) {
    self.name = name
    self.value = value
  }
}

public struct Node: Sendable {
  public var name: [UInt8]
  public var type: NodeType
  public var mode: UInt32 = 0
  public var mtime = Timestamp(seconds: 0, nanoseconds: 0, offset: 0)
  public var atime = Timestamp(seconds: 0, nanoseconds: 0, offset: 0)
  public var ctime = Timestamp(seconds: 0, nanoseconds: 0, offset: 0)
  public var uid: UInt32 = 0
  public var gid: UInt32 = 0
  public var user: String = ""
  public var group: String = ""
  public var inode: UInt64 = 0
  public var deviceID: UInt64 = 0
  public var size: UInt64 = 0
  public var links: UInt64 = 0
  /// The raw target bytes; stored as `linktarget` (lossy, UTF-8) and, when not UTF-8, `linktarget_raw`.
  public var linkTarget: [UInt8] = []
  public var xattrs: [ExtendedAttribute] = []
  public var device: UInt64 = 0
  public var content: [BlobID]? = nil
  public var subtree: BlobID? = nil

  public init(name: [UInt8], type: NodeType) {
    self.name = name
    self.type = type
  }

  public var nameString: String { String(decoding: name, as: UTF8.self) }

  func encode(into w: inout JSONWriter) {
    w.raw("{\"name\":")
    w.string(goQuote(name))
    w.raw(",\"type\":\"")
    w.raw(type.rawValue)
    w.raw("\"")
    if mode != 0 {
      w.raw(",\"mode\":")
      w.number(UInt64(mode))
    }
    w.raw(",\"mtime\":\"")
    mtime.append(to: &w.out)
    w.raw("\",\"atime\":\"")
    atime.append(to: &w.out)
    w.raw("\",\"ctime\":\"")
    ctime.append(to: &w.out)
    w.raw("\",\"uid\":")
    w.number(UInt64(uid))
    w.raw(",\"gid\":")
    w.number(UInt64(gid))
    if !user.isEmpty {
      w.raw(",\"user\":")
      w.string(user)
    }
    if !group.isEmpty {
      w.raw(",\"group\":")
      w.string(group)
    }
    if inode != 0 {
      w.raw(",\"inode\":")
      w.number(inode)
    }
    if deviceID != 0 {
      w.raw(",\"device_id\":")
      w.number(deviceID)
    }
    if size != 0 {
      w.raw(",\"size\":")
      w.number(size)
    }
    if links != 0 {
      w.raw(",\"links\":")
      w.number(links)
    }
    if !linkTarget.isEmpty {
      w.raw(",\"linktarget\":")
      w.string(linkTarget)
      if String(validating: linkTarget, as: UTF8.self) == nil {
        w.raw(",\"linktarget_raw\":")
        w.string(Base64.encode(linkTarget))
      }
    }
    if !xattrs.isEmpty {
      w.raw(",\"extended_attributes\":[")
      for (i, x) in xattrs.enumerated() {
        if i > 0 { w.comma() }
        w.raw("{\"name\":")
        w.string(x.name)
        w.raw(",\"value\":")
        w.string(Base64.encode(x.value))
        w.raw("}")
      }
      w.raw("]")
    }
    if device != 0 {
      w.raw(",\"device\":")
      w.number(device)
    }
    w.raw(",\"content\":")
    if let content {
      w.raw("[")
      for (i, c) in content.enumerated() {
        if i > 0 { w.comma() }
        w.raw("\"")
        w.hex(c)
        w.raw("\"")
      }
      w.raw("]")
    } else {
      w.raw("null")
    }
    if let subtree {
      w.raw(",\"subtree\":\"")
      w.hex(subtree)
      w.raw("\"")
    }
    w.raw("}")
  }

  init(json v: JSONValue) throws {
    guard let name = v["name"]?.bytes, let t = v["type"]?.string else {
      throw TidemarkError.corrupt("tree node without name or type")
    }
    self.name = goUnquote(name)
    type = NodeType(rawValue: t) ?? .irregular
    mode = UInt32(truncatingIfNeeded: v["mode"]?.uint64 ?? 0)
    let zero = Timestamp(seconds: 0, nanoseconds: 0, offset: 0)
    mtime = v["mtime"]?.string.flatMap { Timestamp(rfc3339: $0) } ?? zero
    atime = v["atime"]?.string.flatMap { Timestamp(rfc3339: $0) } ?? zero
    ctime = v["ctime"]?.string.flatMap { Timestamp(rfc3339: $0) } ?? zero
    uid = UInt32(truncatingIfNeeded: v["uid"]?.uint64 ?? 0)
    gid = UInt32(truncatingIfNeeded: v["gid"]?.uint64 ?? 0)
    user = v["user"]?.string ?? ""
    group = v["group"]?.string ?? ""
    inode = v["inode"]?.uint64 ?? 0
    deviceID = v["device_id"]?.uint64 ?? 0
    size = v["size"]?.uint64 ?? 0
    links = v["links"]?.uint64 ?? 0
    if let raw = v["linktarget_raw"]?.bytes.flatMap(Base64.decode) {
      linkTarget = raw
    } else {
      linkTarget = v["linktarget"]?.bytes ?? []
    }
    for x in v["extended_attributes"]?.array ?? [] {
      if let n = x["name"]?.bytes {
        xattrs.append(ExtendedAttribute(name: n, value: x["value"]?.bytes.flatMap(Base64.decode) ?? []))
      }
    }
    device = v["device"]?.uint64 ?? 0
    if let c = v["content"], !c.isNull {
      content = try (c.array ?? []).map {
        guard let id = $0.string.flatMap({ BlobID(hex: $0) }) else {
          throw TidemarkError.corrupt("tree node \(String(decoding: name, as: UTF8.self)) has an invalid content ID")
        }
        return id
      }
    }
    subtree = v["subtree"]?.string.flatMap { BlobID(hex: $0) }
  }
}

public struct Tree: Sendable {
  public var nodes: [Node]
  public init(nodes: [Node] = []) { self.nodes = nodes }

  /// Sorts nodes bytewise by name, as restic requires.
  public mutating func sort() { nodes.sort { $0.name.lexicographicallyPrecedes($1.name) } }

  /// `{"nodes":[…]}\n`: the exact bytes whose SHA-256 is the tree's ID.
  public func encode() -> [UInt8] {
    var w = JSONWriter()
    w.out.reserveCapacity(64 + nodes.count * 400)
    w.raw("{\"nodes\":[")
    for (i, n) in nodes.enumerated() {
      if i > 0 { w.comma() }
      n.encode(into: &w)
    }
    w.raw("]}\n")
    return w.out
  }

  public init(json: [UInt8]) throws { nodes = try TreeJSON.nodes(json) }

  /// The general (slower) path through JSONValue; `init(json:)` must agree with it.
  public init(genericJSON json: [UInt8]) throws {
    let v = try JSON.parse(json)
    guard let arr = v["nodes"] else { throw TidemarkError.corrupt("tree blob has no nodes list") }
    nodes = try (arr.array ?? []).map { try Node(json: $0) }
  }

  public func node(named name: [UInt8]) -> Node? { nodes.first { $0.name == name } }
}
