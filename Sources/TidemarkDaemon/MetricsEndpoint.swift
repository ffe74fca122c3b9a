// The daemon's HTTP endpoint: `GET /metrics` (the Prometheus text of an injected renderer) and `GET /health`
// (JSON, 200 or 503), served by Hummingbird 2 over swift-nio so that scrapes never wait for each other. Every
// connection is closed after `idleTimeout` without a complete request part (HTTP1 `idleTimeout`): a silent,
// half-sent or half-open client costs one file descriptor for a few seconds and nothing else. Listens on IPv4,
// IPv6 or both (`:PORT` binds `::`, which takes IPv4 too unless the host has IPv6 off, then `0.0.0.0`).
//
// Concurrency: `MetricsEndpoint` is a ServiceLifecycle `Service`; `run()` is called once and returns on graceful
// shutdown or cancellation. `render` and `health` are called from any task, concurrently, once per request, so
// they must be safe to call in parallel (read a snapshot; never block a thread). `listening()` may be awaited
// from any number of tasks, before or after `run()` starts.
//
// Must never: log a request at a level above debug (scrapes come every few seconds), or start cycles before the
// caller learned whether the address could be bound: that is what `listening()` is for.
import Hummingbird
import Logging
internal import NIOCore
import ServiceLifecycle
import Synchronization
import TidemarkCore

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

/// Where the endpoint listens, parsed from the `metrics.listen` setting.
public struct MetricsListenAddress: Sendable, Equatable, CustomStringConvertible {
  /// The address to bind: an IPv4 or IPv6 literal (no brackets) or a host name; empty for all interfaces.
  public var host: String
  /// 0 binds an ephemeral port; `MetricsEndpoint.listening()` tells which.
  public var port: Int

  public init(host: String, port: Int) {
    self.host = host
    self.port = port
  }

  /// Accepts `HOST:PORT`, `[IPV6]:PORT`, `:PORT` (all interfaces) and `localhost:PORT` (127.0.0.1: a host name
  /// could resolve to either family, and the scrape config will say 127.0.0.1 or localhost, not ::1).
  /// Throws a `TidemarkError(.usage)` of one line that names `setting`.
  public init(parsing text: String, setting: String = "metrics.listen") throws {
    var s = Substring(text)
    while let c = s.first, c == " " || c == "\t" { s.removeFirst() }
    while let c = s.last, c == " " || c == "\t" { s.removeLast() }
    func invalid(_ why: String = "") -> TidemarkError {
      TidemarkError(
        .usage, "\(setting) `\(text)` is not HOST:PORT (e.g. 127.0.0.1:9464 or [::1]:9464)\(why)")
    }
    let hostPart: Substring
    let portPart: Substring
    if s.hasPrefix("[") {
      guard let close = s.firstIndex(of: "]") else { throw invalid() }
      hostPart = s[s.index(after: s.startIndex)..<close]
      let rest = s[s.index(after: close)...]
      guard rest.hasPrefix(":") else { throw invalid() }
      portPart = rest.dropFirst()
      guard Self.isIPv6(hostPart) else { throw invalid("; `\(hostPart)` is not an IPv6 address") }
    } else {
      guard let colon = s.lastIndex(of: ":") else { throw invalid() }
      hostPart = s[..<colon]
      portPart = s[s.index(after: colon)...]
      if hostPart.contains(":") { throw invalid("; put an IPv6 address in brackets") }
      if !hostPart.isEmpty && !Self.isIPv4(hostPart) && !Self.isHostName(hostPart) { throw invalid() }
    }
    guard !portPart.isEmpty, portPart.allSatisfy({ $0.isASCII && $0.isNumber }), portPart.count <= 5,
      let port = Int(portPart), port <= 65535
    else { throw invalid("; the port must be 0-65535") }
    self.host = hostPart.lowercased() == "localhost" ? "127.0.0.1" : String(hostPart)
    self.port = port
  }

  /// `127.0.0.1:9464`, `[::1]:9464`, `:9464`: the form the parser reads back.
  public var description: String {
    host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
  }

  private static func isIPv4(_ s: Substring) -> Bool {
    var addr = in_addr()
    return inet_pton(AF_INET, String(s), &addr) == 1
  }

