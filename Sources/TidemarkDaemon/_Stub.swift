import Logging
import ServiceLifecycle

struct MetricsEndpoint: Service {
  static func bind(
    listen: String, logger: Logger, render: @escaping @Sendable () async -> String,
    health: @escaping @Sendable () async -> (Bool, String)
  ) throws -> MetricsEndpoint { MetricsEndpoint() }
  func run() async throws {}
}
