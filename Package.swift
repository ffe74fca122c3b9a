// swift-tools-version:6.0
// tidemark: disaster recovery on restic's repository format (v2).
// Layers, top to bottom (dependencies point down only):
//   tidemark (CLI: arguments and output) -> TidemarkDaemon (lifecycle, /metrics) -> TidemarkEngine (cycle, state,
//   drills, failover), TidemarkServe (the REST server) -> TidemarkOperations, TidemarkMount -> TidemarkBackends -> TidemarkCore -> wrappers -> C shims
import PackageDescription

let package = Package(
  name: "tidemark",
  products: [
    .executable(name: "tidemark", targets: ["tidemark"]),
    .library(name: "TidemarkCore", targets: ["TidemarkCore"]),
    .library(name: "TidemarkEngine", targets: ["TidemarkEngine"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
    .package(url: "https://github.com/apple/swift-nio", from: "2.100.0"),
    .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
    .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
    .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
    .package(url: "https://github.com/swiftlang/swift-subprocess", from: "1.0.0"),
    .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.5.0"),
    .package(url: "https://github.com/hummingbird-project/hummingbird-auth", from: "2.0.0"),
    .package(url: "https://github.com/apple/swift-system", from: "1.8.0"),
    .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.0"),
  ],
  targets: [
    // C shims: a module map and a header each, nothing else.
    .systemLibrary(
      name: "COpenSSL", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
    .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
    .systemLibrary(name: "CFuse3", pkgConfig: "fuse3", providers: [.apt(["libfuse3-dev"])]),
    .systemLibrary(name: "CSSH2", pkgConfig: "libssh2", providers: [.apt(["libssh2-1-dev"])]),
    .systemLibrary(name: "CPosix"),
    // Thin wrappers: the only importers of the C modules.
    .target(name: "TidemarkCrypto", dependencies: ["COpenSSL"]),
    .target(name: "TidemarkZstd", dependencies: ["CZstd"]),
    .target(name: "TidemarkFUSE", dependencies: ["CFuse3"]),
    .target(name: "TidemarkSSH", dependencies: ["CSSH2"]),
    .target(
      name: "TidemarkSystem", dependencies: ["CPosix", .product(name: "SystemPackage", package: "swift-system")]),
    // Format and repository core: never names a concrete backend.
    .target(name: "TidemarkCore", dependencies: ["TidemarkCrypto", "TidemarkZstd"]),
    .target(
      name: "TidemarkBackends",
      dependencies: [
        "TidemarkCore", "TidemarkSystem", "TidemarkSSH", "TidemarkCrypto",
        .product(name: "AsyncHTTPClient", package: "async-http-client"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOHTTP1", package: "swift-nio"),
        .product(name: "NIOSSL", package: "swift-nio-ssl"),
      ]),
    .target(
      name: "TidemarkOperations",
      dependencies: ["TidemarkCore", "TidemarkSystem"]),
    .target(name: "TidemarkMount", dependencies: ["TidemarkCore", "TidemarkFUSE", "TidemarkSystem"]),
    // The replication engine: configuration, state per configuration, the cycle as named steps, hooks, alerts,
    // database sources, drills, failover rules, schedules. Child processes through swift-subprocess.
    .target(
      name: "TidemarkEngine",
      dependencies: [
        "TidemarkCore", "TidemarkBackends", "TidemarkOperations", "TidemarkSystem",
        .product(name: "Yams", package: "Yams"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "Prometheus", package: "swift-prometheus"),
        .product(name: "Subprocess", package: "swift-subprocess"),
      ]),
    // The long-running side: the daemon's lifecycle (signals, reload, graceful stop) and its HTTP endpoint.
    .target(
      name: "TidemarkDaemon",
      dependencies: [
        "TidemarkEngine", "TidemarkCore", "TidemarkMount", "TidemarkFUSE", "TidemarkSystem",
        .product(name: "Logging", package: "swift-log"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        .product(name: "UnixSignals", package: "swift-service-lifecycle"),
        .product(name: "Hummingbird", package: "hummingbird"),
        .product(name: "NIOCore", package: "swift-nio"),
      ]),
    // The REST server: restic's REST backend protocol (v1 and v2) over local repository directories.
    .target(
      name: "TidemarkServe",
      dependencies: [
        "TidemarkCore", "TidemarkSystem", "TidemarkCrypto",
        .product(name: "Logging", package: "swift-log"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        .product(name: "Hummingbird", package: "hummingbird"),
        .product(name: "HummingbirdBcrypt", package: "hummingbird-auth"),
        .product(name: "HummingbirdTLS", package: "hummingbird"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOSSL", package: "swift-nio-ssl"),
        .product(name: "Prometheus", package: "swift-prometheus"),
      ]),
    .executableTarget(
      name: "tidemark",
      dependencies: [
        "TidemarkCore", "TidemarkBackends", "TidemarkOperations", "TidemarkSystem",
        "TidemarkFUSE", "TidemarkSSH", "TidemarkMount", "TidemarkCrypto", "TidemarkZstd", "TidemarkEngine",
        "TidemarkDaemon", "TidemarkServe",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ]),
    .testTarget(
      name: "TidemarkCoreTests",
      dependencies: [
        "TidemarkCore", "TidemarkCrypto", "TidemarkZstd", "TidemarkBackends", "TidemarkSystem", "TidemarkOperations",
        "TidemarkMount", .product(name: "NIOSSL", package: "swift-nio-ssl"),
      ],
      exclude: ["Fixtures"]),
    .testTarget(
      name: "TidemarkEngineTests",
      dependencies: [
        "TidemarkEngine", "TidemarkDaemon", "TidemarkCore", "TidemarkBackends", "TidemarkOperations", "TidemarkSystem",
        "TidemarkServe",
        .product(name: "HummingbirdBcrypt", package: "hummingbird-auth"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
      ]),
    .testTarget(
      name: "TidemarkIntegrationTests",
      dependencies: [
        "TidemarkCore", "TidemarkBackends", "TidemarkSystem", "TidemarkSSH", "TidemarkOperations", "TidemarkEngine",
        .product(name: "HummingbirdBcrypt", package: "hummingbird-auth"),
      ]),
  ]
)
