// swift-tools-version:6.0
// tidemark: disaster recovery on restic's repository format (v2).
// Layers, top to bottom (dependencies point down only):
//   tidemark (CLI) -> TidemarkOperations, TidemarkMount -> TidemarkBackends -> TidemarkCore -> wrappers -> C shims
import PackageDescription

let package = Package(
  name: "tidemark",
  products: [
    .executable(name: "tidemark", targets: ["tidemark"]),
    .library(name: "TidemarkCore", targets: ["TidemarkCore"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
    .package(url: "https://github.com/apple/swift-nio", from: "2.100.0"),
    .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
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
    .target(name: "TidemarkSystem", dependencies: ["CPosix"]),
    // Format and repository core: never names a concrete backend.
    .target(name: "TidemarkCore", dependencies: ["TidemarkCrypto", "TidemarkZstd"]),
    .target(
      name: "TidemarkBackends",
      dependencies: [
        "TidemarkCore", "TidemarkSystem", "TidemarkSSH", "TidemarkCrypto",
        .product(name: "AsyncHTTPClient", package: "async-http-client"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOHTTP1", package: "swift-nio"),
      ]),
    .target(
      name: "TidemarkOperations",
      dependencies: ["TidemarkCore", "TidemarkSystem", .product(name: "Yams", package: "Yams")]),
    .target(name: "TidemarkMount", dependencies: ["TidemarkCore", "TidemarkFUSE", "TidemarkSystem"]),
    .executableTarget(
      name: "tidemark",
      dependencies: [
        "TidemarkCore", "TidemarkBackends", "TidemarkOperations", "TidemarkSystem",
        "TidemarkFUSE", "TidemarkSSH", "TidemarkMount", "TidemarkCrypto",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ]),
    .testTarget(
      name: "TidemarkCoreTests",
      dependencies: [
        "TidemarkCore", "TidemarkCrypto", "TidemarkZstd", "TidemarkBackends", "TidemarkSystem", "TidemarkOperations",
        "TidemarkMount",
      ],
      exclude: ["Fixtures"]),
    .testTarget(
      name: "TidemarkIntegrationTests",
      dependencies: [
        "TidemarkCore", "TidemarkBackends", "TidemarkSystem", "TidemarkSSH", "TidemarkOperations",
      ]),
  ]
)
