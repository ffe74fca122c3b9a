// Where a repository password comes from, in restic's order: a file, a command's output, the environment
// (TIDEMARK_<prefix>PASSWORD, then RESTIC_<prefix>PASSWORD). Prompting is the command line's business. A password
// command runs through ChildProcess (swift-subprocess), with its standard output captured and its standard input closed.
import Foundation
import TidemarkCore
import TidemarkSystem

public struct PasswordSource: Sendable {
  public var file: String?
  public var command: String?

  public init(file: String? = nil, command: String? = nil) {
    self.file = file
    self.command = command
  }

  /// TIDEMARK_NAME, else RESTIC_NAME (non-empty).
  public static func env(_ name: String, _ environment: [String: String] = ProcessInfo.processInfo.environment)
    -> String?
  {
    if let v = environment["TIDEMARK_" + name], !v.isEmpty { return v }
    if let v = environment["RESTIC_" + name], !v.isEmpty { return v }
    return nil
  }

  /// The password from the file, the command or the environment (`envPrefix` e.g. `FROM_`, `TARGET_`); nil when
  /// none of them gives one.
  public func lookup(envPrefix: String = "") async throws -> [UInt8]? {
    if let f = file ?? Self.env(envPrefix + "PASSWORD_FILE") {
      do {
        return Self.trimmed(try Sys.readFile(BytePath(f)))
      } catch {
        throw TidemarkError(.usage, "cannot read password file \(f): \(error)", hint: "check --password-file")
      }
    }
    if let c = command ?? Self.env(envPrefix + "PASSWORD_COMMAND") {
      let r = try await ChildProcess.shell(c, timeout: .seconds(300), captureStdout: 1 << 20)
      guard r.succeeded else {
        throw TidemarkError(
          .usage, "password command `\(c)` failed (\(r.timedOut ? "timed out" : "\(r.termination)"))")
      }
      return Self.trimmed(r.stdout)
    }
    if let v = Self.env(envPrefix + "PASSWORD") { return Array(v.utf8) }
    return nil
  }

  /// Like `lookup`, but no password is an error.
  public func read(envPrefix: String = "") async throws -> [UInt8] {
    guard let p = try await lookup(envPrefix: envPrefix) else {
      throw TidemarkError(
        .usage, "no password given",
        hint: "use --password-file, --password-command or TIDEMARK_PASSWORD (RESTIC_PASSWORD works too)")
    }
    return p
  }

  public static func trimmed(_ b: [UInt8]) -> [UInt8] {
    var b = b
    while let l = b.last, l == 10 || l == 13 || l == 32 || l == 9 { b.removeLast() }
    while let f = b.first, f == 32 || f == 9 { b.removeFirst() }
    return b
  }
}
