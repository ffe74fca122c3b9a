// Errors are values with a kind (which decides the exit code, mapped once in the CLI),
// a one-line message saying what is wrong, and a hint saying what to do.
import Foundation

public struct TidemarkError: Error, CustomStringConvertible, Sendable {
  public enum Kind: Sendable {
    case general
    /// Some source files could not be read; the snapshot was still written.
    case incompleteBackup
    case repositoryNotFound
    case locked
    case wrongPassword
    case interrupted
    case usage
    case corrupt
    case notFound
    case alreadyExists
    /// The storage could not be reached or the connection broke: worth retrying (RetryBackend does).
    case unavailable
  }

  public var kind: Kind
  public var message: String
  public var hint: String?

  public init(_ kind: Kind, _ message: String, hint: String? = nil) {
    self.kind = kind
    self.message = message
    self.hint = hint
  }

  public var description: String {
    if let hint { return "\(message); \(hint)" }
    return message
  }

  public static func corrupt(_ message: String, hint: String? = nil) -> TidemarkError {
    TidemarkError(.corrupt, message, hint: hint ?? "run `tidemark check --read-data` to see what is damaged")
  }
}

/// A backend reports a missing file with this error so callers can tell "absent" from "broken".
public struct BackendNotFound: Error, CustomStringConvertible, Sendable {
  public let handle: Handle
  public init(_ handle: Handle) { self.handle = handle }
  public var description: String { "\(handle) does not exist" }
}

/// A backend refused to remove a file because the storage keeps it until `until` (S3 Object Lock). The file is
/// still there, unchanged; callers plan around it and try again after the date.
public struct FileRetained: Error, CustomStringConvertible, Sendable {
  public let handle: Handle
  public let until: Date
  public init(_ handle: Handle, until: Date) {
    self.handle = handle
    self.until = until
  }
  public var description: String { "\(handle) is locked until \(UTCDate.format(until))" }
}
