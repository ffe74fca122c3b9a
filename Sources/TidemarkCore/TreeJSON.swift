// Trees, decoded straight from the bytes: the hot path of every mount listing and backup parent
// lookup, kept equal to `JSON.parse` + `Node(json:)` by a test.

extension RawID {
  init(words w0: UInt64, _ w1: UInt64, _ w2: UInt64, _ w3: UInt64) {
    self.w0 = w0
    self.w1 = w1
    self.w2 = w2
    self.w3 = w3
  }
}

/// Decodes `{"nodes":[…]}` without building a JSONValue for every node: trees are read far more often
/// than anything else (every directory a mount shows, every parent a backup compares against). It
/// accepts exactly what `JSON.parse` + `Node(json:)` accept and gives the same nodes (a test pins that).
enum TreeJSON {
  static func nodes(_ bytes: [UInt8]) throws -> [Node] {
    try bytes.withUnsafeBufferPointer { buf in
      var p = Parser(buf: buf)
      var nodes: [Node] = []
      var sawNodes = false
      try p.object { p, key in
        guard key.is("nodes") else { return try p.skip() }
        sawNodes = true
        p.skipWS()
        guard p.peek(UInt8(ascii: "[")) else { return try p.skip() }  // null or odd: no nodes
        try p.array { p in nodes.append(try p.node()) }
      }
      p.skipWS()
      guard p.i == buf.count else { throw JSONParseError(offset: p.i, reason: "trailing data") }
      guard sawNodes else { throw TidemarkError.corrupt("tree blob has no nodes list") }
      return nodes
    }
  }
}

extension UnsafeBufferPointer<UInt8> {
  /// Bytewise equality with an ASCII literal, without building anything.
  @inline(__always) func `is`(_ s: StaticString) -> Bool {
    guard count == s.utf8CodeUnitCount else { return false }
    for k in 0..<count where self[k] != s.utf8Start[k] { return false }
    return true
  }
}

extension Parser {
  func peek(_ c: UInt8) -> Bool { i < buf.count && buf[i] == c }

  mutating func skip() throws { _ = try value(depth: 1) }

  /// Calls `member` for each key of an object; `member` must consume the value.
  mutating func object(_ member: (inout Parser, UnsafeBufferPointer<UInt8>) throws -> Void) throws {
    skipWS()
    guard peek(UInt8(ascii: "{")) else { throw fail("expected an object") }
    i += 1
    skipWS()
    if peek(UInt8(ascii: "}")) {
      i += 1
      return
    }
    while true {
      skipWS()
      guard peek(UInt8(ascii: "\"")) else { throw fail("expected a key") }
      // Keys are plain ASCII in practice: look at them in place; decode only when escaped.
      var j = i + 1
      while j < buf.count, buf[j] != UInt8(ascii: "\""), buf[j] != UInt8(ascii: "\\") { j += 1 }
      if j < buf.count, buf[j] == UInt8(ascii: "\"") {
        let key = UnsafeBufferPointer(rebasing: buf[(i + 1)..<j])
        i = j + 1
        try colon()
        try member(&self, key)
      } else {
        let key = try string()
        try colon()
        try key.withUnsafeBufferPointer { try member(&self, $0) }
      }
      skipWS()
      guard i < buf.count else { throw fail("unexpected end") }
      if buf[i] == UInt8(ascii: ",") {
        i += 1
        continue
      }
      if buf[i] == UInt8(ascii: "}") {
        i += 1
        return
      }
      throw fail("expected ',' or '}'")
    }
  }

  private mutating func colon() throws {
    skipWS()
    guard peek(UInt8(ascii: ":")) else { throw fail("expected ':'") }
    i += 1
  }

  /// Calls `element` for each element of an array; `element` must consume it.
  mutating func array(_ element: (inout Parser) throws -> Void) throws {
    skipWS()
    guard peek(UInt8(ascii: "[")) else { throw fail("expected an array") }
    i += 1
    skipWS()
    if peek(UInt8(ascii: "]")) {
      i += 1
      return
    }
    while true {
      skipWS()
      try element(&self)
      skipWS()
      guard i < buf.count else { throw fail("unexpected end") }
      if buf[i] == UInt8(ascii: ",") {
        i += 1
        continue
      }
      if buf[i] == UInt8(ascii: "]") {
        i += 1
        return
      }
      throw fail("expected ',' or ']'")
    }
  }

  /// A value as JSONValue (for the rare fields and odd shapes).
  mutating func generic() throws -> JSONValue { try value(depth: 1) }

  /// A non-negative integer the way `JSONValue.uint64` reads it (nil for anything else).
  mutating func uint64() throws -> UInt64? {
    skipWS()
    guard i < buf.count, buf[i] >= 48 && buf[i] <= 57 else { return try generic().uint64 }
    let start = i
    var v: UInt64 = 0
    var overflow = false
    while i < buf.count, buf[i] >= 48 && buf[i] <= 57 {
      let (m, o1) = v.multipliedReportingOverflow(by: 10)
      let (a, o2) = m.addingReportingOverflow(UInt64(buf[i] - 48))
      overflow = overflow || o1 || o2
      v = a
      i += 1
    }
    if i < buf.count, [UInt8(ascii: "."), UInt8(ascii: "e"), UInt8(ascii: "E")].contains(buf[i]) || overflow {
      i = start
      return try generic().uint64
    }
    return v
  }

