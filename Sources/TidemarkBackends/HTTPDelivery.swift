// Small one-shot HTTP deliveries for the engine: the Prometheus pushgateway and alert webhooks. Sent with
// AsyncHTTPClient, the client the S3 backend uses (why not URLSession: docs/architecture.md), on its own
// connection pool: a failed connect fails at once (no retries here; a delivery that fails is reported by the
// caller and never retried), every request has a deadline, and the answer's body is read and dropped.
import AsyncHTTPClient
import NIOCore
import NIOHTTP1
import TidemarkCore

public enum HTTPDelivery {
  static let client: HTTPClient = {
    var c = HTTPClient.Configuration()
    c.timeout = .init(connect: .seconds(5), read: .seconds(10))
    c.connectionPool.retryConnectionEstablishment = false
    c.decompression = .disabled
    return HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: c)
  }()

  /// Sends `body` to `url` with `method` (PUT, POST) and returns the answer's status code. Throws a
  /// `TidemarkError` naming the URL when the server cannot be reached or does not answer within `seconds`.
  public static func send(
    _ method: String, url: String, body: [UInt8], contentType: String, seconds: Int64 = 10
  ) async throws -> Int {
    var req = HTTPClientRequest(url: url)
    req.method = HTTPMethod(rawValue: method)
    req.headers.add(name: "Content-Type", value: contentType)
    req.headers.add(name: "User-Agent", value: "tidemark")
    req.body = .bytes(ByteBuffer(bytes: body))
    do {
      let response = try await client.execute(req, timeout: .seconds(seconds))
      _ = try await response.body.collect(upTo: 1 << 20)
      return Int(response.status.code)
    } catch {
      throw TidemarkError(.general, "\(method) \(url): \(S3Backend.describe(error))")
    }
  }
}