  private static func isIPv6(_ s: Substring) -> Bool {
    var addr = in6_addr()
    return inet_pton(AF_INET6, String(s), &addr) == 1
  }

  /// RFC 1123 labels; what is left to the resolver at bind time.
  private static func isHostName(_ s: Substring) -> Bool {
    s.count <= 253
      && s.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { label in
        !label.isEmpty && label.count <= 63 && label.first != "-" && label.last != "-"
          && label.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }
      }
  }
}

public final class MetricsEndpoint: Service, Sendable {
  public typealias Health = @Sendable () async -> (ok: Bool, body: String)

  public let address: MetricsListenAddress
  private let setting: String
  private let idleTimeout: Duration
  private let logger: Logger
  private let render: @Sendable () async -> String
  private let health: Health
  private let phase = Mutex(Phase.starting(waiters: [:], next: 0))

  private enum Phase {
    case starting(waiters: [Int: CheckedContinuation<MetricsListenAddress, any Error>], next: Int)
    case listening(MetricsListenAddress)
    case failed(any Error)
  }

  /// - Parameters:
  ///   - setting: the configuration key named in error messages.
  ///   - idleTimeout: how long a connection may stay without a complete request part before it is closed.
  ///   - logger: the endpoint logs one line (info) when it listens. Hummingbird's own lines (its start banner,
  ///     its inner ServiceGroup, per-connection errors) reach `logger` only when it logs at debug or trace.
  ///   - render: the body of `GET /metrics` (Prometheus text, e.g. `MetricsText.render`).
  ///   - health: the status and JSON body of `GET /health`: 200 when ok, 503 when not.
  public init(
    address: MetricsListenAddress, setting: String = "metrics.listen", idleTimeout: Duration = .seconds(5),
    logger: Logger, render: @escaping @Sendable () async -> String, health: @escaping Health
  ) {
    self.address = address
    self.setting = setting
    self.idleTimeout = idleTimeout
    self.logger = logger
    self.render = render
    self.health = health
  }

  /// Parses `listen` (see `MetricsListenAddress.init(parsing:setting:)`); throws its one-line usage error.
  public convenience init(
    listen: String, setting: String = "metrics.listen", idleTimeout: Duration = .seconds(5), logger: Logger,
    render: @escaping @Sendable () async -> String, health: @escaping Health
  ) throws {
    self.init(
      address: try MetricsListenAddress(parsing: listen, setting: setting), setting: setting,
      idleTimeout: idleTimeout, logger: logger, render: render, health: health)
  }

  /// The address actually bound (the real port when 0 was asked for), once `run()` has bound it. Throws the
  /// bind failure as a `TidemarkError` of one line (`metrics.listen 127.0.0.1:9464: address already in use`),
  /// or `CancellationError` if `run()` ended before binding or the waiting task is cancelled. The daemon awaits
  /// this before its first cycle.
  public func listening() async throws -> MetricsListenAddress {
    // Registered and looked up under `phase`'s lock: a cancellation that comes before registration is seen by
    // `Task.isCancelled` there, one that comes after finds the waiter.
    let id = Mutex<Int?>(nil)
    return try await withTaskCancellationHandler {
      try await withCheckedThrowingContinuation { continuation in
        let resumeWith: Result<MetricsListenAddress, any Error>? = phase.withLock { phase in
          switch phase {
          case .listening(let bound): return .success(bound)
          case .failed(let error): return .failure(error)
          case .starting(var waiters, let next):
            if Task.isCancelled { return .failure(CancellationError()) }
            waiters[next] = continuation
            phase = .starting(waiters: waiters, next: next + 1)
            id.withLock { $0 = next }
            return nil
          }
        }
        if let resumeWith { continuation.resume(with: resumeWith) }
      }
    } onCancel: {
      let waiter = phase.withLock { phase -> CheckedContinuation<MetricsListenAddress, any Error>? in
        guard let id = id.withLock({ $0 }), case .starting(var waiters, let next) = phase,
          let waiter = waiters.removeValue(forKey: id)
        else {
          return nil
        }
        phase = .starting(waiters: waiters, next: next)
        return waiter
      }
      waiter?.resume(throwing: CancellationError())
    }
  }

