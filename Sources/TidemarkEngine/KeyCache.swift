// The daemon's master keys by repository and password, in memory only: a cycle after the first opens the
// repository with the known key (the config must still decrypt with it and the key file must still exist)
// instead of deriving the password's key again (scrypt: a quarter to half a second per cycle). A reload empties it.
import Foundation
import Synchronization
import TidemarkCore

public final class KeyCache: Sendable {
  private let entries = Mutex<[String: Entry]>([:])
  struct Entry: Sendable {
    var key: MasterKey
    var keyID: KeyID?
  }

  public init() {}

  public func clear() { entries.withLock { $0 = [:] } }

  public func open(_ access: RepositoryAccess) async throws -> Repository {
    let tag = access.location + "\u{0}" + RawID.hash(try await access.password()).hex
    if let e = entries.withLock({ $0[tag] }), let id = e.keyID {
      do {
        let backend = try access.backend()
        if try await backend.exists(Handle(.key, id.hex)) {
          return try await Repository.open(backend: backend, key: e.key, keyID: id, compression: access.compression)
        }
      } catch {}
      entries.withLock { $0[tag] = nil }  // gone, re-created or unreachable: open the usual way
    }
    let repo = try await access.open()
    entries.withLock { $0[tag] = Entry(key: repo.key, keyID: repo.keyID) }
    return repo
  }
}
