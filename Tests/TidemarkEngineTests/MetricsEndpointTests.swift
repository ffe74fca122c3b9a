// MetricsEndpoint against hostile and ordinary clients on real sockets, in-process. Client sockets are plain
// Glibc calls with deadlines, run on threads of their own: a blocking call on the cooperative pool (two threads
// on a two-core host) could starve the endpoint's request handlers and turn a slow answer into a false failure.
// Every endpoint is stopped before its test returns.
import Foundation
import Glibc
import Logging
import ServiceLifecycle
import Synchronization
import Testing
import TidemarkCore
import TidemarkDaemon

@Suite struct MetricsEndpointTests {
  static let body = "# TYPE tidemark_cycles_total counter\ntidemark_cycles_total 3\n"
  static let quiet = Logger(label: "tidemark.test") { _ in SwiftLogNoOpLogHandler() }

  final class Flag: Sendable {
    let value: Atomic<Bool>
    init(_ value: Bool) { self.value = Atomic(value) }
  }

  static func endpoint(
    _ listen: String, idleTimeout: Duration = .seconds(5), healthy: Flag = Flag(true)
  ) throws -> MetricsEndpoint {
    try MetricsEndpoint(
      listen: listen, idleTimeout: idleTimeout, logger: quiet, render: { body },
      health: {
        healthy.value.load(ordering: .relaxed) ? (true, #"{"status":"ok"}"#) : (false, #"{"status":"failing"}"#)
      })
  }

  /// Runs `endpoint` in a task, hands `body` the bound address, then cancels the task and waits for it.
  static func serving(
    _ endpoint: MetricsEndpoint, _ body: (MetricsListenAddress) async throws -> Void
  ) async throws {
    let task = Task { try await endpoint.run() }
    do {
      try await body(try await endpoint.listening())
    } catch {
      task.cancel()
      _ = await task.result
      throw error
    }
    task.cancel()
    // Cancellation is a normal end for a Service: run() returns, it does not throw.
    try await task.value
  }

  @Test func silentClientsDoNotDelayAScrape() async throws {
    try await Self.serving(try Self.endpoint("127.0.0.1:0")) { bound in
      let silent = await Client.offPool { (0..<3).map { _ in Client.connect("127.0.0.1", bound.port) } }
      defer { silent.forEach { _ = close($0) } }
      #expect(silent.allSatisfy { $0 >= 0 })
      let start = ContinuousClock.now
      let response = await Client.get("127.0.0.1", bound.port, "/metrics", deadline: .seconds(1))
      #expect(ContinuousClock.now - start < .seconds(1))
      #expect(response?.status == 200)
      #expect(response?.body == Self.body)
      #expect(response?.header("content-type") == "text/plain; version=0.0.4; charset=utf-8")
    }
  }

  @Test func silentConnectionsAreClosedAfterTheIdleTimeout() async throws {
    try await Self.serving(try Self.endpoint("127.0.0.1:0", idleTimeout: .milliseconds(300))) { bound in
      let outcome = await Client.offPool { () -> (eof: Bool, after: Duration) in
        let fd = Client.connect("127.0.0.1", bound.port)
        defer { _ = close(fd) }
        _ = Client.send(fd, "GET /metr")  // half a request line, then nothing
        let start = ContinuousClock.now
        let (_, eof) = Client.receive(fd, deadline: start + .seconds(10))
        return (eof, ContinuousClock.now - start)
      }
      #expect(outcome.eof)
      #expect(outcome.after < .seconds(8))
    }
  }

  @Test func servesOverIPv6() async throws {
    try await Self.serving(try Self.endpoint("[::1]:0")) { bound in
      #expect(bound.host == "::1" && bound.port > 0)
      let response = await Client.get("::1", bound.port, "/metrics")
      #expect(response?.status == 200)
      #expect(response?.body == Self.body)
    }
  }

  @Test func allInterfacesTakeBothFamilies() async throws {
    try await Self.serving(try Self.endpoint(":0")) { bound in
      #expect(await Client.get("127.0.0.1", bound.port, "/metrics")?.body == Self.body)
      #expect(await Client.get("::1", bound.port, "/metrics")?.body == Self.body)
    }
  }

  @Test func resetClientsLeaveTheEndpointServing() async throws {
    try await Self.serving(try Self.endpoint("127.0.0.1:0")) { bound in
      let connected = await Client.offPool { () -> Int in
        var connected = 0
        for _ in 0..<50 {
          let fd = Client.connect("127.0.0.1", bound.port)
          guard fd >= 0 else { continue }
          connected += 1
          _ = Client.send(fd, "GET /metrics HT")
          var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
          _ = setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
          _ = close(fd)  // RST, not FIN
        }
        return connected
      }
      #expect(connected == 50)
      let response = await Client.get("127.0.0.1", bound.port, "/metrics")
      #expect(response?.status == 200 && response?.body == Self.body)
    }
  }

  /// Cancelling NIO's accept loop with accepted connections still queued traps in NIOAsyncWriter's deinit; the
  /// endpoint turns cancellation into a graceful shutdown, which drains them.
  @Test func cancellingWhileClientsConnectDoesNotTrap() async throws {
    for _ in 0..<5 {
      let endpoint = try Self.endpoint("127.0.0.1:0")
      let task = Task { try await endpoint.run() }
      let bound = try await endpoint.listening()
      async let storm: Void = Client.offPool {
        for _ in 0..<100 {
          let fd = Client.connect("127.0.0.1", bound.port)
          if fd < 0 { break }
          _ = Client.send(fd, "GET /metrics HTTP/1.1\r\n\r\n")
          _ = close(fd)
        }
      }
      try await Task.sleep(for: .milliseconds(5))
      task.cancel()
      try await task.value
      await storm
    }
  }

  @Test func healthAndUnknownPaths() async throws {
    let healthy = Flag(true)
    try await Self.serving(try Self.endpoint("127.0.0.1:0", healthy: healthy)) { bound in
      let ok = await Client.get("127.0.0.1", bound.port, "/health")
      #expect(ok?.status == 200 && ok?.body == #"{"status":"ok"}"#)
      #expect(ok?.header("content-type") == "application/json")
      healthy.value.store(false, ordering: .relaxed)
      let failing = await Client.get("127.0.0.1", bound.port, "/health")
      #expect(failing?.status == 503 && failing?.body == #"{"status":"failing"}"#)
      #expect(await Client.get("127.0.0.1", bound.port, "/")?.status == 404)
      #expect(await Client.get("127.0.0.1", bound.port, "/metrics/x")?.status == 404)
    }
  }

  @Test(arguments: [
    ("abc", "metrics.listen `abc` is not HOST:PORT (e.g. 127.0.0.1:9464 or [::1]:9464)"),
    ("", "metrics.listen `` is not HOST:PORT (e.g. 127.0.0.1:9464 or [::1]:9464)"),
    (
      "127.0.0.1:",
      "metrics.listen `127.0.0.1:` is not HOST:PORT (e.g. 127.0.0.1:9464 or [::1]:9464); the port must be 0-65535"
    ),
    (
      "127.0.0.1:70000",
      "metrics.listen `127.0.0.1:70000` is not HOST:PORT (e.g. 127.0.0.1:9464 or [::1]:9464); the port must be 0-65535"
    ),
    (
      "::1:9464",
      "metrics.listen `::1:9464` is not HOST:PORT (e.g. 127.0.0.1:9464 or [::1]:9464); put an IPv6 address in brackets"
    ),
    ("[::1:9464", "metrics.listen `[::1:9464` is not HOST:PORT (e.g. 127.0.0.1:9464 or [::1]:9464)"),
    (
      "[nope]:9464",
      "metrics.listen `[nope]:9464` is not HOST:PORT (e.g. 127.0.0.1:9464 or [::1]:9464); `nope` is not an IPv6 address"
    ),
    ("bad host:9464", "metrics.listen `bad host:9464` is not HOST:PORT (e.g. 127.0.0.1:9464 or [::1]:9464)"),
  ])
  func badListenStrings(input: String, message: String) {
    #expect(throws: (any Error).self) { try MetricsListenAddress(parsing: input) }
    do {
      _ = try MetricsListenAddress(parsing: input)
    } catch let error as TidemarkError {
      #expect(error.kind == .usage)
      #expect(error.description == message)
      #expect(!error.description.contains("\n"))
    } catch {
      Issue.record("unexpected \(error)")
    }
  }

  @Test func goodListenStrings() throws {
    #expect(try MetricsListenAddress(parsing: "127.0.0.1:9464") == .init(host: "127.0.0.1", port: 9464))
    #expect(try MetricsListenAddress(parsing: "[::1]:9464") == .init(host: "::1", port: 9464))
    #expect(try MetricsListenAddress(parsing: ":9464") == .init(host: "", port: 9464))
    #expect(try MetricsListenAddress(parsing: " localhost:9464 ") == .init(host: "127.0.0.1", port: 9464))
    #expect(try MetricsListenAddress(parsing: "metrics.example.org:80") == .init(host: "metrics.example.org", port: 80))
    #expect(try MetricsListenAddress(parsing: "[::1]:9464").description == "[::1]:9464")
    #expect(try MetricsListenAddress(parsing: ":9464").description == ":9464")
  }

  @Test func portInUseIsABindError() async throws {
    let (holder, port) = Client.listener()
    defer { _ = close(holder) }
    #expect(holder >= 0)
    let endpoint = try Self.endpoint("127.0.0.1:\(port)")
    async let waited: MetricsListenAddress = endpoint.listening()
    var thrown: (any Error)?
    do { try await endpoint.run() } catch { thrown = error }
    let expected = "metrics.listen 127.0.0.1:\(port): address already in use"
    #expect((thrown as? TidemarkError)?.description == expected)
    do {
      _ = try await waited
      Issue.record("listening() returned")
    } catch {
      #expect("\(error)" == expected)
    }
  }

  @Test func gracefulShutdownEndsRun() async throws {
    let endpoint = try Self.endpoint("127.0.0.1:0")
    let group = ServiceGroup(services: [endpoint], logger: Self.quiet)
    let task = Task { try await group.run() }
    let bound = try await endpoint.listening()
    #expect(await Client.get("127.0.0.1", bound.port, "/metrics")?.status == 200)
    await group.triggerGracefulShutdown()
    try await task.value
    #expect(await Client.offPool { Client.connect("127.0.0.1", bound.port) } < 0)
  }
}

/// Blocking socket calls with deadlines; `offPool` runs them on a thread that ends with them.
enum Client {
  struct Response: Sendable {
    var status: Int
    var head: String
    var body: String

