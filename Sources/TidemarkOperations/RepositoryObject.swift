// One object of the repository, decrypted, as `restic cat` shows it: the config, the master key, a key, lock,
// index or snapshot file, a pack as stored, a blob or a tree. Returns bytes; never prints.
import TidemarkCore

public enum RepositoryObject {
  /// An object's content and how it is shown.
  public enum Content: Sendable {
    /// A JSON document, shown indented.
    case json([UInt8])
    /// Text shown as stored, with a newline after it.
    case text([UInt8])
    /// Bytes written as they are.
    case binary([UInt8])
  }

  /// The object of `type` (config, masterkey, key, lock, snapshot, index, pack, blob, tree) that `id` names: a
  /// unique prefix of its file name, `latest` for a snapshot, a blob ID, or SNAPSHOT[:PATH] for a tree.
  public static func load(_ repo: Repository, type: String, id: String?) async throws -> Content {
    func need() throws -> String {
      guard let id else { throw TidemarkError(.usage, "cat \(type) needs an ID") }
      return id
    }
    switch type {
    case "config": return .json(repo.config.encode())
    case "masterkey": return .json(repo.key.json)
    case "key":
      let name = try await repo.resolve(.key, prefix: try need())
      return .json(try await repo.backend.load(Handle(.key, name)))
    case "lock", "index":
      let t: FileType = type == "lock" ? .lock : .index
      let name = try await repo.resolve(t, prefix: try need())
      return .text(try await repo.loadUnpacked(Handle(t, name)))
    case "snapshot": return .json(try await repo.findSnapshot(try need()).encode())
    case "pack":
      let name = try await repo.resolve(.pack, prefix: try need())
      return .binary(try await repo.backend.load(Handle(.pack, name)))
    case "blob", "tree":
      try await repo.loadIndex()
      var bid: BlobID? = BlobID(hex: try need())
      if type == "tree", bid == nil {
        let parts = try need().split(separator: ":", maxSplits: 1).map(String.init)
        let s = try await repo.findSnapshot(parts[0])
        bid = try await resolveDirectory(repo, s.tree, parts.count > 1 ? parts[1] : "")
      }
      guard let bid else { throw TidemarkError(.usage, "\(try need()) is not a blob ID (64 hex digits)") }
      return .binary(try await repo.loadBlob(bid))
    default:
      throw TidemarkError(
        .usage, "unknown type \(type)", hint: "use config, masterkey, key, lock, snapshot, index, pack, blob or tree")
    }
  }

  /// The directory at `path` (slash-separated, relative to `root`): its tree ID, for `cat tree SNAPSHOT:PATH`.
  static func resolveDirectory(_ repo: Repository, _ root: BlobID, _ path: String) async throws -> BlobID {
    var cur = root
    for comp in Array(path.utf8).split(separator: 47) {
      guard let n = try await repo.loadTree(cur).node(named: Array(comp)), let sub = n.subtree else {
        throw TidemarkError(.notFound, "no directory \(path) in the snapshot")
      }
      cur = sub
    }
    return cur
  }
}
