// The requests of restic's REST protocol, answered from `RepositoryFiles`. See RESTServer.swift for the rules.
import Foundation
import HTTPTypes
import Hummingbird
import Logging
internal import NIOCore
import TidemarkCore
import TidemarkCrypto
import TidemarkSystem

#if canImport(Glibc)
  import Glibc
#endif

struct RESTHandler: HTTPResponder {
  typealias Context = BasicRequestContext

  let files: RepositoryFiles
  let appendOnly: Bool
  let privateRepos: Bool
  let users: Htpasswd?
  let quota: Quota?
  let metrics: ServeMetrics?
  let logger: Logger

  static let v2 = "application/vnd.x.restic.rest.v2"
  static let v1 = "application/vnd.x.restic.rest.v1"
  /// Uploads are written in pieces of this size (at most one piece per upload is held in memory).
  static let piece = 1 << 20

  func respond(to request: Request, context: Context) async throws -> Response {
    let path = request.uri.path
    if let metrics, path == "/metrics" || path == "/metrics/" {
      if metrics.access == .authenticated, users != nil, await authenticate(request) == nil {
        return Self.unauthorized()
      }
      guard request.method == .get || request.method == .head else { return Self.notAllowed("GET") }
      return Response(
        status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
        body: .init(byteBuffer: ByteBuffer(bytes: metrics.render())))
    }
    let route = RESTRoute(path: path)
    var moved: Int64 = 0
    var user: String? = nil
    let response: Response
    if users != nil, let name = await authenticate(request) {
      user = name
    }
    if users != nil && user == nil {
      response = Self.unauthorized()
    } else if let route {
      if privateRepos, route.repo.first != user {
        response = Self.status(.unauthorized)
      } else {
        response = try await dispatchMapped(route, request, moved: &moved)
      }
    } else {
      response = Self.status(.notFound)
    }
    if let metrics {
      // Series only for repositories a user was let into (see ServeMetrics).
      let allowed = route != nil && response.status != .unauthorized
      let repo = allowed ? (route?.repo.joined(separator: "/") ?? ".") : "."
      metrics.request(repo: repo, method: request.method.rawValue, status: response.status.code)
      if let route, let op = Self.operation(route, request.method, response.status) {
        metrics.blob(op.0, user: user ?? "", repo: repo, type: op.1, bytes: moved)
      }
    }
    return response
  }

  /// The user whose Basic credentials the request carries, when they are right.
  private func authenticate(_ request: Request) async -> String? {
    guard let users, let (name, password) = Self.basicCredentials(request.headers[.authorization]),
      await users.verify(user: name, password: password)
    else { return nil }
    return name
  }

  static func unauthorized() -> Response {
    Response(
      status: .unauthorized, headers: [.wwwAuthenticate: "Basic realm=\"restic\""],
      body: .init(byteBuffer: ByteBuffer(string: "401 unauthorized\n")))
  }

  /// What a successful request did to a file, for the metrics: the operation and the file's type.
  static func operation(_ route: RESTRoute, _ method: HTTPRequest.Method, _ status: HTTPResponse.Status)
    -> (ServeMetrics.Operation, String)?
  {
    let type: String
    switch route {
    case .file(_, let t, _): type = t.rawValue
    case .config: type = "config"
    default: return nil
    }
    guard status == .ok || status == .partialContent else { return nil }
    switch method {
    case .get: return (.read, type)
    case .post: return (.write, type)
    case .delete: return (.delete, type)
    default: return nil
    }
  }

  /// `dispatch`, with a full disk answered as 507 Insufficient Storage and other storage errors as 500.
  /// `moved`: the bytes of the file read, written or deleted.
  private func dispatchMapped(_ route: RESTRoute, _ request: Request, moved: inout Int64) async throws -> Response {
    do {
      return try await dispatch(route, request, moved: &moved)
    } catch let e as SystemError {
      if e.errno == ENOSPC || e.errno == EDQUOT {
        logger.warning("\(request.method) \(request.uri.path): the disk is full")
        return Self.status(.init(code: 507, reasonPhrase: "Insufficient Storage"))
      }
      logger.error("\(request.method) \(request.uri.path): \(e)")
      return Self.status(.internalServerError)
    }
  }

