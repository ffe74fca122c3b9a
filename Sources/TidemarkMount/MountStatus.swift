// `.tidemark/status.json` in a mount: written by the mount (which snapshot each directory shows, where the mount
// shares its key), read by `restore PATH-IN-THE-MOUNT`. Reader and writer live here together.
import Foundation
import TidemarkCore
import TidemarkSystem

public enum MountStatus {
  public struct Resolved: Sendable {
    public var repository: String
    public var snapshot: String
    /// Components below the snapshot's root.
    public var path: [[UInt8]]
    /// Where the mount hands out the repository's master key (abstract socket), and the mount's process.
    public var keySocket: String? = nil
    public var pid: Int32? = nil
  }

  /// The mount a path lies in, and which snapshot and path inside it; nil when `arg` is not an existing path
  /// inside a tidemark mount (then it names a snapshot).
  ///
  /// nil when `arg` is not an existing path inside a tidemark mount (then it names a snapshot).
  public static func resolve(_ arg: String) throws -> Resolved? {
    guard arg.contains("/") else { return nil }
    let given = BytePath(arg).absolute()
    guard Sys.exists(given) else { return nil }
    // Resolve symlinks on the way (`latest`), but not the last component (it may be a link inside the snapshot).
    let comps = given.components
    guard let last = comps.last else { return nil }
    var parentBytes: [UInt8] = [47]
    for c in comps.dropLast() { parentBytes += (parentBytes == [47] ? [] : [47]) + c }
    guard let parent = Sys.realpath(BytePath(bytes: parentBytes)) else { return nil }
    let full = parent.appending(last).components
    for k in stride(from: full.count, through: 0, by: -1) {
      var root: [UInt8] = [47]
      for c in full[0..<k] { root += (root == [47] ? [] : [47]) + c }
      let status = BytePath(bytes: root).appending(Array(".tidemark".utf8)).appending(Array("status.json".utf8))
      guard Sys.exists(status) else { continue }
      let json = try JSON.parse(try Sys.readFile(status))
      guard json["tidemark_mount"] != nil, let repo = json["repository"]?.string,
        case .object(let snaps)? = json["snapshots"]
      else {
        throw TidemarkError(.general, "\(status.description) is not a tidemark mount status file")
      }
      var rel = Array(full[k...])
      // versions/<host>/<path…>/<version>: the version's name is its snapshot's directory in hosts/<host>/.
      if rel.first == Array("versions".utf8) {
        let host = rel.count > 1 ? String(decoding: rel[1], as: UTF8.self) : ""
        let version = rel.count > 3 ? String(decoding: rel[rel.count - 1], as: UTF8.self) : ""
        guard rel.count > 3, snaps["hosts/\(host)/\(version)"]?.string != nil else {
          throw TidemarkError(
            .usage, "\(arg) is a directory of versions, which spans many snapshots",
            hint:
              "give one of the versions in it, or the path in one snapshot, e.g. under \(BytePath(bytes: root).description)/hosts/\(host)/"
          )
        }
        rel = [Array("hosts".utf8), rel[1], rel[rel.count - 1]] + rel[2..<(rel.count - 1)]
      }
      // The longest snapshot directory that holds the path.
      var best: (Int, String)? = nil
      for (key, value) in snaps {
        let kc = Array(key.utf8).split(separator: 47).map(Array.init)
        guard kc.count <= rel.count, Array(rel[0..<kc.count]) == kc, let id = value.string else { continue }
        if best == nil || kc.count > best!.0 { best = (kc.count, id) }
      }
      guard let (n, id) = best else {
        throw TidemarkError(
          .usage, "\(arg) is in a tidemark mount but not inside a snapshot",
          hint: "give a path below a snapshot directory, e.g. \(BytePath(bytes: root).description)/snapshots/latest/..."
        )
      }
      return Resolved(
        repository: repo, snapshot: id, path: Array(rel[n...]), keySocket: json["key_socket"]?.string,
        pid: json["pid"]?.int.map { Int32(truncatingIfNeeded: $0) })
    }
    return nil
  }

  /// The status file a mount serves as `.tidemark/status.json`.
  static func json(_ repo: String, _ options: MountOptions, _ placed: [(String, Snapshot)]) -> [UInt8] {
    var w = JSONWriter()
    w.raw("{\"tidemark_mount\":1,\"repository\":")
    w.string(Array(repo.utf8))
    w.raw(",\"mountpoint\":")
    w.string(Array(options.mountpoint.utf8))
    w.raw(",\"pid\":\(getpid()),")
    if let socket = options.keySocket {
      w.raw("\"key_socket\":")
      w.string(Array(socket.utf8))
      w.raw(",")
    }
    w.raw("\"snapshots\":{")
    for (i, (path, s)) in placed.sorted(by: { $0.0 < $1.0 }).enumerated() {
      if i > 0 { w.raw(",") }
      w.string(Array(path.utf8))
      w.raw(":")
      w.string(Array(s.id!.hex.utf8))
    }
    w.raw("}}\n")
    return w.out
  }
}
