// The S3 backend: restic's layout as objects in a bucket (under an optional prefix), for any
// S3-compatible store. Requests are signed with AWS Signature Version 4 and sent with AsyncHTTPClient
// (swift-server's HTTP client on SwiftNIO: connection pooling, non-blocking, maintained by the Swift
// server workgroup; why not URLSession: docs/architecture.md). Path-style addressing (`host/bucket/key`),
// which every S3-compatible server accepts. PUT is atomic in S3: a reader sees the old object or the new.
//
// Object Lock (`-o s3.object-lock=MODE:DURATION`): every object but lock files is uploaded with a retention
// (mode, retain-until-date = upload time + DURATION, and the Content-MD5 S3 requires for it). Whatever the
// option, an object whose retain-until-date is still ahead is never deleted: `remove` throws `FileRetained` and
// leaves it visible (a plain DELETE on the versioned bucket would "succeed" by hiding it behind a delete marker
// while its bytes stay stored and billed, and the repository would no longer show what it still holds). Once the
// date has passed, an object that carried a retention, and with the option every object, is deleted by version,
// so the space is freed rather than kept as a noncurrent version.
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import Synchronization
import TidemarkCore
import TidemarkCrypto

public struct S3Credentials: Sendable {
  public var accessKey: String
  public var secretKey: String
  public var sessionToken: String?
  public var region: String
  public init(accessKey: String, secretKey: String, sessionToken: String?, region: String) {
    (self.accessKey, self.secretKey, self.sessionToken, self.region) = (accessKey, secretKey, sessionToken, region)
  }
}

/// S3 Object Lock for what tidemark uploads: the mode and how long each object is kept from its upload.
public struct S3ObjectLock: Sendable, CustomStringConvertible {
  public enum Mode: String, Sendable {
    /// Users with s3:BypassGovernanceRetention may still shorten the retention or delete.
    case governance = "GOVERNANCE"
    /// Nobody, the account's root user included, can shorten the retention or delete before the date.
    case compliance = "COMPLIANCE"
  }
  public var mode: Mode
  public var period: RetentionDuration
  /// `-o s3.object-lock-extend=true`: prune renews the retention of the packs it keeps.
  public var extend = false
  public init(mode: Mode, period: RetentionDuration, extend: Bool = false) {
    self.mode = mode
    self.period = period
    self.extend = extend
  }

  /// `governance:30d`, `compliance:1y`: a mode and restic's duration units (y, m for months, d, h), more than zero.
  public init(parsing text: String) throws {
    let bad = TidemarkError(
      .usage, "s3.object-lock=\(text) is not MODE:DURATION",
      hint: "write governance:DURATION or compliance:DURATION with DURATION like 30d, 720h, 6m or 1y")
    let parts = text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
    guard parts.count == 2, let mode = Mode(rawValue: parts[0].uppercased()),
      let period = try? RetentionDuration(parsing: String(parts[1])), !period.isZero,
      [period.years, period.months, period.days, period.hours].allSatisfy({ $0 >= 0 })
    else { throw bad }
    self.init(mode: mode, period: period)
  }

  public var description: String { "\(mode.rawValue.lowercased()):\(period)" }
}

public final class S3Backend: Backend {
  public let endpoint: URL  // scheme://host[:port]
  public let bucket: String
  public let prefix: String  // "" or "dir/sub" (no slashes at the ends)
  public let credentials: S3Credentials
  public let location: String
  let client: HTTPClient
  private let connected = Atomic(false)

  let slots: AsyncSemaphore
  /// Retention for uploads (`-o s3.object-lock`); nil: objects are uploaded without one.
  public let objectLock: S3ObjectLock?
  /// Retain-until-dates known without asking: what this process uploaded with a retention or saw in a HEAD.
  private let knownRetention = Mutex<[String: Date]>([:])
  /// Whether the bucket has Object Lock enabled (nil: not asked yet).
  private let bucketLocks = Mutex<Bool?>(nil)

  public init(
    endpoint: URL, bucket: String, prefix: String, credentials: S3Credentials, connections: Int = 5,
    location: String, objectLock: S3ObjectLock? = nil, client: HTTPClient? = nil
  ) throws {
    self.objectLock = objectLock
    self.endpoint = endpoint
    self.bucket = bucket
    self.prefix = prefix.split(separator: "/").joined(separator: "/")
    self.credentials = credentials
    self.location = location
    self.client = try client ?? HTTPClients.client(for: .storage)
    slots = AsyncSemaphore(max(1, connections))
  }

