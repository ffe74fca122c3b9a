// Choosing snapshots as restic does, for every command that takes snapshot arguments (find, stats, copy, forget):
// the snapshots named (IDs, unique prefixes, `latest` of those matching the filters), in that order without
// repeats; or, when none is named, every snapshot matching the filters, oldest first. A name that matches nothing
// is skipped and reported; each command words the report as restic's does.
import Foundation
import TidemarkCore

/// restic's snapshot filter: any of the hosts, any of the tag lists (each `a,b` meaning all of a and b; `''` an
/// untagged snapshot), and all of the paths.
public struct SnapshotFilter: Sendable {
  public var hosts: [String]
  public var tags: [String]
  public var paths: [String]

  public init(hosts: [String], tags: [String], paths: [String]) {
    self.hosts = hosts
    self.tags = tags
    self.paths = paths
  }

  public var isEmpty: Bool { hosts.isEmpty && tags.isEmpty && paths.isEmpty }

  public func apply(_ s: [Snapshot]) -> [Snapshot] {
    let tagLists = tags.map(TagList.parse)
    return s.filter { $0.hasHostname(hosts) && $0.hasTagList(tagLists) && $0.hasPaths(paths) }
  }
}

public enum SnapshotSelection {
  /// Why a name was skipped, or that the filters were ignored.
  public enum Problem: Sendable, Equatable {
    /// `latest` with no snapshot passing the filters.
    case noLatest
    case notFound(String)
    case ambiguous(String)
    /// Snapshot names were given and `latest` was not among them: the filters played no part.
    case filtersIgnored
  }

  /// Go's `filepath.Abs`: `p` relative to the working directory, cleaned (`.` and `..` resolved by name).
  /// restic compares the `--path` of snapshot arguments in this form.
  public static func absolute(_ p: String) -> String {
    let full = p.hasPrefix("/") ? p : FileManager.default.currentDirectoryPath + "/" + p
    var parts: [Substring] = []
    for c in full.split(separator: "/") where c != "." {
      if c == ".." {
        if !parts.isEmpty { parts.removeLast() }
      } else {
        parts.append(c)
      }
    }
    return "/" + parts.joined(separator: "/")
  }

  /// `all` oldest first (as `listSnapshots` returns them).
  public static func select(_ all: [Snapshot], names: [String], filter: SnapshotFilter) -> (
    snapshots: [Snapshot], problems: [Problem]
  ) {
    if names.isEmpty { return (filter.apply(all), []) }
    var out: [Snapshot] = []
    var problems: [Problem] = []
    var taken = Set<SnapshotID>()
    for ref in names {
      let found: Snapshot
      if ref == "latest" {
        guard let s = filter.apply(all).last else {
          problems.append(.noLatest)
          continue
        }
        found = s
      } else {
        let matches = ref.isEmpty ? [] : all.filter { $0.id!.hex.hasPrefix(ref.lowercased()) }
        guard matches.count == 1 else {
          problems.append(matches.isEmpty ? .notFound(ref) : .ambiguous(ref))
          continue
        }
        found = matches[0]
      }
      if taken.insert(found.id!).inserted { out.append(found) }
    }
    if !names.contains("latest") && !filter.isEmpty { problems.append(.filtersIgnored) }
    return (out, problems)
  }
}
