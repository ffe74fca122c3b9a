// The systemd units that run the cycles for one binary and configuration: the daemon (`tidemark.service`) or a
// oneshot cycle with a timer (`tidemark-replicate.service` and `.timer`, OnCalendar from the interval when it
// divides an hour, else every 5 minutes).
import Foundation
import TidemarkCore
import TidemarkSystem

public struct SystemdUnits: Sendable {
  public var binary: String
  public var config: String
  public var directory: String
  public var timer: Bool

  public init(binary: String, config: String, directory: String, timer: Bool) {
    self.binary = binary
    self.config = config
    self.directory = directory
    self.timer = timer
  }

  public var names: [String] {
    timer ? ["tidemark-replicate.service", "tidemark-replicate.timer"] : ["tidemark.service"]
  }

  /// The unit files for `parsed` (the configuration at `config`).
  public func files(_ parsed: EngineConfig) -> [(name: String, text: String)] {
    let minutes = Int(parsed.interval.components.seconds / 60)
    let calendar = minutes >= 1 && minutes <= 60 && 60 % minutes == 0 ? "*:0/\(minutes)" : "*:0/5"
    let common = "Wants=network-online.target\nAfter=network-online.target\n"
    if timer {
      return [
        (
          "tidemark-replicate.service",
          "[Unit]\nDescription=tidemark replication cycle\n\(common)\n[Service]\nType=oneshot\n"
            + "ExecStart=\(binary) replicate --once --config \(config)\n"
        ),
        (
          "tidemark-replicate.timer",
          "[Unit]\nDescription=tidemark replication cycle (\(calendar))\n\n[Timer]\nOnCalendar=\(calendar)\n"
            + "Persistent=true\nAccuracySec=1s\n\n[Install]\nWantedBy=timers.target\n"
        ),
      ]
    }
    return [
      (
        "tidemark.service",
        "[Unit]\nDescription=tidemark replication daemon\n\(common)\n[Service]\nType=simple\n"
          + "ExecStart=\(binary) daemon --config \(config)\nExecReload=/bin/kill -HUP $MAINPID\n"
          + "TimeoutStopSec=30min\nRestart=on-failure\nRestartSec=30s\n\n[Install]\nWantedBy=multi-user.target\n"
      )
    ]
  }

  /// Writes the units; returns their paths.
  public func install(_ parsed: EngineConfig) throws -> [String] {
    try Sys.mkdirAll(BytePath(directory), 0o755)
    var out: [String] = []
    for (name, text) in files(parsed) {
      let path = directory + "/" + name
      try Array(text.utf8).withUnsafeBytes { try Sys.writeAtomically(BytePath(path), $0, mode: 0o644) }
      out.append(path)
    }
    return out
  }

  /// Deletes the units that exist; returns their paths.
  public func remove() throws -> [String] {
    var out: [String] = []
    for name in names where FileManager.default.fileExists(atPath: directory + "/" + name) {
      try FileManager.default.removeItem(atPath: directory + "/" + name)
      out.append(directory + "/" + name)
    }
    return out
  }

  public func enable() async throws {
    try await Self.systemctl(["daemon-reload"])
    try await Self.systemctl(["enable", "--now", timer ? "tidemark-replicate.timer" : "tidemark.service"])
  }

  public func disable() async {
    try? await Self.systemctl(["disable", "--now", timer ? "tidemark-replicate.timer" : "tidemark.service"])
  }

  public static func systemctl(_ args: [String]) async throws {
    let r: ChildResult
    do {
      r = try await ChildProcess.run("/bin/systemctl", arguments: args, timeout: .seconds(300))
    } catch {
      throw TidemarkError(
        .general, "cannot run systemctl: \(error)", hint: "install the units with --no-enable and enable them by hand")
    }
    guard r.succeeded else {
      throw TidemarkError(
        .general,
        "systemctl \(args.joined(separator: " ")) failed (\(r.termination))"
          + (r.tail.isEmpty ? "" : ": \(r.tailSummary)"))
    }
  }
}