  /// Binds, serves until graceful shutdown or cancellation, then returns. A bind failure is thrown (and given to
  /// `listening()` waiters) as a one-line `TidemarkError`.
  public func run() async throws {
    // `::` is dual-stack on Linux unless net.ipv6.bindv6only is set; a host without IPv6 refuses it outright.
    let hosts = address.host.isEmpty ? ["::", "0.0.0.0"] : [address.host]
    for (i, host) in hosts.enumerated() {
      do {
        try await serve(makeApplication(host: host))
        settle(.failure(CancellationError()))
        return
      } catch {
        if case .listening = phase.withLock({ $0 }) { throw error }
        if i + 1 < hosts.count, let errno = Self.errno(error), errno == EAFNOSUPPORT || errno == EADDRNOTAVAIL {
          continue
        }
        let reported = error is CancellationError ? error : bindError(error)
        settle(.failure(reported))
        throw reported
      }
    }
  }

  /// Runs `application` until graceful shutdown, turning cancellation into graceful shutdown too. Cancelling
  /// NIO's accept loop directly drops connections it has accepted but not yet handed over, and their
  /// NIOAsyncWriter traps on deinit (swift-nio #2637, #3481); a graceful shutdown closes the listening socket and
  /// drains those first. So the application runs in an unstructured task that our cancellation cannot reach.
  private func serve(_ application: some ApplicationProtocol) async throws {
    let group = ServiceGroup(
      configuration: .init(services: [application], gracefulShutdownSignals: [], logger: quietLogger))
    let serving = Task { try await group.run() }
    try await withTaskCancellationHandler {
      try await withGracefulShutdownHandler {
        try await serving.value
      } onGracefulShutdown: {
        Task { await group.triggerGracefulShutdown() }
      }
    } onCancel: {
      Task { await group.triggerGracefulShutdown() }
    }
  }

  /// Bind failures are thrown and the start is logged by the endpoint; at info Hummingbird would add a banner
  /// and its inner ServiceGroup an error line for the same failure, so its lines are for debugging only.
  private var quietLogger: Logger {
    var quiet = logger
    if quiet.logLevel > .debug { quiet.logLevel = .critical }
    return quiet
  }

  private func makeApplication(host: String) -> some ApplicationProtocol {
    let router = Router(context: BasicRequestContext.self)
    let render = self.render
    let health = self.health
    router.get("/metrics") { _, _ -> Response in
      let text = await render()
      return Response(
        status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
        body: .init(byteBuffer: ByteBuffer(string: text)))
    }
    router.get("/health") { _, _ -> Response in
      let (ok, body) = await health()
      return Response(
        status: ok ? .ok : .serviceUnavailable, headers: [.contentType: "application/json"],
        body: .init(byteBuffer: ByteBuffer(string: body)))
    }
    let logger = self.logger
    let setting = self.setting
    return Application(
      router: router,
      server: .http1(configuration: .init(idleTimeout: TimeAmount(idleTimeout))),
      configuration: .init(address: .hostname(host, port: address.port)),
      onServerRunning: { [weak self] channel in
        let bound = MetricsListenAddress(
          host: channel.localAddress?.ipAddress ?? host, port: channel.localAddress?.port ?? 0)
        logger.info("metrics endpoint listening", metadata: ["\(setting)": "\(bound)"])
        self?.settle(.success(bound))
      },
      logger: quietLogger)
  }

  /// Moves out of `.starting` once and wakes every waiter; later outcomes (shutdown after listening) are ignored.
  private func settle(_ outcome: Result<MetricsListenAddress, any Error>) {
    let waiters = phase.withLock { phase -> [CheckedContinuation<MetricsListenAddress, any Error>] in
      guard case .starting(let waiters, _) = phase else { return [] }
      switch outcome {
      case .success(let bound): phase = .listening(bound)
      case .failure(let error): phase = .failed(error)
      }
      return Array(waiters.values)
    }
    for waiter in waiters { waiter.resume(with: outcome) }
  }

  private func bindError(_ error: any Error) -> TidemarkError {
    let why: String
    if let errno = Self.errno(error) {
      why = String(cString: strerror(errno)).lowercased()
    } else if error is SocketAddressError {
      why = "cannot resolve the host"
    } else {
      why = "\(error)"
    }
    return TidemarkError(.general, "\(setting) \(address): \(why)")
  }

  private static func errno(_ error: any Error) -> Int32? {
    (error as? IOError)?.errnoCode
  }
}
