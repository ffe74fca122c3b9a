// uid/gid ↔ name lookups, cached: listings and restores ask for the same few ids once per file.
import Foundation
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// uid/gid → name lookups, cached (getpwuid_r / getgrgid_r).
public final class NameCache: Sendable {
  private let users = Mutex<[UInt32: String]>([:])
  private let groups = Mutex<[UInt32: String]>([:])
  public init() {}

  public func user(_ uid: UInt32) -> String {
    if let n = users.withLock({ $0[uid] }) { return n }
    var pw = passwd()
    var res: UnsafeMutablePointer<passwd>? = nil
    var buf = [CChar](repeating: 0, count: 4096)
    var name = ""
    if getpwuid_r(uid, &pw, &buf, buf.count, &res) == 0, res != nil, let n = pw.pw_name { name = String(cString: n) }
    users.withLock { $0[uid] = name }
    return name
  }

  public func group(_ gid: UInt32) -> String {
    if let n = groups.withLock({ $0[gid] }) { return n }
    var gr = Glibc.group()
    var res: UnsafeMutablePointer<Glibc.group>? = nil
    var buf = [CChar](repeating: 0, count: 4096)
    var name = ""
    if getgrgid_r(gid, &gr, &buf, buf.count, &res) == 0, res != nil, let n = gr.gr_name { name = String(cString: n) }
    groups.withLock { $0[gid] = name }
    return name
  }

  private let uids = Mutex<[String: UInt32?]>([:])
  private let gids = Mutex<[String: UInt32?]>([:])

  /// The uid of a user name (cached, including "no such user": a restore asks once per file).
  public func uid(named name: String) -> UInt32? {
    guard !name.isEmpty else { return nil }
    if let known = uids.withLock({ $0[name] }) { return known }
    var pw = passwd()
    var res: UnsafeMutablePointer<passwd>? = nil
    var buf = [CChar](repeating: 0, count: 4096)
    let id: UInt32? = getpwnam_r(name, &pw, &buf, buf.count, &res) == 0 && res != nil ? pw.pw_uid : nil
    uids.withLock { $0[name] = .some(id) }
    return id
  }

  /// The gid of a group name (cached like `uid(named:)`).
  public func gid(named name: String) -> UInt32? {
    guard !name.isEmpty else { return nil }
    if let known = gids.withLock({ $0[name] }) { return known }
    var gr = Glibc.group()
    var res: UnsafeMutablePointer<Glibc.group>? = nil
    var buf = [CChar](repeating: 0, count: 4096)
    let id: UInt32? = getgrnam_r(name, &gr, &buf, buf.count, &res) == 0 && res != nil ? gr.gr_gid : nil
    gids.withLock { $0[name] = .some(id) }
    return id
  }
}
