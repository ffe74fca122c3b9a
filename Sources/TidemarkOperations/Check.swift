// Check: is everything every snapshot needs there, intact, and where the index says?
//
// Structure (always): index files decode; every pack the index names exists with the size its entries imply;
// every snapshot loads; every tree reachable from a snapshot loads and decodes; every blob a tree names is in
// the index. With read-data (all packs, or a subset): each pack's SHA-256 equals its name, its header matches
// the index, and each blob decrypts, decompresses and hashes to its ID. Damaged packs are named together with
// the snapshots and paths that need their blobs. Packs the index does not name are reported, not errors
// (an interrupted backup leaves them; prune removes them), as restic does.
import Foundation
import Synchronization
import TidemarkCore

public struct CheckOptions: Sendable {
  public enum ReadData: Sendable, Equatable {
    case none
    case all
    /// restic's `n/m`: the packs whose first ID byte modulo m is n-1.
    case slice(n: Int, of: Int)
    /// A random share of the packs (0 < p <= 100).
    case percent(Double)
    /// Random packs until this many bytes.
    case bytes(Int)
  }
  public var readData: ReadData = .none
  public var checkUnused = false
  public init() {}

  /// `--read-data-subset` values: `n/m`, `x%`, or a size (`500M`, `2G`).
  public static func parseSubset(_ s: String) throws -> ReadData {
    if let slash = s.firstIndex(of: "/") {
      guard let n = Int(s[..<slash]), let m = Int(s[s.index(after: slash)...]), m >= 1, n >= 1, n <= m else {
        throw TidemarkError(.usage, "invalid --read-data-subset \(s)", hint: "write n/m with 1 <= n <= m, e.g. 2/7")
      }
      return .slice(n: n, of: m)
    }
    if s.hasSuffix("%") {
      guard let p = Double(s.dropLast()), p > 0, p <= 100 else {
        throw TidemarkError(.usage, "invalid --read-data-subset \(s)", hint: "a percentage in (0, 100], e.g. 10%")
      }
      return .percent(p)
    }
    let n = try PruneOptions.parseSize(s, what: "--read-data-subset")
    guard n > 0 else { throw TidemarkError(.usage, "--read-data-subset size must be positive") }
    return .bytes(n)
  }
}

public struct CheckReport: Sendable {
  /// Problems, one line each. Empty: the repository is fine.
  public var errors: [String] = []
  /// Harmless findings (packs no index names, unused blobs without --check-unused).
  public var notes: [String] = []
  public var snapshots = 0, trees = 0, packs = 0, indexFiles = 0
  public var packsRead = 0, bytesRead = 0
  /// Damaged packs and, for each, the snapshots and paths that need blobs from it.
  public var damaged: [(pack: PackID, reason: String, affected: [(snapshot: Snapshot, paths: [String])])] = []
}

/// The shared state of the read-data workers.
final class ReadState: Sendable {
  let queue: Mutex<ArraySlice<PackID>>
  let damage = Mutex<[(PackID, String, Set<BlobID>)]>([])
  let read = Mutex((0, 0))
  init(_ packs: [PackID]) { queue = Mutex(packs[...]) }
}

public enum Check {
  public typealias Progress = @Sendable (String) -> Void

