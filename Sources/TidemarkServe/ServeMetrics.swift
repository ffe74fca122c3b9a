// `tidemark serve --prometheus`: what the server did, per repository, as Prometheus text on `GET /metrics`.
// rest-server's names and labels where it has them (`rest_server_blob_{read,write,delete}_total` and their
// `_bytes_total`, labelled user, repo and type); the repository label is its path below the served directory,
// `/`-joined. Every request is counted by repository, method and status code, so refused uploads (400, 403,
// 413, 507) and authentication failures show. Requests that were not authenticated, or whose path names no
// repository, are counted under repo "." (no repository can have that name) so that strangers cannot grow the
// number of series. The served directory's own repository, if it is one, is repo "" as in rest-server.
//
// Concurrency: one `PrometheusCollectorRegistry` for the server's life, shared by all requests (it is
// thread-safe; counters are atomics).
import Prometheus

/// Who may read `GET /metrics` when the server authenticates.
public enum ServeMetricsAccess: Sendable {
  /// The same users as the repositories (rest-server's default).
  case authenticated
  /// Anyone who can reach the port (`--prometheus-no-auth`).
  case open
}

final class ServeMetrics: Sendable {
  let access: ServeMetricsAccess
  private let registry = PrometheusCollectorRegistry()
  private let quota: Quota?

  init(access: ServeMetricsAccess, quota: Quota?) {
    self.access = access
    self.quota = quota
    if let quota {
      registry.makeGauge(
        descriptor: Self.name("tidemark_serve_max_size_bytes", "The most bytes all repositories may hold together")
      ).set(to: Double(quota.limit))
    }
  }

  enum Operation {
    case read, write, delete

    var name: String {
      switch self {
      case .read: "read"
      case .write: "write"
      case .delete: "delete"
      }
    }

    var help: (String, String) {
      switch self {
      case .read: ("Total number of blobs read", "Total number of bytes read from blobs")
      case .write: ("Total number of blobs written", "Total number of bytes written to blobs")
      case .delete: ("Total number of blobs deleted", "Total number of bytes of blobs deleted")
      }
    }
  }

  /// One request and its answer.
  func request(repo: String, method: String, status: Int) {
    registry.makeCounter(
      descriptor: Self.name(
        "tidemark_serve_requests_total", "Requests answered, by repository, method and status code"),
      labels: [("repo", repo), ("method", method), ("code", String(status))]
    ).increment()
  }

  /// A file of a repository read, written or deleted (`type`: data, keys, locks, snapshots, index, config, …).
  func blob(_ op: Operation, user: String, repo: String, type: String, bytes: Int64) {
    let labels = [("user", user), ("repo", repo), ("type", type)]
    let (countHelp, bytesHelp) = op.help
    registry.makeCounter(descriptor: Self.name("rest_server_blob_\(op.name)_total", countHelp), labels: labels)
      .increment()
    registry.makeCounter(descriptor: Self.name("rest_server_blob_\(op.name)_bytes_total", bytesHelp), labels: labels)
      .increment(by: bytes)
  }

  /// A whole metric name (no namespace or unit parts added) with its HELP text.
  private static func name(_ name: String, _ help: String) -> MetricNameDescriptor {
    MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
  }

  /// The exposition text (format 0.0.4).
  func render() -> [UInt8] {
    if let quota {
      registry.makeGauge(
        descriptor: Self.name("tidemark_serve_used_bytes", "Bytes the repositories hold, as counted for --max-size")
      ).set(to: Double(quota.current))
    }
    var out: [UInt8] = []
    registry.emit(into: &out)
    return out
  }
}
