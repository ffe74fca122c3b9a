// How the engine speaks: swift-log Loggers, one line per event. Two handlers: `console` for commands run by hand
// (info on standard output as plain lines, warnings and errors on standard error prefixed `tidemark:`), and
// `journal` for the daemon (every line on standard error with its level and metadata, as journald stores it).
// Lines are written with one write(2) each, so concurrent events never interleave within a line.
import Foundation
import Logging
import TidemarkSystem

public enum EngineLog {
  /// A logger for a command run by hand; `quiet` keeps only warnings and errors.
  public static func console(quiet: Bool) -> Logger {
    var l = Logger(label: "tidemark") { _ in ConsoleHandler() }
    l.logLevel = quiet ? .warning : .info
    return l
  }

  /// The daemon's logger: `<level> message key=value …`, on standard error.
  public static func journal(level: Logger.Level = .info) -> Logger {
    var l = Logger(label: "tidemark") { _ in JournalHandler() }
    l.logLevel = level
    return l
  }

  /// A logger that drops everything (tests, and engine parts called without one).
  public static let silent = Logger(label: "tidemark") { _ in SwiftLogNoOpLogHandler() }

  static func write(_ fd: Int32, _ s: String) { Sys.writeAll(fd: fd, Array(s.utf8)) }
}

struct ConsoleHandler: LogHandler {
  var metadata: Logger.Metadata = [:]
  var logLevel: Logger.Level = .info
  subscript(metadataKey key: String) -> Logger.Metadata.Value? {
    get { metadata[key] }
    set { metadata[key] = newValue }
  }

  func log(event: LogEvent) {
    if event.level >= .warning {
      EngineLog.write(2, "tidemark: \(event.message)\n")
    } else {
      EngineLog.write(1, "\(event.message)\n")
    }
  }
}

struct JournalHandler: LogHandler {
  var metadata: Logger.Metadata = [:]
  var logLevel: Logger.Level = .info
  subscript(metadataKey key: String) -> Logger.Metadata.Value? {
    get { metadata[key] }
    set { metadata[key] = newValue }
  }

  func log(event: LogEvent) {
    var line = "\(event.level.rawValue): \(event.message)"
    let all = metadata.merging(event.metadata ?? [:]) { $1 }
    for (k, v) in all.sorted(by: { $0.key < $1.key }) { line += " \(k)=\(v)" }
    EngineLog.write(2, line + "\n")
  }
}