  /// A string's bytes, or nil for any other value (consumed either way).
  mutating func stringOrNil() throws -> [UInt8]? {
    skipWS()
    if peek(UInt8(ascii: "\"")) { return try string() }
    return try generic().bytes
  }

  /// A 64-digit hex ID string, or nil for null or anything invalid (consumed either way).
  mutating func hexID() throws -> RawID? {
    skipWS()
    if i + 66 <= buf.count, buf[i] == UInt8(ascii: "\""), buf[i + 65] == UInt8(ascii: "\"") {
      func word(_ at: Int) -> UInt64? {
        var v: UInt64 = 0
        for k in at..<(at + 16) {
          guard let h = hexValue(buf[k]) else { return nil }
          v = v << 4 | UInt64(h)
        }
        return v
      }
      if let a = word(i + 1), let b = word(i + 17), let c = word(i + 33), let d = word(i + 49) {
        i += 66
        return RawID(words: a, b, c, d)
      }
    }
    return try stringOrNil().flatMap { RawID(hex: String(decoding: $0, as: UTF8.self)) }
  }

  mutating func time() throws -> Timestamp {
    let zero = Timestamp(seconds: 0, nanoseconds: 0, offset: 0)
    return try stringOrNil().flatMap { Timestamp(rfc3339: String(decoding: $0, as: UTF8.self)) } ?? zero
  }

  mutating func node() throws -> Node {
    var name: [UInt8]? = nil
    var type: String? = nil
    var n = Node(name: [], type: .irregular)
    var linkTarget: [UInt8]? = nil
    var linkTargetRaw: [UInt8]? = nil
    var contentError = false
    try object { p, key in
      switch key.count {
      case 4 where key.is("name"): name = try p.stringOrNil()
      case 4 where key.is("type"): type = try p.stringOrNil().map { String(decoding: $0, as: UTF8.self) }
      case 4 where key.is("mode"): n.mode = UInt32(truncatingIfNeeded: try p.uint64() ?? 0)
      case 5 where key.is("mtime"): n.mtime = try p.time()
      case 5 where key.is("atime"): n.atime = try p.time()
      case 5 where key.is("ctime"): n.ctime = try p.time()
      case 3 where key.is("uid"): n.uid = UInt32(truncatingIfNeeded: try p.uint64() ?? 0)
      case 3 where key.is("gid"): n.gid = UInt32(truncatingIfNeeded: try p.uint64() ?? 0)
      case 4 where key.is("user"):
        n.user = try p.stringOrNil().map { String(decoding: $0, as: UTF8.self) } ?? ""
      case 5 where key.is("group"):
        n.group = try p.stringOrNil().map { String(decoding: $0, as: UTF8.self) } ?? ""
      case 5 where key.is("inode"): n.inode = try p.uint64() ?? 0
      case 9 where key.is("device_id"): n.deviceID = try p.uint64() ?? 0
      case 4 where key.is("size"): n.size = try p.uint64() ?? 0
      case 5 where key.is("links"): n.links = try p.uint64() ?? 0
      case 6 where key.is("device"): n.device = try p.uint64() ?? 0
      case 10 where key.is("linktarget"): linkTarget = try p.stringOrNil()
      case 14 where key.is("linktarget_raw"): linkTargetRaw = try p.stringOrNil()
      case 7 where key.is("subtree"): n.subtree = try p.hexID().map { BlobID($0) }
      case 7 where key.is("content"):
        p.skipWS()
        guard p.peek(UInt8(ascii: "[")) else {
          // null: no content; any other non-array: empty content (as Node(json:) reads it).
          if !(try p.generic()).isNull { n.content = [] }
          return
        }
        var ids: [BlobID] = []
        try p.array { p in
          guard let id = try p.hexID() else {
            contentError = true
            return
          }
          ids.append(BlobID(id))
        }
        n.content = ids
      case 19 where key.is("extended_attributes"):
        for x in try p.generic().array ?? [] {
          if let xn = x["name"]?.bytes {
            n.xattrs.append(ExtendedAttribute(name: xn, value: x["value"]?.bytes.flatMap(Base64.decode) ?? []))
          }
        }
      default: try p.skip()
      }
    }
    guard let name, let type else { throw TidemarkError.corrupt("tree node without name or type") }
    if contentError {
      throw TidemarkError.corrupt("tree node \(String(decoding: name, as: UTF8.self)) has an invalid content ID")
    }
    n.name = goUnquote(name)
    n.type = NodeType(rawValue: type) ?? .irregular
    n.linkTarget = linkTargetRaw.flatMap(Base64.decode) ?? linkTarget ?? []
    return n
  }
}
