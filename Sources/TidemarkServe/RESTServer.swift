// `tidemark serve`: restic's REST backend protocol (v1 and v2) over a directory of repositories, on Hummingbird 2.
// A served directory is an ordinary local repository (or a tree of them): restic and tidemark can open it
// directly as well.
//
// Rules (see docs/architecture.md): uploads are streamed to a temporary file, never held whole in memory; every
// file but config must hash (SHA-256) to its name or is refused with 400 and leaves nothing behind; with
// `appendOnly`, nothing that exists is ever replaced or deleted (403), except lock files, which clients must be
// able to remove. Without `appendOnly`, an upload onto an existing name replaces it only after its content was
// verified against the name (so it can only repair a damaged copy); an existing config is never replaced by
// different bytes (403: delete it first), the same bytes are accepted (200).
//
// Concurrency: `RESTServer` is a ServiceLifecycle `Service`. Requests are served concurrently; every file
// operation runs on `Blocking`'s threads. State shared between requests is the htpasswd cache (a Mutex) and the
// quota (an atomic counter), both owned by the server value.
import Hummingbird
import HummingbirdTLS
import Logging
internal import NIOCore
internal import NIOSSL
import ServiceLifecycle
import TidemarkCore
import TidemarkSystem

#if canImport(Glibc)
  import Glibc
#endif

/// How `tidemark serve` serves.
public struct ServeConfiguration: Sendable {
  /// The address to bind: an IPv4 or IPv6 literal (no brackets) or a host name; empty for all interfaces.
  public var host: String
  public var port: Int
  /// The served directory (`--path`).
  public var root: String
  public var appendOnly: Bool
  /// The first path component must be the authenticated user.
  public var privateRepos: Bool
  /// nil: no authentication (`--no-auth`).
  public var users: Htpasswd?
  /// The bytes all repositories may hold together (`--max-size`).
  public var maxSize: Int64?
  /// HTTPS with this certificate and key (`--tls`); nil: plain HTTP.
  public var tls: ServeTLS?
  /// `GET /metrics` (`--prometheus`); nil: not served.
  public var metrics: ServeMetricsAccess?

  public init(
    host: String, port: Int, root: String, appendOnly: Bool = false, privateRepos: Bool = false,
    users: Htpasswd? = nil, maxSize: Int64? = nil, tls: ServeTLS? = nil, metrics: ServeMetricsAccess? = nil
  ) {
    self.host = host
    self.port = port
    self.root = root
    self.appendOnly = appendOnly
    self.privateRepos = privateRepos
    self.users = users
    self.maxSize = maxSize
    self.tls = tls
    self.metrics = metrics
  }

  /// Parses `--listen`: `HOST:PORT`, `[IPV6]:PORT` or `:PORT` (all interfaces).
  public static func parseListen(_ text: String) throws -> (host: String, port: Int) {
    func invalid() -> TidemarkError {
      TidemarkError(.usage, "--listen `\(text)` is not HOST:PORT (e.g. :8000, 127.0.0.1:8000 or [::1]:8000)")
    }
    let host: Substring
    let port: Substring
    if text.hasPrefix("[") {
      guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
        throw invalid()
      }
      host = text[text.index(after: text.startIndex)..<close]
      port = text[text.index(close, offsetBy: 2)...]
    } else {
      guard let colon = text.lastIndex(of: ":") else { throw invalid() }
      host = text[..<colon]
      port = text[text.index(after: colon)...]
      if host.contains(":") { throw invalid() }
    }
    guard !port.isEmpty, port.count <= 5, port.allSatisfy({ $0.isASCII && $0.isNumber }), let p = Int(port),
      p <= 65535
    else { throw invalid() }
    return (host.lowercased() == "localhost" ? "127.0.0.1" : String(host), p)
  }
}

/// The certificate (chain) and private key of `--tls`, PEM files. rest-server's defaults: `public_key` and
/// `private_key` in the served directory.
public struct ServeTLS: Sendable {
  public var certificate: String
  public var key: String

  public init(certificate: String, key: String) {
    self.certificate = certificate
    self.key = key
  }

  /// `--tls` with `--tls-cert`/`--tls-key` as given (nil: rest-server's default file in `root`).
  public static func files(certificate: String?, key: String?, root: String) -> ServeTLS {
    let dir = root.hasSuffix("/") ? root : root + "/"
    return ServeTLS(certificate: certificate ?? dir + "public_key", key: key ?? dir + "private_key")
  }

