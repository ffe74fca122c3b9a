// Bounded caches for the mount: blob plaintext (by bytes) and decoded trees (by count).
// A fetch in flight is shared: concurrent readers of one blob wait for the same fetch, readers of
// other blobs never wait on it.
import Synchronization
import TidemarkCore

final class LRU<Value: Sendable>: Sendable {
  private struct State {
    var values: [BlobID: (value: Value, cost: Int, tick: UInt64)] = [:]
    var loading: [BlobID: Task<Value, Error>] = [:]
    var tick: UInt64 = 0
    var cost = 0
  }
  private let state = Mutex(State())
  private let limit: Int
  private let costOf: @Sendable (Value) -> Int
  private let load: @Sendable (BlobID) async throws -> Value

  init(limit: Int, cost: @escaping @Sendable (Value) -> Int, load: @escaping @Sendable (BlobID) async throws -> Value) {
    self.limit = limit
    costOf = cost
    self.load = load
  }

  func get(_ id: BlobID) async throws -> Value {
    let task: Task<Value, Error> = state.withLock { s in
      s.tick += 1
      if let v = s.values[id] {
        s.values[id]!.tick = s.tick
        let value = v.value
        return Task { value }
      }
      if let t = s.loading[id] { return t }
      let load = self.load
      let t = Task { try await load(id) }
      s.loading[id] = t
      Task { await self.settle(id, t) }
      return t
    }
    return try await task.value
  }

  /// Starts fetching `id` unless it is cached or on its way.
  func prefetch(_ id: BlobID) {
    let start = state.withLock { s in s.values[id] == nil && s.loading[id] == nil }
    if start { Task { _ = try? await self.get(id) } }
  }

  private func settle(_ id: BlobID, _ t: Task<Value, Error>) async {
    let r = await t.result
    state.withLock { s in
      s.loading[id] = nil
      guard case .success(let v) = r else { return }
      let c = costOf(v)
      s.tick += 1
      if let old = s.values[id] { s.cost -= old.cost }
      s.values[id] = (v, c, s.tick)
      s.cost += c
      // Evict the least recently used until under the limit (the newest entry always stays).
      while s.cost > limit && s.values.count > 1 {
        guard let victim = s.values.min(by: { $0.value.tick < $1.value.tick }) else { break }
        s.cost -= victim.value.cost
        s.values[victim.key] = nil
      }
    }
  }
}

typealias BlobCache = LRU<[UInt8]>
typealias TreeCache = LRU<Tree>

extension LRU where Value == [UInt8] {
  convenience init(repository: Repository, limit: Int) {
    self.init(limit: limit, cost: { $0.count + 64 }, load: { try await repository.loadBlob($0) })
  }
}

extension LRU where Value == Tree {
  convenience init(repository: Repository, limit: Int) {
    self.init(limit: limit, cost: { _ in 1 }, load: { try await repository.loadTree($0) })
  }
}