  private func dispatch(_ route: RESTRoute, _ request: Request, moved: inout Int64) async throws -> Response {
    let method = request.method
    switch route {
    case .repository(let repo):
      switch method {
      case .post:
        guard request.uri.queryParameters["create"] == "true" else { return Self.status(.badRequest) }
        try await Blocking.run { try files.create(repo) }
        return Self.status(.ok)
      case .delete:
        return Self.status(appendOnly ? .forbidden : .notImplemented)
      default:
        return Self.notAllowed("POST, DELETE")
      }
    case .config(let repo):
      let path = files.configPath(repo)
      switch method {
      case .head: return try await head(path)
      case .get: return try await get(path, request, moved: &moved)
      case .post: return try await upload(request, to: path, name: nil, moved: &moved)
      case .delete: return try await delete(path, moved: &moved)
      default: return Self.notAllowed("HEAD, GET, POST, DELETE")
      }
    case .list(let repo, let type):
      guard method == .get else { return Self.notAllowed("GET") }
      return try await list(repo, type, request)
    case .file(let repo, let type, let name):
      let path = files.filePath(repo, type, name)
      switch method {
      case .head: return try await head(path)
      case .get: return try await get(path, request, moved: &moved)
      case .post: return try await upload(request, to: path, name: name, moved: &moved)
      case .delete: return try await delete(path, isLock: type == .locks, moved: &moved)
      default: return Self.notAllowed("HEAD, GET, POST, DELETE")
      }
    }
  }

  private func head(_ path: BytePath) async throws -> Response {
    let files = self.files
    guard let size = try await Blocking.run({ try files.size(path) }) else { return Self.status(.notFound) }
    return Response(status: .ok, headers: [.contentLength: String(size)], body: .init())
  }

  private func get(_ path: BytePath, _ request: Request, moved: inout Int64) async throws -> Response {
    let files = self.files
    guard let size = try await Blocking.run({ try files.size(path) }) else { return Self.status(.notFound) }
    var start: Int64 = 0
    var count = size
    var status = HTTPResponse.Status.ok
    var headers: HTTPFields = [.contentType: "application/octet-stream", .acceptRanges: "bytes"]
    if let range = request.headers[.range] {
      guard let (a, b) = Self.parseRange(range, size: size) else {
        return Response(
          status: .rangeNotSatisfiable, headers: [.contentRange: "bytes */\(size)", .contentLength: "0"],
          body: .init())
      }
      start = a
      count = b - a + 1
      status = .partialContent
      headers[.contentRange] = "bytes \(a)-\(b)/\(size)"
    }
    let fd: Int32
    do {
      fd = try await Blocking.run { try Sys.open(path, O_RDONLY) }
    } catch let e as SystemError where e.errno == ENOENT {
      return Self.status(.notFound)
    }
    let handle = FileHandleBox(fd)
    let (first, total) = (start, count)
    moved = total
    return Response(
      status: status, headers: headers,
      body: .init(contentLength: Int(total)) { writer in
        var offset = first
        let end = first + total
        while offset < end {
          let n = Int(min(Int64(Self.piece), end - offset))
          let at = offset
          let buffer = try await Blocking.run { try RepositoryFiles.read(handle.fd, offset: at, count: n) }
          if buffer.readableBytes == 0 { throw SystemError(EIO, "read", path.description) }
          try await writer.write(buffer)
          offset += Int64(buffer.readableBytes)
        }
        try await writer.finish(nil)
      })
  }

  private func list(_ repo: [String], _ type: RESTFileType, _ request: Request) async throws -> Response {
    let files = self.files
    guard let entries = try await Blocking.run({ try files.list(repo, type) }) else {
      return Self.status(.notFound)
    }
    let v2 = request.headers[.accept]?.contains("vnd.x.restic.rest.v2") ?? false
    var json = "["
    for (i, e) in entries.enumerated() {
      if i > 0 { json += "," }
      json += v2 ? "{\"name\":\"\(e.name)\",\"size\":\(e.size)}" : "\"\(e.name)\""
    }
    json += "]"
    return Response(
      status: .ok, headers: [.contentType: v2 ? Self.v2 : Self.v1], body: .init(byteBuffer: ByteBuffer(string: json)))
  }

  private func delete(_ path: BytePath, isLock: Bool = false, moved: inout Int64) async throws -> Response {
    if appendOnly && !isLock { return Self.status(.forbidden) }
    let files = self.files
    guard let size = try await Blocking.run({ try files.remove(path) }) else { return Self.status(.notFound) }
    quota?.release(size)
    moved = size
    return Self.status(.ok)
  }