  public static func run(_ repo: Repository, options: CheckOptions, progress: Progress = { _ in }) async throws
    -> CheckReport
  {
    var report = CheckReport()
    let errors = Mutex<[String]>([])
    @Sendable func fail(_ s: String) { errors.withLock { $0.append(s) } }

    progress("load indexes")
    let index = try await StoredIndex.load(repo, tolerant: true)
    report.indexFiles = index.files.count
    for b in index.broken { fail("index \(b.name.prefix(8)): \(b.error)") }
    for f in index.files { repo.index.add(f.file) }
    let packs = index.packs()

    progress("check all packs")
    var listed: [PackID: Int] = [:]
    for f in try await repo.backend.list(.pack) {
      if let id = PackID(hex: f.name) { listed[id] = f.size }
    }
    report.packs = listed.count
    for (id, blobs) in packs.sorted(by: { $0.key < $1.key }) {
      guard let size = listed[id] else {
        fail("pack \(id.hex): named by the index but missing from the repository")
        continue
      }
      let want = expectedPackSize(blobs)
      if size != want { fail("pack \(id.hex): the file has \(size) bytes, the index entries imply \(want)") }
    }
    let unindexed = listed.keys.filter { packs[$0] == nil }
    if !unindexed.isEmpty {
      report.notes.append(
        "\(unindexed.count) pack\(unindexed.count == 1 ? " is" : "s are") not named by any index (left by an interrupted backup?): harmless, `tidemark prune` removes them"
      )
    }

    progress("check snapshots, trees and blobs")
    var snapshots: [Snapshot] = []
    for f in try await repo.backend.list(.snapshot) {
      guard let id = SnapshotID(hex: f.name) else { continue }
      do {
        snapshots.append(try await repo.loadSnapshot(id))
      } catch {
        fail("snapshot \(id.short): \(error)")
      }
    }
    report.snapshots = snapshots.count
    let used = Mutex(Set<BlobID>())
    let trees = Mutex(0)
    try await walkTrees(
      repo, roots: snapshots.map(\.tree),
      failed: { id, error in
        if repo.index.has(id) {
          fail("tree \(id.hex): \(error)")
        } else {
          fail("tree \(id.hex): not in the index (missing)")
        }
      },
      visit: { id, tree in
        var missing: [String] = []
        var local: [BlobID] = [id]
        for n in tree.nodes {
          if let c = n.content {
            for b in c where !repo.index.has(b) {
              missing.append("tree \(id.short), file \(n.nameString): data blob \(b.hex) is not in the index")
            }
            local += c
          }
          if n.type == .dir && n.subtree == nil {
            missing.append("tree \(id.short), directory \(n.nameString) has no subtree")
          }
        }
        for m in missing { fail(m) }
        used.withLock { $0.formUnion(local) }
        trees.withLock { $0 += 1 }
      })
    report.trees = trees.withLock { $0 }
    let usedSet = used.withLock { $0 }
    var unused = 0
    index.forEachEntry { _, b in if !usedSet.contains(b.id) { unused += 1 } }
    if unused > 0 {
      if options.checkUnused {
        fail("\(unused) blobs in the index are not used by any snapshot")
      } else {
        report.notes.append("\(unused) blobs are not used by any snapshot (`tidemark prune` removes them)")
      }
    }

    // Read data.
    var selected: [PackID] = []
    let present = packs.keys.filter { listed[$0] != nil }.sorted()
    switch options.readData {
    case .none: break
    case .all: selected = present
    case .slice(let n, let m): selected = present.filter { Int($0.raw.bytes[0]) % m == n - 1 }
    case .percent(let p):
      let k = Int((Double(present.count) * p / 100).rounded(.up))
      selected = Array(present.shuffled().prefix(k))
    case .bytes(let limit):
      var total = 0
      for id in present.shuffled() {
        if total >= limit { break }
        selected.append(id)
        total += listed[id] ?? 0
      }
    }
    if !selected.isEmpty {
      progress("read \(selected.count) packs")
      let state = ReadState(selected)
      // Two workers, each reusing one pack buffer and one scratch buffer (fresh 16 MiB buffers per pack
      // cost page faults and zeroing: a third of the CPU time).
      await withTaskGroup(of: Void.self) { g in
        for _ in 0..<2 {
          g.addTask {
            var buffer: [UInt8] = []
            var scratch: [UInt8] = []
            while let id = state.queue.withLock({ $0.popFirst() }) {
              let (reason, bad, n) = await verifyPack(
                repo, id, blobs: packs[id] ?? [], buffer: &buffer, scratch: &scratch)
              state.read.withLock { $0 = ($0.0 + 1, $0.1 + n) }
              if let reason { state.damage.withLock { $0.append((id, reason, bad)) } }
            }
          }
        }
      }
      (report.packsRead, report.bytesRead) = state.read.withLock { $0 }
      let damaged = state.damage.withLock { $0 }
      for (id, reason, bad) in damaged.sorted(by: { $0.0 < $1.0 }) {
        fail("pack \(id.hex): \(reason)")
        let uses = await Find.uses(
          data: BlobSelector(ids: bad), trees: BlobSelector(ids: bad), in: snapshots, repo: repo)
        var affected: [(snapshot: Snapshot, paths: [String])] = []
        for s in snapshots {
          var seen = Set<[UInt8]>()
          let paths = uses.uses.filter { $0.snapshot == s.id && seen.insert($0.path).inserted }.map {
            String(decoding: $0.path, as: UTF8.self) + ($0.type == .tree && $0.path != [47] ? "/" : "")
          }
          if !paths.isEmpty { affected.append((s, paths)) }
        }
        report.damaged.append((id, reason, affected))
      }
    }
    report.errors = errors.withLock { $0 }
    return report
  }

