// What a request path of restic's REST protocol names: a repository (its root), its config, the list of one file
// type, or one file. Repositories may sit below the served directory at any depth (`/alice/laptop/config`); a
// path component may not start with `.` (so neither `..` nor the server's `.htpasswd` or temporary files can be
// reached) and file names are 64 lowercase hex digits, the SHA-256 of the content.
import Foundation

/// The file types of a repository, each a directory of the repository (`data` with a subdirectory per first two
/// hex digits, as in restic's local layout). `tidemark` holds tidemark's own records (site role and fencing),
/// which restic ignores; its directory is made with its first file.
public enum RESTFileType: String, Sendable, CaseIterable {
  case data, keys, locks, snapshots, index, tidemark

  /// The directories a new repository gets.
  static let layout: [RESTFileType] = [.data, .keys, .locks, .snapshots, .index]
}

public enum RESTRoute: Equatable, Sendable {
  /// `/{repo}/` (POST `?create=true`).
  case repository(repo: [String])
  /// `/{repo}/config`.
  case config(repo: [String])
  /// `/{repo}/{type}/`.
  case list(repo: [String], type: RESTFileType)
  /// `/{repo}/{type}/{name}`.
  case file(repo: [String], type: RESTFileType, name: String)

  /// The repository's path below the served directory (empty: the served directory itself).
  public var repo: [String] {
    switch self {
    case .repository(let r), .config(let r), .list(let r, _), .file(let r, _, _): return r
    }
  }

  /// Parses the (percent-encoded) path of a request; nil when it names nothing the protocol knows.
  public init?(path: String) {
    guard path.hasPrefix("/") else { return nil }
    var parts: [String] = []
    for raw in path.split(separator: "/", omittingEmptySubsequences: true) {
      guard let part = String(raw).removingPercentEncoding, !part.isEmpty, !part.hasPrefix("."),
        !part.contains("/"), !part.contains("\0")
      else { return nil }
      parts.append(part)
    }
    func isReserved(_ p: String) -> Bool { p == "config" || RESTFileType(rawValue: p) != nil }
    if let last = parts.last, last == "config" {
      self = .config(repo: Array(parts.dropLast()))
    } else if let last = parts.last, let type = RESTFileType(rawValue: last) {
      self = .list(repo: Array(parts.dropLast()), type: type)
    } else if parts.count >= 2, let type = RESTFileType(rawValue: parts[parts.count - 2]),
      Self.isName(parts[parts.count - 1])
    {
      self = .file(repo: Array(parts.dropLast(2)), type: type, name: parts[parts.count - 1])
    } else {
      self = .repository(repo: parts)
    }
    // A repository named like a file type would make its own paths ambiguous.
    if repo.contains(where: isReserved) { return nil }
  }

  /// 64 lowercase hex digits.
  public static func isName(_ s: String) -> Bool {
    s.utf8.count == 64 && s.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
  }
}
