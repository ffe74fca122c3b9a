// The REST backend: restic's REST protocol (https://restic.readthedocs.io, "REST Backend"), spoken to
// `tidemark serve` or restic's rest-server, with AsyncHTTPClient (the client the S3 backend uses). Lists ask for
// protocol v2 (names with sizes) and fall back to v1 (names only, then one HEAD per file). Credentials go as HTTP
// Basic authentication, from the URL or the environment. The server makes every save atomic and durable.
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import Synchronization
import TidemarkCore

public final class RESTBackend: Backend {
  /// `scheme://host:port/path`, no credentials, no trailing slash.
  public let base: String
  /// `host:port`, for messages.
  public let server: String
  /// The host alone, for certificate messages.
  var host: String { server.lastIndex(of: ":").map { String(server[..<$0]) } ?? server }
  public let location: String
  let authorization: String?
  let client: HTTPClient
  let slots: AsyncSemaphore
  private let connected = Atomic(false)

  static let v2 = "application/vnd.x.restic.rest.v2"

  /// `client`: the process's storage client for the trust the location needs (`HTTPClients`).
  public init(
    base: String, server: String, user: String?, password: String?, connections: Int = 5, location: String,
    client: HTTPClient? = nil
  ) throws {
    self.base = base
    self.server = server
    self.location = location
    if let user {
      authorization = "Basic " + Base64.encode(Array("\(user):\(password ?? "")".utf8))
    } else {
      authorization = nil
    }
    self.client = try client ?? HTTPClients.client(for: .storage)
    slots = AsyncSemaphore(max(1, connections))
  }

  /// `rest:http[s]://[user:password@]host[:port][/path]`: the base URL without credentials, `host:port`, and the
  /// credentials (percent-decoded).
  public static func parse(_ location: String) -> (base: String, server: String, user: String?, password: String?)? {
    guard location.hasPrefix("rest:") else { return nil }
    let url = String(location.dropFirst(5))
    guard let c = URLComponents(string: url), let scheme = c.scheme, scheme == "http" || scheme == "https",
      let host = c.host, !host.isEmpty
    else { return nil }
    let port = c.port ?? (scheme == "https" ? 443 : 80)
    let shownHost = host.contains(":") && !host.hasPrefix("[") ? "[\(host)]" : host
    var path = c.percentEncodedPath
    while path.hasSuffix("/") { path.removeLast() }
    let server = "\(shownHost):\(port)"
    let base = "\(scheme)://\(shownHost)\(c.port.map { ":\($0)" } ?? "")\(path)"
    return (
      base, server, c.percentEncodedUser?.removingPercentEncoding,
      c.percentEncodedPassword?.removingPercentEncoding
    )
  }

  func url(_ h: Handle) -> String {
    h.type == .config ? base + "/config" : "\(base)/\(h.type.rawValue)/\(h.name)"
  }

  struct Response {
    var status: Int
    var body: [UInt8]
    var headers: HTTPHeaders
  }

  /// Sends one request. Server errors (5xx) and network failures after the first answer become `.unavailable`
  /// (RetryBackend retries them); a refused first connection is reported at once, naming host and port.
  func send(_ method: HTTPMethod, _ url: String, body: [UInt8]? = nil, headers: [(String, String)] = [])
    async throws -> Response
  {
    var req = HTTPClientRequest(url: url)
    req.method = method
    if let authorization { req.headers.add(name: "Authorization", value: authorization) }
    req.headers.add(name: "User-Agent", value: "tidemark")
    for (k, v) in headers { req.headers.add(name: k, value: v) }
    if let body {
      req.headers.add(name: "Content-Type", value: "application/octet-stream")
      req.body = .bytes(ByteBuffer(bytes: body))
    }
    await slots.acquire()
    defer { slots.release() }
    let r: Response
    do {
      let response = try await client.execute(req, timeout: .seconds(300))
      var data: [UInt8] = []
      if method != .HEAD {
        var buf = try await response.body.collect(upTo: 1 << 31)
        data = buf.readBytes(length: buf.readableBytes) ?? []
      }
      r = Response(status: Int(response.status.code), body: data, headers: response.headers)
    } catch {
      if let tls = TLSFailure.error(error, host: host) { throw tls }
      let transient = connected.load(ordering: .relaxed)
      throw TidemarkError(
        transient ? .unavailable : .general,
        "cannot reach the REST server at \(server): \(S3Backend.describe(error))",
        hint: base.hasPrefix("http:")
          ? "is `tidemark serve` (or rest-server) running there, and does it speak http:// (not https://, --tls)?"
          : "is `tidemark serve` (or rest-server) running there?")
    }
    connected.store(true, ordering: .relaxed)
    if r.status >= 500 && r.status != 507 {
      throw TidemarkError(.unavailable, "REST \(method.rawValue) \(url): HTTP \(r.status)")
    }
    return r
  }