  /// `s3:https://host[:port]/bucket[/prefix]`, `s3:http://…` (local servers), `s3:host/bucket[/prefix]` (https).
  public static func parse(_ location: String) -> (endpoint: URL, bucket: String, prefix: String)? {
    guard location.hasPrefix("s3:") else { return nil }
    var rest = String(location.dropFirst(3))
    var scheme = "https"
    for s in ["https://", "http://"] where rest.hasPrefix(s) {
      scheme = String(s.dropLast(3))
      rest.removeFirst(s.count)
    }
    let parts = rest.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
    guard parts.count >= 2, let url = URL(string: "\(scheme)://\(parts[0])") else { return nil }
    return (url, parts[1], parts.dropFirst(2).joined(separator: "/"))
  }

  func key(_ h: Handle) -> String {
    let k: String
    switch h.type {
    case .config: k = "config"
    case .pack: k = "data/\(h.name.prefix(2))/\(h.name)"
    default: k = "\(h.type.rawValue)/\(h.name)"
    }
    return prefix.isEmpty ? k : "\(prefix)/\(k)"
  }

  // MARK: Requests

  struct Response {
    var status: Int
    var body: [UInt8]
    var headers: [String: String]
  }

  /// Sends one signed request. Server errors (5xx), throttling (429, SlowDown) and network failures
  /// become `.unavailable` (RetryBackend retries them); 404 is returned to the caller.
  func send(
    _ method: String, key: String?, query: [(String, String)] = [], body: [UInt8] = [], headers: [String: String] = [:]
  ) async throws -> Response {
    var path = "/" + S3Backend.uriEncode(bucket, slash: false)
    if let key { path += "/" + S3Backend.uriEncode(key, slash: true) }
    let q = query.sorted { $0.0 < $1.0 }.map {
      "\(S3Backend.uriEncode($0.0, slash: false))=\(S3Backend.uriEncode($0.1, slash: false))"
    }
    .joined(separator: "&")
    let url = endpoint.absoluteString + path + (q.isEmpty ? "" : "?" + q)
    var req = HTTPClientRequest(url: url)
    req.method = HTTPMethod(rawValue: method)
    let payloadHash = S3Backend.hex(SHA256.hash(body))
    var signed = headers
    signed["x-amz-content-sha256"] = payloadHash
    let now = Date()
    signed["x-amz-date"] = S3Backend.amzDate(now)
    if let t = credentials.sessionToken { signed["x-amz-security-token"] = t }
    let hostHeader = endpoint.port.map { "\(endpoint.host ?? ""):\($0)" } ?? (endpoint.host ?? "")
    signed["host"] = hostHeader
    req.headers.add(
      name: "Authorization",
      value: S3Backend.authorization(
        method: method, path: path, query: q, headers: signed, payloadHash: payloadHash, date: now,
        credentials: credentials))
    for (k, v) in signed where k != "host" { req.headers.add(name: k, value: v) }
    if method == "PUT" {
      req.body = .bytes(ByteBuffer(bytes: body))
    }
    let status: Int
    var hs: [String: String] = [:]
    var data: [UInt8] = []
    await slots.acquire()
    defer { slots.release() }
    do {
      let response = try await client.execute(req, timeout: .seconds(120))
      status = Int(response.status.code)
      for h in response.headers { hs[h.name.lowercased()] = h.value }
      if method != "HEAD" {
        var buf = try await response.body.collect(upTo: 1 << 31)
        data = buf.readBytes(length: buf.readableBytes) ?? []
      }
    } catch {
      if let tls = TLSFailure.error(error, host: endpoint.host ?? endpoint.absoluteString) { throw tls }
      let transient = connected.load(ordering: .relaxed)
      throw TidemarkError(
        transient ? .unavailable : .general,
        "cannot reach the S3 endpoint \(endpoint.absoluteString): \(S3Backend.describe(error))",
        hint: "is the server up and the address right?")
    }
    connected.store(true, ordering: .relaxed)
    let r = Response(status: status, body: data, headers: hs)
    if r.status >= 500 || r.status == 429 || (r.status == 503) {
      throw TidemarkError(
        .unavailable, "S3 \(method) \(key ?? bucket): HTTP \(r.status) \(S3Backend.errorCode(r.body))")
    }
    return r
  }

  /// A network error in a few words (NIO's descriptions nest several layers).
  static func describe(_ error: any Error) -> String {
    let text = String(describing: error)
    for (needle, words) in [
      ("Connection refused", "connection refused"), ("connectTimeout", "connection timed out"),
      ("readTimeout", "no answer within 120 s"), ("deadlineExceeded", "request timed out"),
      ("No route to host", "no route to host"), ("Network is unreachable", "network unreachable"),
      ("remoteConnectionClosed", "the server closed the connection"),
    ] where text.contains(needle) {
      return words
    }
    if text.contains("NXDOMAIN") || text.contains("getaddrinfo") || text.contains("Name or service not known") {
      return "host name not found"
    }
    return text
  }