  /// Streams the body to a temporary file, checks it against `name` (the SHA-256; nil for config), then puts it
  /// in place. The temporary file is gone before the response is sent, whatever the outcome.
  private func upload(_ request: Request, to path: BytePath, name: String?, moved: inout Int64) async throws
    -> Response
  {
    let files = self.files
    let existing = try await Blocking.run { try files.size(path) }
    if existing != nil && appendOnly { return Self.status(.forbidden) }
    if let quota, let length = request.headers[.contentLength].flatMap({ Int64($0) }),
      quota.current + length > quota.limit
    {
      return Self.status(.contentTooLarge)
    }
    let upload = try await Blocking.run { try Upload(target: path) }
    let response: Response
    do {
      response = try await receive(request, into: upload, name: name, existing: existing)
    } catch {
      await abandon(upload)
      throw error
    }
    await abandon(upload)
    moved = upload.written
    return response
  }

  /// Frees what an upload that was not put in place holds: its quota and its temporary file.
  private func abandon(_ upload: Upload) async {
    guard !upload.placed else { return }
    if upload.reserved > 0 { quota?.release(upload.reserved) }
    _ = try? await Blocking.run { upload.discard() }
  }

  private func receive(_ request: Request, into upload: Upload, name: String?, existing: Int64?) async throws
    -> Response
  {
    let quota = self.quota
    var pending = ByteBuffer()
    func flush() async throws -> Bool {
      guard pending.readableBytes > 0 else { return true }
      let n = Int64(pending.readableBytes)
      if let quota {
        guard quota.reserve(n) else { return false }
        upload.reserved += n
      }
      let piece = pending
      pending = ByteBuffer()
      try await Blocking.run { try upload.write(piece) }
      return true
    }
    for try await var chunk in request.body {
      pending.writeBuffer(&chunk)
      if pending.readableBytes >= Self.piece {
        guard try await flush() else { return Self.status(.contentTooLarge) }
      }
    }
    guard try await flush() else { return Self.status(.contentTooLarge) }
    let digest = upload.digest()
    if let name {
      guard digest == name else {
        return Response(
          status: .badRequest, body: .init(byteBuffer: ByteBuffer(string: "content does not match its name\n")))
      }
    } else if existing != nil {
      // An existing config is never replaced; the same bytes again are accepted.
      let path = upload.target
      let same = try await Blocking.run { RepositoryFiles.hex(SHA256.hash(try Sys.readFile(path))) == digest }
      return Self.status(same ? .ok : .forbidden)
    }
    // Same name, same verified content: replacing can only repair a damaged copy. Config never replaces.
    let replacing = name != nil && !appendOnly
    guard try await Blocking.run({ try upload.commit(replacing: replacing) }) else {
      return Self.status(.forbidden)
    }
    if let existing { quota?.release(existing) }
    return Self.status(.ok)
  }

  static func status(_ status: HTTPResponse.Status) -> Response {
    Response(
      status: status, headers: [.contentType: "text/plain; charset=utf-8"],
      body: .init(byteBuffer: ByteBuffer(string: "\(status.code) \(status.reasonPhrase.lowercased())\n")))
  }

  static func notAllowed(_ allow: String) -> Response {
    var r = status(.methodNotAllowed)
    r.headers[.allow] = allow
    return r
  }

  /// `Basic base64(user:password)`.
  static func basicCredentials(_ header: String?) -> (String, String)? {
    guard let header, header.count > 6, header.prefix(6).lowercased() == "basic " else { return nil }
    guard let decoded = Base64.decode(Array(header.dropFirst(6).trimmingCharacters(in: .whitespaces).utf8)),
      let text = String(validating: decoded, as: UTF8.self), let colon = text.firstIndex(of: ":")
    else { return nil }
    return (String(text[..<colon]), String(text[text.index(after: colon)...]))
  }

  /// One range of `bytes=A-B`, `bytes=A-` or `bytes=-N`, clamped to the file; nil when not satisfiable.
  static func parseRange(_ header: String, size: Int64) -> (Int64, Int64)? {
    guard header.hasPrefix("bytes="), !header.contains(",") else { return nil }
    let spec = header.dropFirst(6).split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
    guard spec.count == 2 else { return nil }
    let a = spec[0].trimmingCharacters(in: .whitespaces)
    let b = spec[1].trimmingCharacters(in: .whitespaces)
    if a.isEmpty {
      guard let n = Int64(b), n > 0, size > 0 else { return nil }
      return (max(0, size - n), size - 1)
    }
    guard let start = Int64(a), start >= 0, start < size else { return nil }
    if b.isEmpty { return (start, size - 1) }
    guard let end = Int64(b), end >= start else { return nil }
    return (start, min(end, size - 1))
  }
}

/// Closes a file descriptor when the response that reads it is gone (sent or dropped).
final class FileHandleBox: Sendable {
  let fd: Int32
  init(_ fd: Int32) { self.fd = fd }
  deinit { Sys.close(fd) }
}