  func failure(_ r: Response, _ what: String) -> TidemarkError {
    switch r.status {
    case 401:
      return TidemarkError(
        .general, "the REST server at \(server) refused the credentials (HTTP 401)",
        hint: "check the user and password in the URL or TIDEMARK_REST_USERNAME / TIDEMARK_REST_PASSWORD")
    case 403:
      return TidemarkError(
        .general, "REST \(what): the server at \(server) refused (HTTP 403)",
        hint: "an append-only server never deletes or replaces files")
    case 413:
      return TidemarkError(.general, "REST \(what): the server's size limit is reached (HTTP 413)")
    case 507:
      return TidemarkError(.general, "REST \(what): the server's disk is full (HTTP 507)")
    default:
      return TidemarkError(.general, "REST \(what): HTTP \(r.status)")
    }
  }

  // MARK: Backend

  public func create() async throws {
    let r = try await send(.POST, base + "/?create=true")
    guard r.status == 200 else { throw failure(r, "create repository") }
  }

  public func save(_ h: Handle, data: [UInt8]) async throws {
    let r = try await send(.POST, url(h), body: data)
    guard r.status == 200 else { throw failure(r, "save \(h)") }
  }

  public func load(_ h: Handle, offset: Int, length: Int) async throws -> [UInt8] {
    var headers: [(String, String)] = []
    if offset > 0 || length > 0 {
      headers.append(("Range", length > 0 ? "bytes=\(offset)-\(offset + length - 1)" : "bytes=\(offset)-"))
    }
    let r = try await send(.GET, url(h), headers: headers)
    if r.status == 404 { throw BackendNotFound(h) }
    if r.status == 416 {
      throw TidemarkError.corrupt("\(h) is shorter than expected (nothing at \(offset))")
    }
    guard r.status == 200 || r.status == 206 else { throw failure(r, "load \(h)") }
    if length > 0 && r.body.count != length {
      throw TidemarkError.corrupt("\(h) is shorter than expected (got \(r.body.count) of \(length) bytes at \(offset))")
    }
    if r.status == 200 && offset > 0 {
      // A server that ignores Range sends the whole file.
      guard r.body.count > offset else { throw TidemarkError.corrupt("\(h) is shorter than \(offset) bytes") }
      return Array(r.body[offset...])
    }
    return r.body
  }

  public func size(_ h: Handle) async throws -> Int {
    let r = try await send(.HEAD, url(h))
    if r.status == 404 { throw BackendNotFound(h) }
    guard r.status == 200, let n = r.headers.first(name: "Content-Length").flatMap({ Int($0) }) else {
      throw failure(r, "stat \(h)")
    }
    return n
  }

  public func list(_ t: FileType) async throws -> [FileInfo] {
    if t == .config {
      guard let n = try? await size(.config) else { return [] }
      return [FileInfo(name: "config", size: n)]
    }
    let r = try await send(.GET, "\(base)/\(t.rawValue)/", headers: [("Accept", RESTBackend.v2)])
    if r.status == 404 { return [] }
    guard r.status == 200 else { throw failure(r, "list \(t.rawValue)") }
    let json = try? JSONSerialization.jsonObject(with: Data(r.body))
    if r.headers.first(name: "Content-Type") == RESTBackend.v2, let items = json as? [[String: Any]] {
      return items.compactMap { item in
        guard let name = item["name"] as? String, let size = (item["size"] as? NSNumber)?.intValue else { return nil }
        return FileInfo(name: name, size: size)
      }
    }
    guard let names = json as? [String] else {
      throw TidemarkError(.general, "REST list \(t.rawValue): the server's answer is not a list of names")
    }
    var out: [FileInfo] = []
    for name in names { out.append(FileInfo(name: name, size: try await size(Handle(t, name)))) }
    return out
  }

  /// An append-only server (tidemark serve or rest-server with `--append-only`) refuses any DELETE outside
  /// locks/ before it looks for the file: deleting a data file that cannot exist (an all-zero name) answers 403
  /// there and 404 elsewhere, and never removes anything.
  public func refusesDeletes() async throws -> Bool {
    let r = try await send(.DELETE, url(Handle(.pack, String(repeating: "0", count: 64))))
    switch r.status {
    case 403: return true
    case 404, 200, 204: return false
    default: throw failure(r, "probe whether deletes are allowed")
    }
  }

  public func remove(_ h: Handle) async throws {
    let r = try await send(.DELETE, url(h))
    if r.status == 404 { throw BackendNotFound(h) }
    guard r.status == 200 || r.status == 204 else { throw failure(r, "remove \(h)") }
  }
}