  func failure(_ r: Response, _ what: String) -> TidemarkError {
    let code = S3Backend.errorCode(r.body)
    switch (r.status, code) {
    case (403, _):
      return TidemarkError(
        .general, "S3 \(what): access denied (\(code))",
        hint: "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket's policy")
    case (404, "NoSuchBucket"):
      return TidemarkError(
        .repositoryNotFound, "S3 bucket \(bucket) does not exist at \(endpoint.absoluteString)",
        hint: "create the repository with `tidemark init` (it creates the bucket)")
    default:
      return TidemarkError(.general, "S3 \(what): HTTP \(r.status) \(code)")
    }
  }

  static func errorCode(_ body: [UInt8]) -> String {
    elements("Code", in: String(decoding: body, as: UTF8.self)).first ?? ""
  }

  /// S3's answer to an upload with a retention into a bucket without Object Lock ("Bucket is missing Object Lock
  /// Configuration"; moto: "…ObjectLockConfiguration").
  static func isMissingObjectLock(_ r: Response) -> Bool {
    let message = elements("Message", in: String(decoding: r.body, as: UTF8.self)).first ?? ""
    return r.status == 400 && errorCode(r.body) == "InvalidRequest"
      && message.lowercased().replacingOccurrences(of: " ", with: "").contains("objectlock")
  }

  // MARK: Backend

  public func create() async throws {
    let head = try await send("HEAD", key: nil)
    if head.status == 200 { return }
    // With -o s3.object-lock a new bucket is made with Object Lock (which also turns on versioning).
    let lock = objectLock == nil ? [:] : ["x-amz-bucket-object-lock-enabled": "true"]
    let r = try await send("PUT", key: nil, headers: lock)
    if r.status != 200 && S3Backend.errorCode(r.body) != "BucketAlreadyOwnedByYou" {
      throw failure(r, "create bucket \(bucket)")
    }
  }

  public func save(_ h: Handle, data: [UInt8]) async throws {
    var headers = ["content-type": "application/octet-stream"]
    var until: Date? = nil
    // Lock files stay deletable: a lock that outlived its process would lock everyone out until its date.
    if let lock = objectLock, h.type != .lock {
      let u = lock.period.added(to: Date())
      headers["x-amz-object-lock-mode"] = lock.mode.rawValue
      headers["x-amz-object-lock-retain-until-date"] = UTCDate.format(u)
      headers["content-md5"] = Base64.encode(MD5.hash(data))
      until = u
    }
    let r = try await send("PUT", key: key(h), body: data, headers: headers)
    guard r.status == 200 else {
      if until != nil && S3Backend.isMissingObjectLock(r) {
        throw TidemarkError(
          .general, "S3 bucket \(bucket) does not have Object Lock enabled, so -o s3.object-lock cannot be applied",
          hint:
            "use a bucket created with Object Lock (tidemark init creates new buckets that way), or leave out -o s3.object-lock"
        )
      }
      throw failure(r, "save \(h)")
    }
    if let until { knownRetention.withLock { $0[key(h)] = until } }
  }

  public func load(_ h: Handle, offset: Int, length: Int) async throws -> [UInt8] {
    var headers: [String: String] = [:]
    if offset > 0 || length > 0 {
      headers["range"] = length > 0 ? "bytes=\(offset)-\(offset + length - 1)" : "bytes=\(offset)-"
    }
    let r = try await send("GET", key: key(h), headers: headers)
    if r.status == 404 {
      if S3Backend.errorCode(r.body) == "NoSuchBucket" { throw failure(r, "load \(h)") }
      throw BackendNotFound(h)
    }
    guard r.status == 200 || r.status == 206 else { throw failure(r, "load \(h)") }
    if length > 0 && r.body.count != length {
      throw TidemarkError.corrupt("\(h) is shorter than expected (got \(r.body.count) of \(length) bytes at \(offset))")
    }
    return r.body
  }

  public func size(_ h: Handle) async throws -> Int {
    let r = try await send("HEAD", key: key(h))
    if r.status == 404 { throw BackendNotFound(h) }
    guard r.status == 200, let n = r.headers["content-length"].flatMap({ Int($0) }) else {
      throw failure(r, "stat \(h)")
    }
    return n
  }

