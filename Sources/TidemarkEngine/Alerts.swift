// Where the engine's results go besides the state file: the metrics textfile, the Prometheus pushgateway, and
// alerts (alerts.command and alerts.webhook) on a failed cycle, an RPO breach, a failed drill or check.
// Delivery problems are logged and never fail the cycle. HTTP goes through AsyncHTTPClient (HTTPDelivery).
import Foundation
import Logging
import TidemarkBackends
import TidemarkCore
import TidemarkSystem

public struct Alerts: Sendable {
  public let config: EngineConfig
  public let logger: Logger

  public init(config: EngineConfig, logger: Logger) {
    self.config = config
    self.logger = logger
  }

  /// One alert: kind `failure`, `rpo`, `drill` or `check`; its message; the target it concerns.
  public struct Alert: Sendable {
    public var kind: String
    public var message: String
    public var target: String?
    public init(_ kind: String, _ message: String, target: String? = nil) {
      (self.kind, self.message, self.target) = (kind, message, target)
    }
  }

  /// The metrics textfile and the pushgateway, when configured.
  public func publishMetrics(_ text: String) async {
    if let path = config.metrics.textfile {
      do {
        try Array(text.utf8).withUnsafeBytes { try Sys.writeAtomically(BytePath(path), $0, mode: 0o644) }
      } catch {
        logger.warning("cannot write metrics to \(path): \(error)")
      }
    }
    if let gateway = config.metrics.pushgateway { await push(gateway, text) }
  }

  /// A failed cycle's failures, and an RPO breach per target (a target whose newest snapshot is older than
  /// alerts.rpo).
  public func raise(for state: EngineState, failures: [String], now: Double) async {
    var alerts = failures.map { Alert("failure", $0) }
    if let rpo = config.alerts.rpo {
      let limit = Double(rpo.components.seconds)
      for t in state.targets {
        let lag = t.newestSnapshotTime.map { now - $0 }
        if lag == nil || lag! > limit {
          let text = lag.map { "lag \(Int($0)) s exceeds the RPO of \(Int(limit)) s" } ?? "no snapshot replicated yet"
          alerts.append(Alert("rpo", "target \(t.name): \(text)", target: t.name))
        }
      }
    }
    await deliver(alerts)
  }

  /// Sends each alert to alerts.command (TIDEMARK_ALERT and TIDEMARK_ALERT_MESSAGE in its environment, the JSON
  /// body on stdin) and alerts.webhook (the JSON body by POST).
  public func deliver(_ alerts: [Alert]) async {
    guard config.alerts.command != nil || config.alerts.webhook != nil else { return }
    for a in alerts {
      var w = JSONWriter()
      w.raw("{\"alert\":\"\(a.kind)\",\"host\":")
      w.string(config.host ?? SystemInfo.hostname)
      w.raw(",\"repository\":")
      w.string(config.repository)
      if let t = a.target {
        w.raw(",\"target\":")
        w.string(t)
      }
      w.raw(",\"message\":")
      w.string(a.message)
      w.raw(",\"time\":\(Int(Date().timeIntervalSince1970))}")
      let body = w.out
      if let c = config.alerts.command {
        do {
          let r = try await ChildProcess.shell(
            c, environment: ["TIDEMARK_ALERT": a.kind, "TIDEMARK_ALERT_MESSAGE": a.message], input: body,
            timeout: .seconds(60))
          if !r.succeeded {
            logger.warning(
              "alert command \(r.timedOut ? "timed out" : "ended with \(r.termination)")\(r.tail.isEmpty ? "" : ": \(r.tailSummary)")"
            )
          }
        } catch {
          logger.warning("cannot run the alert command: \(error)")
        }
      }
      if let hook = config.alerts.webhook {
        do {
          let status = try await HTTPDelivery.send("POST", url: hook, body: body, contentType: "application/json")
          if !(200..<300).contains(status) { logger.warning("alert webhook answered HTTP \(status)") }
        } catch {
          logger.warning("alert webhook \(hook) failed: \(error)")
        }
      }
    }
  }

  /// PUTs the metrics to the Prometheus pushgateway (`<url>/metrics/job/tidemark/instance/<host>`), replacing
  /// what this instance pushed before.
  func push(_ gateway: String, _ body: String) async {
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
      if !(200..<300).contains(status) { logger.warning("pushgateway \(url) answered HTTP \(status)") }
    } catch {
      logger.warning("cannot push metrics: \(error)")
    }
  }
}
