// Snapshot files (`snapshots/<id>`): which tree, when, from where.

public struct Snapshot: Sendable {
  public var id: SnapshotID? = nil
  public var time: Timestamp
  public var parent: SnapshotID? = nil
  public var tree: BlobID
  public var paths: [String]
  public var hostname: String = ""
  public var username: String = ""
  public var uid: UInt32 = 0
  public var gid: UInt32 = 0
  public var excludes: [String] = []
  public var tags: [String] = []
  public var original: SnapshotID? = nil
  public var programVersion: String = ""
  /// Fields other tools add that tidemark carries through unchanged (e.g. restic 0.17's summary).
  public var summary: JSONValue? = nil

  public init(time: Timestamp, tree: BlobID, paths: [String]) {
    self.time = time
    self.tree = tree
    self.paths = paths
  }

  public func encode() -> [UInt8] {
    var w = JSONWriter()
    w.raw("{\"time\":\"")
    w.raw(time.rfc3339Nano)
    w.raw("\"")
    if let parent {
      w.raw(",\"parent\":\"")
      w.hex(parent)
      w.raw("\"")
    }
    w.raw(",\"tree\":\"")
    w.hex(tree)
    w.raw("\",\"paths\":")
    w.stringArray(paths)
    if !hostname.isEmpty {
      w.raw(",\"hostname\":")
      w.string(hostname)
    }
    if !username.isEmpty {
      w.raw(",\"username\":")
      w.string(username)
    }
    if uid != 0 {
      w.raw(",\"uid\":")
      w.number(UInt64(uid))
    }
    if gid != 0 {
      w.raw(",\"gid\":")
      w.number(UInt64(gid))
    }
    if !excludes.isEmpty {
      w.raw(",\"excludes\":")
      w.stringArray(excludes)
    }
    if !tags.isEmpty {
      w.raw(",\"tags\":")
      w.stringArray(tags)
    }
    if let original {
      w.raw(",\"original\":\"")
      w.hex(original)
      w.raw("\"")
    }
    if !programVersion.isEmpty {
      w.raw(",\"program_version\":")
      w.string(programVersion)
    }
    return w.out
      + Array("}".utf8)
  }

  public init(json: [UInt8], id: SnapshotID?) throws {
    let v = try JSON.parse(json)
    guard let t = v["time"]?.string.flatMap({ Timestamp(rfc3339: $0) }),
      let tree = v["tree"]?.string.flatMap({ BlobID(hex: $0) })
    else { throw TidemarkError.corrupt("snapshot \(id?.short ?? "?") has no valid time or tree") }
    self.init(time: t, tree: tree, paths: (v["paths"]?.array ?? []).compactMap(\.string))
    self.id = id
    parent = v["parent"]?.string.flatMap { SnapshotID(hex: $0) }
    hostname = v["hostname"]?.string ?? ""
    username = v["username"]?.string ?? ""
    uid = UInt32(truncatingIfNeeded: v["uid"]?.uint64 ?? 0)
    gid = UInt32(truncatingIfNeeded: v["gid"]?.uint64 ?? 0)
    excludes = (v["excludes"]?.array ?? []).compactMap(\.string)
    tags = (v["tags"]?.array ?? []).compactMap(\.string)
    original = v["original"]?.string.flatMap { SnapshotID(hex: $0) }
    programVersion = v["program_version"]?.string ?? ""
    summary = v["summary"]
  }

  /// Restic's JSON shape for `snapshots --json`: the stored fields plus `id` and `short_id`.
  public func listingJSON(into w: inout JSONWriter) {
    var body = encode()
    body.removeLast()  // "}"
    w.out += body
    if let id {
      w.raw(",\"id\":\"")
      w.hex(id)
      w.raw("\",\"short_id\":\"")
      w.raw(id.short)
      w.raw("\"")
    }
    w.raw("}")
  }
}

public struct Config: Sendable {
  public var version: Int
  public var id: String
  public var chunkerPolynomial: Polynomial

  public init(version: Int, id: String, chunkerPolynomial: Polynomial) {
    self.version = version
    self.id = id
    self.chunkerPolynomial = chunkerPolynomial
  }

  public func encode() -> [UInt8] {
    var w = JSONWriter()
    w.raw("{\"version\":")
    w.number(version)
    w.raw(",\"id\":")
    w.string(id)
    w.raw(",\"chunker_polynomial\":")
    w.string(chunkerPolynomial.description)
    w.raw("}")
    return w.out
  }

  public init(json: [UInt8]) throws {
    let v = try JSON.parse(json)
    guard let version = v["version"]?.int, let id = v["id"]?.string,
      let polyText = v["chunker_polynomial"]?.string, let poly = UInt64(polyText, radix: 16)
    else { throw TidemarkError.corrupt("repository config is incomplete") }
    guard version == 1 || version == 2 else {
      throw TidemarkError(.general, "repository format version \(version) is not supported (1 and 2 are)")
    }
    let p = Polynomial(poly)
    guard p.isIrreducible else { throw TidemarkError.corrupt("chunker polynomial \(polyText) is not irreducible") }
    self.init(version: version, id: id, chunkerPolynomial: p)
  }
}

public struct LockInfo: Sendable {
  public var time: Timestamp
  public var exclusive: Bool
  public var hostname: String
  public var username: String
  public var pid: Int
  public var uid: UInt32
  public var gid: UInt32

  public init(time: Timestamp, exclusive: Bool, hostname: String, username: String, pid: Int, uid: UInt32, gid: UInt32)
  {
    (self.time, self.exclusive, self.hostname, self.username, self.pid, self.uid, self.gid) =
      (time, exclusive, hostname, username, pid, uid, gid)
  }

  public func encode() -> [UInt8] {
    var w = JSONWriter()
    w.raw("{\"time\":\"")
    w.raw(time.rfc3339Nano)
    w.raw("\",\"exclusive\":")
    w.bool(exclusive)
    w.raw(",\"hostname\":")
    w.string(hostname)
    w.raw(",\"username\":")
    w.string(username)
    w.raw(",\"pid\":")
    w.number(pid)
    w.raw(",\"uid\":")
    w.number(UInt64(uid))
    w.raw(",\"gid\":")
    w.number(UInt64(gid))
    w.raw("}")
    return w.out
  }

  public init(json: [UInt8]) throws {
    let v = try JSON.parse(json)
    guard let t = v["time"]?.string.flatMap({ Timestamp(rfc3339: $0) }) else {
      throw TidemarkError.corrupt("lock file has no valid time")
    }
    self.init(
      time: t, exclusive: v["exclusive"]?.bool ?? false, hostname: v["hostname"]?.string ?? "",
      username: v["username"]?.string ?? "", pid: v["pid"]?.int ?? 0,
      uid: UInt32(truncatingIfNeeded: v["uid"]?.uint64 ?? 0), gid: UInt32(truncatingIfNeeded: v["gid"]?.uint64 ?? 0))
  }
}