  /// Reads both files into a server configuration; a file that is missing or not PEM is one usage error naming
  /// it. Blocking: call through `Blocking.run`.
  func load() throws -> TLSConfiguration {
    let chain: [NIOSSLCertificate]
    do {
      chain = try NIOSSLCertificate.fromPEMFile(certificate)
      guard !chain.isEmpty else { throw TidemarkError(.usage, "empty") }
    } catch {
      throw TidemarkError(
        .usage, "--tls-cert \(certificate): not a readable PEM certificate (\(Self.reason(error, certificate)))",
        hint: "give the server's certificate chain in PEM, or --tls-cert FILE")
    }
    let key: NIOSSLPrivateKey
    do {
      key = try NIOSSLPrivateKey(file: self.key, format: .pem)
    } catch {
      throw TidemarkError(
        .usage, "--tls-key \(self.key): not a readable PEM private key (\(Self.reason(error, self.key)))",
        hint: "give the certificate's private key in PEM, or --tls-key FILE")
    }
    var configuration = TLSConfiguration.makeServerConfiguration(
      certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
    configuration.minimumTLSVersion = .tlsv12
    return configuration
  }

  private static func reason(_ error: any Error, _ path: String) -> String {
    if access(path, R_OK) != 0 { return String(cString: strerror(errno)).lowercased() }
    return "no PEM block of that kind"
  }
}

public struct RESTServer: Service {
  public let configuration: ServeConfiguration
  private let logger: Logger
  private let handler: RESTHandler
  private let tlsConfiguration: TLSConfiguration?

  /// Creates the served directory when it is missing and, with a size limit, measures what it holds.
  public init(configuration: ServeConfiguration, logger: Logger) async throws {
    self.configuration = configuration
    self.logger = logger
    if let tls = configuration.tls {
      tlsConfiguration = try await Blocking.run { try tls.load() }
    } else {
      tlsConfiguration = nil
    }
    let files = RepositoryFiles(root: BytePath(configuration.root).absolute())
    do {
      try await Blocking.run { try Sys.mkdirAll(files.root, 0o700) }
    } catch let e as SystemError {
      throw TidemarkError(.general, "cannot create the served directory: \(e)")
    }
    let removed = try await Blocking.run { try files.removeInterruptedUploads() }
    if removed > 0 { logger.notice("removed \(removed) temporary files of interrupted uploads") }
    var quota: Quota? = nil
    if let max = configuration.maxSize {
      let used = try await Blocking.run { try files.usage() }
      quota = Quota(limit: max, used: used)
    }
    handler = RESTHandler(
      files: files, appendOnly: configuration.appendOnly, privateRepos: configuration.privateRepos,
      users: configuration.users, quota: quota,
      metrics: configuration.metrics.map { ServeMetrics(access: $0, quota: quota) }, logger: logger)
  }

  /// Serves until graceful shutdown (SIGTERM or SIGINT through the ServiceGroup that runs it).
  public func run() async throws {
    let hosts = configuration.host.isEmpty ? ["::", "0.0.0.0"] : [configuration.host]
    for (i, host) in hosts.enumerated() {
      do {
        try await makeApplication(host: host).run()
        return
      } catch let error as IOError
        where i + 1 < hosts.count && (error.errnoCode == EAFNOSUPPORT || error.errnoCode == EADDRNOTAVAIL)
      {
        continue
      } catch let error as IOError {
        throw TidemarkError(
          .general,
          "--listen \(listenDescription): \(String(cString: strerror(error.errnoCode)).lowercased())")
      } catch is SocketAddressError {
        throw TidemarkError(.general, "--listen \(listenDescription): cannot resolve the host")
      }
    }
  }

  /// Runs the server until SIGTERM or SIGINT, then stops gracefully.
  public func runUntilSignalled() async throws {
    let group = ServiceGroup(
      configuration: .init(services: [self], gracefulShutdownSignals: [.sigterm, .sigint], logger: quietLogger))
    try await group.run()
  }

  private var listenDescription: String {
    configuration.host.contains(":")
      ? "[\(configuration.host)]:\(configuration.port)" : "\(configuration.host):\(configuration.port)"
  }

  private var quietLogger: Logger {
    var quiet = logger
    if quiet.logLevel > .debug { quiet.logLevel = .critical }
    return quiet
  }

  private func makeApplication(host: String) throws -> some ApplicationProtocol {
    let logger = self.logger
    let root = handler.files.root
    let scheme = tlsConfiguration == nil ? "http" : "https"
    return Application(
      responder: handler,
      server: try tlsConfiguration.map {
        try .tls(.http1(configuration: .init(idleTimeout: .seconds(300))), tlsConfiguration: $0)
      } ?? .http1(configuration: .init(idleTimeout: .seconds(300))),
      configuration: .init(address: .hostname(host, port: configuration.port), serverName: "tidemark"),
      onServerRunning: { channel in
        let ip = channel.localAddress?.ipAddress ?? host
        let port = channel.localAddress?.port ?? 0
        let shown = ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
        logger.notice("serving \(root) on \(scheme)://\(shown)/")
      },
      logger: quietLogger)
  }
}