  /// Reads one pack whole and verifies it. Returns the problem (nil when intact), the blobs that are
  /// damaged (all of the pack's when the damage cannot be pinned to blobs), and the bytes read.
  static func verifyPack(
    _ repo: Repository, _ id: PackID, blobs: [PackedBlob], buffer: inout [UInt8], scratch: inout [UInt8]
  ) async -> (String?, Set<BlobID>, Int) {
    let all = Set(blobs.map(\.id))
    var data: [UInt8]
    var reuse: [UInt8] = []
    swap(&reuse, &buffer)
    do {
      data = try await repo.backend.load(Handle(.pack, id.hex), offset: 0, length: 0, reusing: consume reuse)
    } catch {
      return ("cannot be read: \(error)", all, 0)
    }
    defer { buffer = data }
    let n = data.count
    var problems: [String] = []
    if RawID.hash(data) != id.raw { problems.append("content does not match its name (SHA-256)") }
    // The header, as stored, against the index.
    var header: [PackedBlob]? = nil
    if n >= 4 + MasterKey.overhead {
      let hlen = Int(data[n - 4]) | Int(data[n - 3]) << 8 | Int(data[n - 2]) << 16 | Int(data[n - 1]) << 24
      if hlen + 4 <= n, hlen >= MasterKey.overhead {
        let sealed = Array(data[(n - 4 - hlen)..<(n - 4)])
        if let plain = try? repo.key.open(sealed) { header = try? PackHeader.decode(plain) }
      }
    }
    if let header {
      if Set(header) != Set(blobs) { problems.append("its header does not match the index") }
    } else {
      problems.append("its header is damaged")
    }
    var bad = Set<BlobID>()
    for b in blobs {
      let end = Int(b.offset) + Int(b.length)
      guard end <= n else {
        bad.insert(b.id)
        continue
      }
      do {
        try data.withUnsafeMutableBytes { buf in
          try repo.decodeBlob(
            inPlace: UnsafeMutableRawBufferPointer(rebasing: buf[Int(b.offset)..<end]), b, pack: id,
            scratch: &scratch
          ) { _ in }
        }
      } catch {
        bad.insert(b.id)
      }
    }
    if !bad.isEmpty {
      problems.append(
        "\(bad.count) of \(blobs.count) blobs are damaged (\(bad.sorted().prefix(3).map(\.short).joined(separator: ", ")))"
      )
    }
    guard !problems.isEmpty else { return (nil, [], n) }
    return (problems.joined(separator: "; "), bad.isEmpty ? all : bad, n)
  }
}

extension CheckReport {
  /// The JSON summary `check --json` prints: counts, errors, notes, and each damaged pack with the snapshots and
  /// paths that need it, so a script can tell what to restore from elsewhere.
  public func json() -> [UInt8] {
    var w = JSONWriter()
    w.raw("{\"message_type\":\"summary\",\"ok\":\(errors.isEmpty),\"errors\":")
    w.stringArray(errors)
    w.raw(",\"notes\":")
    w.stringArray(notes)
    w.raw(",\"snapshots\":\(snapshots),\"trees\":\(trees),\"packs\":\(packs)")
    w.raw(",\"index_files\":\(indexFiles),\"packs_read\":\(packsRead),\"bytes_read\":\(bytesRead)")
    w.raw(",\"damaged_packs\":[")
    for (i, d) in damaged.enumerated() {
      if i > 0 { w.comma() }
      w.raw("{\"pack\":\"\(d.pack.hex)\",\"reason\":")
      w.string(d.reason)
      w.raw(",\"affected\":[")
      for (j, a) in d.affected.enumerated() {
        if j > 0 { w.comma() }
        w.raw("{\"snapshot\":\"\(a.snapshot.id!.hex)\",\"time\":\"\(a.snapshot.time.rfc3339Nano)\",\"paths\":")
        w.stringArray(a.paths)
        w.raw("}")
      }
      w.raw("]}")
    }
    w.raw("]}\n")
    return w.out
  }
}
