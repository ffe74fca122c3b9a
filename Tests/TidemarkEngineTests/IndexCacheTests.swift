// The daemon's index between cycles: a cycle that succeeded hands its index to the next, which reads only the
// index files that appeared since; a failed cycle, an index file gone (consolidation, prune) or another
// repository mean reading the whole index again. Every way, the index holds exactly what the repository's
// index files name.
import Foundation
import Testing
import TidemarkBackends
import TidemarkCore
import TidemarkOperations
import TidemarkSystem

@testable import TidemarkEngine

@Suite struct IndexCacheTests {
  func backup(_ repo: Repository, _ src: String, _ round: Int) async throws {
    try Data("round \(round)\n".utf8).write(to: URL(fileURLWithPath: src + "/f\(round)"))
    var o = BackupOptions()
    o.paths = [BytePath(src)]
    o.host = "index-cache"
    _ = try await Backup(repository: repo, options: o).run()
  }

  @Test func onlyNewIndexFilesAreReadAfterASuccessfulCycle() async throws {
    let dir = FileManager.default.temporaryDirectory.path + "/tidemark-test-index-cache-\(UUID().uuidString.prefix(8))"
    defer { try? FileManager.default.removeItem(atPath: dir) }
    try FileManager.default.createDirectory(atPath: dir + "/src", withIntermediateDirectories: true)
    let password = Array("pw".utf8)
    let backend = LocalBackend(path: BytePath(dir + "/repo"))
    _ = try await Repository.initialize(backend: backend, password: password, kdf: (1024, 8, 1))
    func open() async throws -> Repository { try await Repository.open(backend: backend, password: password) }
    let cache = IndexCache()
    func blobs(_ r: Repository) -> Int { r.index.blobCount }
    func truth() async throws -> Int {
      let r = try await open()
      try await r.loadIndex()
      return blobs(r)
    }

    var repo = try await open()
    #expect(try await cache.load(repo, location: "a") == 0)
    try await backup(repo, dir + "/src", 1)
    cache.keep()
    // One cycle later: the kept index plus the one index file the backup wrote.
    repo = try await open()
    #expect(try await cache.load(repo, location: "a") == 1)
    #expect(blobs(repo) == (try await truth()))
    try await backup(repo, dir + "/src", 2)
    cache.keep()
    repo = try await open()
    #expect(try await cache.load(repo, location: "a") == 1)
    #expect(blobs(repo) == (try await truth()))
    // A failed cycle: everything is read again.
    cache.drop()
    repo = try await open()
    #expect(try await cache.load(repo, location: "a") == 2)
    cache.keep()
    // Another repository: read whole.
    repo = try await open()
    #expect(try await cache.load(repo, location: "b") == 2)
    cache.keep()
    // Index files replaced (consolidation): read whole, and the count matches what is stored.
    repo = try await open()
    _ = try await IndexConsolidation.run(repo, maxFiles: 1)
    repo = try await open()
    let files = try await backend.list(.index).count
    #expect(try await cache.load(repo, location: "b") == files)
    #expect(blobs(repo) == (try await truth()))
  }
}
