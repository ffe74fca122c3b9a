// The Prometheus pushgateway: after every cycle, the cycle's metrics are PUT to the gateway.
import Foundation
import TidemarkBackends
import TidemarkCore

extension Cycle {
  /// PUTs the metrics to the Prometheus pushgateway (`<url>/metrics/job/tidemark/instance/<host>`), replacing
  /// what this instance pushed before. Failures go to stderr and never fail the cycle.
  func pushMetrics(_ gateway: String, _ body: String) async {
    var base = gateway
    while base.hasSuffix("/") { base.removeLast() }
    let host = config.host ?? SystemInfo.hostname
    // A label value in the path: percent-encoded, or base64url with the `@base64` suffix when it holds a slash.
    let instance: String
    if host.contains("/") || host.isEmpty {
      let b = Data(host.utf8).base64EncodedString().replacingOccurrences(of: "+", with: "-")
        .replacingOccurrences(of: "/", with: "_")
      instance = "instance@base64/" + (b.isEmpty ? "=" : b)
    } else {
      var allowed = CharacterSet.urlPathAllowed
      allowed.remove("/")
      instance = "instance/" + (host.addingPercentEncoding(withAllowedCharacters: allowed) ?? host)
    }
    let url = base + "/metrics/job/tidemark/" + instance
    do {
      let status = try await HTTPDelivery.send(
        "PUT", url: url, body: Array(body.utf8), contentType: "text/plain; version=0.0.4")
      if !(200..<300).contains(status) { Out.err("tidemark: pushgateway \(url) answered HTTP \(status)") }
    } catch {
      Out.err("tidemark: cannot push metrics: \(error)")
    }
  }
}