  public func list(_ t: FileType) async throws -> [FileInfo] {
    if t == .config {
      guard let n = try? await size(.config) else { return [] }
      return [FileInfo(name: "config", size: n)]
    }
    let p = (prefix.isEmpty ? "" : prefix + "/") + t.rawValue + "/"
    var out: [FileInfo] = []
    var token: String? = nil
    repeat {
      var q: [(String, String)] = [("list-type", "2"), ("prefix", p)]
      if let token { q.append(("continuation-token", token)) }
      let r = try await send("GET", key: nil, query: q)
      guard r.status == 200 else { throw failure(r, "list \(t.rawValue)") }
      let xml = String(decoding: r.body, as: UTF8.self)
      for item in S3Backend.elements("Contents", in: xml) {
        guard let k = S3Backend.elements("Key", in: item).first, let size = S3Backend.elements("Size", in: item).first,
          let n = Int(size)
        else { continue }
        let name = String(k.split(separator: "/").last ?? "")
        if name.count == 64 && RawID(hex: name) != nil { out.append(FileInfo(name: name, size: n)) }
      }
      token =
        S3Backend.elements("IsTruncated", in: xml).first == "true"
        ? S3Backend.elements("NextContinuationToken", in: xml).first : nil
    } while token != nil
    return out
  }

  public func remove(_ h: Handle) async throws {
    // The HEAD first: S3 deletes missing objects silently (the contract wants BackendNotFound), and it tells the
    // retention and the version.
    let head = try await send("HEAD", key: key(h))
    if head.status == 404 { throw BackendNotFound(h) }
    guard head.status == 200 else { throw failure(head, "stat \(h)") }
    let until = head.headers["x-amz-object-lock-retain-until-date"].flatMap(UTCDate.parse)
    if let until, until > Date() {
      knownRetention.withLock { $0[key(h)] = until }
      throw FileRetained(h, until: until)
    }
    var query: [(String, String)] = []
    if let version = head.headers["x-amz-version-id"], version != "null",
      objectLock != nil || head.headers["x-amz-object-lock-mode"] != nil
    {
      query = [("versionId", version)]
    }
    let r = try await send("DELETE", key: key(h), query: query)
    if r.status == 403, let until {
      throw TidemarkError(
        .general,
        "S3 remove \(h): access denied (\(S3Backend.errorCode(r.body))) although its retention ended \(UTCDate.format(until))",
        hint: "check the clock, and that the credentials may delete object versions (s3:DeleteObjectVersion)")
    }
    guard r.status == 204 || r.status == 200 else { throw failure(r, "remove \(h)") }
  }

  /// With `extend`: PUT ?retention for a full period from now when less than half of it is left (governance stays
  /// governance unless the option says compliance; compliance stays compliance, S3 allows no other way).
  public func extendRetention(_ h: Handle) async throws -> Date? {
    guard let lock = objectLock, lock.extend, h.type != .lock else { return nil }
    let now = Date()
    let target = lock.period.added(to: now)
    let half = now.addingTimeInterval(target.timeIntervalSince(now) / 2)
    if let known = knownRetention.withLock({ $0[key(h)] }), known >= half { return nil }
    let head = try await send("HEAD", key: key(h))
    if head.status == 404 { return nil }
    guard head.status == 200 else { throw failure(head, "stat \(h)") }
    if let until = head.headers["x-amz-object-lock-retain-until-date"].flatMap(UTCDate.parse), until >= half {
      knownRetention.withLock { $0[key(h)] = until }
      return nil
    }
    let mode = head.headers["x-amz-object-lock-mode"] == "COMPLIANCE" ? "COMPLIANCE" : lock.mode.rawValue
    let body = Array(
      ("<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>\(mode)</Mode>"
        + "<RetainUntilDate>\(UTCDate.format(target))</RetainUntilDate></Retention>").utf8)
    var query = [("retention", "")]
    if let version = head.headers["x-amz-version-id"], version != "null" { query.append(("versionId", version)) }
    let r = try await send(
      "PUT", key: key(h), query: query, body: body,
      headers: ["content-md5": Base64.encode(MD5.hash(body)), "content-type": "application/xml"])
    guard r.status == 200 else { throw failure(r, "extend the retention of \(h)") }
    knownRetention.withLock { $0[key(h)] = target }
    return target
  }