    func header(_ name: String) -> String? {
      for line in head.split(separator: "\r\n").dropFirst() {
        let parts = line.split(separator: ":", maxSplits: 1)
        if parts.count == 2, parts[0].lowercased() == name {
          return parts[1].trimmingCharacters(in: .whitespaces)
        }
      }
      return nil
    }
  }

  static func offPool<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
      Thread { continuation.resume(returning: body()) }.start()
    }
  }

  /// A connected TCP socket to an IPv4 or IPv6 literal, or -1.
  static func connect(_ host: String, _ port: Int) -> Int32 {
    let v6 = host.contains(":")
    let fd = socket(v6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { return -1 }
    var timeout = timeval(tv_sec: 2, tv_usec: 0)
    _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    let rc: Int32
    if v6 {
      var addr = sockaddr_in6()
      addr.sin6_family = sa_family_t(AF_INET6)
      addr.sin6_port = UInt16(port).bigEndian
      _ = inet_pton(AF_INET6, host, &addr.sin6_addr)
      rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
          Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size))
        }
      }
    } else {
      var addr = sockaddr_in()
      addr.sin_family = sa_family_t(AF_INET)
      addr.sin_port = UInt16(port).bigEndian
      _ = inet_pton(AF_INET, host, &addr.sin_addr)
      rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
          Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
      }
    }
    if rc != 0 {
      _ = close(fd)
      return -1
    }
    return fd
  }

  /// A socket listening on 127.0.0.1 on an ephemeral port, and the port.
  static func listener() -> (Int32, Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let ok = withUnsafeMutablePointer(to: &addr) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        bind(fd, $0, length) == 0 && listen(fd, 4) == 0 && getsockname(fd, $0, &length) == 0
      }
    }
    return ok ? (fd, Int(UInt16(bigEndian: addr.sin_port))) : (-1, 0)
  }

  static func send(_ fd: Int32, _ text: String) -> Bool {
    let bytes = Array(text.utf8)
    return bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == bytes.count
  }

  /// Bytes read until end of stream or `deadline`, and whether the stream ended (a reset counts as an end).
  static func receive(_ fd: Int32, deadline: ContinuousClock.Instant, until done: ([UInt8]) -> Bool = { _ in false })
    -> ([UInt8], Bool)
  {
    var data: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while !done(data) {
      let left = deadline - .now
      guard left > .zero else { return (data, false) }
      var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
      let ms = Int32(left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1)
      let ready = poll(&pfd, 1, ms)
      if ready < 0 && errno == EINTR { continue }
      guard ready > 0 else { continue }
      let n = read(fd, &buffer, buffer.count)
      if n <= 0 { return (data, true) }
      data += buffer[0..<n]
    }
    return (data, false)
  }

  /// `GET path` with `Connection: close`; nil when no complete response came before the deadline.
  static func get(_ host: String, _ port: Int, _ path: String, deadline: Duration = .seconds(2)) async -> Response? {
    await offPool {
      let end = ContinuousClock.now + deadline
      let fd = connect(host, port)
      guard fd >= 0 else { return nil }
      defer { _ = close(fd) }
      guard send(fd, "GET \(path) HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n") else { return nil }
      let (data, _) = receive(fd, deadline: end) { data in parse(data) != nil }
      return parse(data)
    }
  }

  /// A complete response (head and Content-Length bytes of body), or nil.
  static func parse(_ data: [UInt8]) -> Response? {
    let text = String(decoding: data, as: UTF8.self)
    guard let split = text.range(of: "\r\n\r\n") else { return nil }
    let head = String(text[..<split.lowerBound])
    let body = String(text[split.upperBound...])
    let statusLine = head.prefix { $0 != "\r" }.split(separator: " ")
    guard statusLine.count >= 2, let status = Int(statusLine[1]) else { return nil }
    var response = Response(status: status, head: head, body: body)
    guard let length = response.header("content-length").flatMap(Int.init), body.utf8.count >= length else {
      return nil
    }
    response.body = String(decoding: body.utf8.prefix(length), as: UTF8.self)
    return response
  }
}
