// The process's HTTP clients (AsyncHTTPClient; why not URLSession: docs/architecture.md), one connection pool per
// use and trust, shared by every backend of that kind: `HTTPClients.client(for:trust:)`. Storage clients (S3,
// REST) allow long reads and 16 connections a host; delivery clients (the Prometheus pushgateway, alert
// webhooks) have short deadlines. None retries a failed connect itself (an unreachable endpoint is reported in
// milliseconds; retrying is RetryBackend's job) and none decompresses. A client is made on first use and lives
// as long as the process.
//
// Trust: by default the system's certificate authorities; with `--cacert FILE` (restic's option) only the
// authorities in those PEM files, so a repository behind a private CA is reachable and nothing else is trusted
// for it. A certificate that fails verification is never transient: `TLSFailure` turns it into one final line
// that names the host and what to do.
import AsyncHTTPClient
import NIOCore
import NIOHTTP1
import NIOSSL
import Synchronization
import TidemarkCore

/// The certificate authorities an HTTPS connection trusts: the system's (no files), or only those in `caFiles`.
public struct TLSTrust: Hashable, Sendable {
  /// PEM files, each with one or more CA certificates (`--cacert`, repeatable).
  public var caFiles: [String]

  public init(caFiles: [String] = []) { self.caFiles = caFiles }

  public static let system = TLSTrust()
}

public enum HTTPClients {
  public enum Use: Hashable, Sendable {
    /// Repository traffic (S3, REST): 10 s to connect, 120 s between bytes of an answer.
    case storage
    /// One-shot deliveries: 5 s to connect, 10 s for an answer.
    case delivery
  }

  private struct Key: Hashable {
    var use: Use
    var trust: TLSTrust
  }

  private static let clients = Mutex<[Key: HTTPClient]>([:])

  /// The shared client for `use` that trusts `trust`. Throws a usage error when a CA file cannot be read.
  public static func client(for use: Use, trust: TLSTrust = .system) throws -> HTTPClient {
    let key = Key(use: use, trust: trust)
    if let c = clients.withLock({ $0[key] }) { return c }
    let tls = try tlsConfiguration(trust)
    return clients.withLock { cache in
      if let c = cache[key] { return c }
      var c = HTTPClient.Configuration()
      switch use {
      case .storage:
        c.timeout = .init(connect: .seconds(10), read: .seconds(120))
        c.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = 16
      case .delivery:
        c.timeout = .init(connect: .seconds(5), read: .seconds(10))
      }
      c.connectionPool.retryConnectionEstablishment = false
      c.decompression = .disabled
      c.tlsConfiguration = tls
      let client = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: c)
      cache[key] = client
      return client
    }
  }

  /// nil: AsyncHTTPClient's default (the system's authorities). The files are small and read once per process.
  static func tlsConfiguration(_ trust: TLSTrust) throws -> TLSConfiguration? {
    guard !trust.caFiles.isEmpty else { return nil }
    var roots: [NIOSSLCertificate] = []
    for file in trust.caFiles {
      do {
        let certs = try NIOSSLCertificate.fromPEMFile(file)
        guard !certs.isEmpty else { throw TidemarkError(.usage, "no certificate") }
        roots += certs
      } catch {
        throw TidemarkError(
          .usage, "--cacert \(file): not a readable PEM file of CA certificates",
          hint: "give the PEM certificate of the authority that signed the server's certificate")
      }
    }
    var tls = TLSConfiguration.makeClientConfiguration()
    tls.trustRoots = .certificates(roots)
    return tls
  }
}

/// Certificate failures of an HTTPS connection, told apart from network failures.
public enum TLSFailure {
  /// One final error for a certificate that failed verification on a connection to `host`; nil when `error` is
  /// not about the server's certificate.
  public static func error(_ error: any Error, host: String) -> TidemarkError? {
    let text = String(describing: error)
    let reason: String
    if let e = error as? NIOSSLExtraError, e == .failedToValidateHostname {
      reason = "it is not issued for this name"
    } else if text.contains("CERTIFICATE_VERIFY_FAILED") {
      reason = "it is not signed by a trusted authority, or has expired"
    } else if text.contains("WRONG_VERSION_NUMBER") || text.contains("PACKET_LENGTH_TOO_LONG") {
      return TidemarkError(
        .general, "TLS: \(host) does not speak TLS on this port",
        hint: "use http:// for it, or start the server with --tls")
    } else {
      return nil
    }
    return TidemarkError(
      .general, "TLS: certificate of \(host) is not trusted (\(reason))",
      hint:
        "pass --cacert FILE with the CA that signed it, and reach the server by a name or address its certificate lists"
    )
  }
}

/// Small one-shot HTTP deliveries for the engine: the Prometheus pushgateway and alert webhooks. A failed connect
/// fails at once (a delivery that fails is reported by the caller and never retried), every request has a
/// deadline, and the answer's body is read and dropped.
public enum HTTPDelivery {
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
      let response = try await HTTPClients.client(for: .delivery).execute(req, timeout: .seconds(seconds))
      _ = try await response.body.collect(upTo: 1 << 20)
      return Int(response.status.code)
    } catch {
      throw TidemarkError(.general, "\(method) \(url): \(S3Backend.describe(error))")
    }
  }
}