  public func retainedUntil(_ h: Handle) async throws -> Date? {
    let now = Date()
    if let known = knownRetention.withLock({ $0[key(h)] }), known > now { return known }
    guard try await bucketHasObjectLock() else { return nil }
    let head = try await send("HEAD", key: key(h))
    if head.status == 404 { return nil }
    guard head.status == 200 else { throw failure(head, "stat \(h)") }
    guard let until = head.headers["x-amz-object-lock-retain-until-date"].flatMap(UTCDate.parse), until > now else {
      return nil
    }
    knownRetention.withLock { $0[key(h)] = until }
    return until
  }

  /// Asked once (GET ?object-lock): a bucket without Object Lock holds no retained object, so no HEAD per object
  /// is needed. A store that cannot answer is taken to have it (then every object is asked).
  func bucketHasObjectLock() async throws -> Bool {
    if let known = bucketLocks.withLock({ $0 }) { return known }
    let enabled: Bool
    do {
      let r = try await send("GET", key: nil, query: [("object-lock", "")])
      if r.status == 200 {
        enabled =
          S3Backend.elements("ObjectLockEnabled", in: String(decoding: r.body, as: UTF8.self)).first
          == "Enabled"
      } else {
        enabled = S3Backend.errorCode(r.body) != "ObjectLockConfigurationNotFoundError"
      }
    } catch let e as TidemarkError where e.kind == .unavailable {
      enabled = true
    }
    bucketLocks.withLock { $0 = enabled }
    return enabled
  }

  // MARK: Signature V4

  static func amzDate(_ d: Date) -> String {
    var t = time_t(d.timeIntervalSince1970.rounded(.down))
    var u = tm()
    gmtime_r(&t, &u)
    func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
    return "\(u.tm_year + 1900)\(two(u.tm_mon + 1))\(two(u.tm_mday))T\(two(u.tm_hour))\(two(u.tm_min))\(two(u.tm_sec))Z"
  }

  /// RFC 3986 percent-encoding as SigV4 wants it (unreserved characters stay; `/` stays in keys).
  static func uriEncode(_ s: String, slash: Bool) -> String {
    var out = ""
    for b in s.utf8 {
      switch b {
      case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
        UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."),
        UInt8(ascii: "~"):
        out.append(Character(UnicodeScalar(b)))
      case UInt8(ascii: "/") where slash: out.append("/")
      default: out += String(format: "%%%02X", b)
      }
    }
    return out
  }

  static func hex(_ b: [UInt8]) -> String { b.map { String(format: "%02x", $0) }.joined() }

  /// The `Authorization` header for a request (AWS Signature Version 4, service s3).
  public static func authorization(
    method: String, path: String, query: String, headers: [String: String], payloadHash: String, date: Date,
    credentials c: S3Credentials
  ) -> String {
    let names = headers.keys.map { $0.lowercased() }.sorted()
    let canonicalHeaders = names.map { n in
      "\(n):\(headers.first { $0.key.lowercased() == n }!.value.trimmingCharacters(in: .whitespaces))\n"
    }.joined()
    let signedHeaders = names.joined(separator: ";")
    let canonical = [method, path, query, canonicalHeaders, signedHeaders, payloadHash].joined(separator: "\n")
    let amz = amzDate(date)
    let day = String(amz.prefix(8))
    let scope = "\(day)/\(c.region)/s3/aws4_request"
    let toSign = ["AWS4-HMAC-SHA256", amz, scope, hex(SHA256.hash(Array(canonical.utf8)))].joined(separator: "\n")
    var k = HMACSHA256.mac(key: Array("AWS4\(c.secretKey)".utf8), data: Array(day.utf8))
    k = HMACSHA256.mac(key: k, data: Array(c.region.utf8))
    k = HMACSHA256.mac(key: k, data: Array("s3".utf8))
    k = HMACSHA256.mac(key: k, data: Array("aws4_request".utf8))
    let signature = hex(HMACSHA256.mac(key: k, data: Array(toSign.utf8)))
    return "AWS4-HMAC-SHA256 Credential=\(c.accessKey)/\(scope), SignedHeaders=\(signedHeaders), Signature=\(signature)"
  }

  /// The text of every `<name>…</name>` element (flat; enough for S3's list responses).
  static func elements(_ name: String, in xml: String) -> [String] {
    var out: [String] = []
    var from = xml.startIndex
    while let a = xml.range(of: "<\(name)>", range: from..<xml.endIndex),
      let b = xml.range(of: "</\(name)>", range: a.upperBound..<xml.endIndex)
    {
      out.append(
        String(xml[a.upperBound..<b.lowerBound]).replacingOccurrences(of: "&amp;", with: "&")
          .replacingOccurrences(of: "&lt;", with: "<").replacingOccurrences(of: "&gt;", with: ">"))
      from = b.upperBound
    }
    return out
  }
}
