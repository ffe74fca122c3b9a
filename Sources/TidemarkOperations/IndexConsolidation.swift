// Index consolidation: merges many small index files into a few, so that opening a repository stays fast when
// every replication cycle adds one or more index files (288 a day at one cycle per five minutes).
//
// Contract:
// - The caller holds an exclusive lock on the repository (as for `Prune`): nothing else may add or remove index
//   files while the old ones are read and removed. Writes pass `repo.writeGate` (through `saveUnpacked`), and so
//   do the removals.
// - The new index files name every (pack, blob) entry of the files they replace, identical entries once; the same
//   blob in two packs keeps both entries (prune decides which copy stays). The first new file lists the replaced
//   ones in `supersedes`. The files are split by prune's rule (`IndexFile.maxBlobs` entries per file).
// - Order, restic's: every new index file is saved (atomically, by the backend) before the first old one is
//   removed. A crash in between leaves old and new files side by side, which only duplicates entries (restic
//   check calls that non-critical) and the next run merges them; at no instant does a pack lose its entry.
// - Index files the storage keeps until a date (S3 Object Lock) are neither merged nor counted.
// - Packs, snapshots and blobs are never touched; the in-memory `repo.index` stays valid (same entries).
import TidemarkCore

/// What one `IndexConsolidation.run` did.
public struct IndexConsolidationStats: Sendable {
  /// Index files in the repository before the run.
  public var indexFilesBefore = 0
  /// Index files read and replaced (0: the repository was within the bound and nothing was written).
  public var indexFilesMerged = 0
  public var indexFilesWritten = 0
  public var indexFilesRemoved = 0
  /// Packs and (pack, blob) entries in the new files.
  public var packs = 0
  public var entries = 0
  /// Entries dropped because another replaced file named the same blob at the same place in the same pack.
  public var duplicateEntries = 0
  public init() {}
}

public enum IndexConsolidation {
  /// The default bound: consolidate once more than 32 small index files have piled up. At one cycle per five
  /// minutes that is a merge every ~2.7 hours, each rewriting what those cycles added (small files: one
  /// encrypted file read per entry of the bound when opening). Far lower would rewrite (and make every replica
  /// see) a new index file nearly every cycle; far higher brings back the slow open this exists to avoid.
  public static let defaultMaxFiles = 32

  /// Merges the repository's small index files into as few as prune's size rule allows, when there are more
  /// than `maxFiles` of them; otherwise writes nothing. The caller holds an exclusive lock (see the top of this
  /// file); a crash or error at any point leaves a repository restic accepts.
  ///
  /// "Small" means holding fewer than `IndexFile.maxBlobs` entries. Full files are what a consolidation or prune
  /// writes anyway: rewriting them would gain nothing, and in a large repository (more full files than
  /// `maxFiles`) it would rewrite the whole index on every call. So they are neither counted against the bound
  /// nor merged; for any repository of fewer than `maxFiles × 50,000` blobs the bound is on all index files.
  public static func run(_ repo: Repository, maxFiles: Int = defaultMaxFiles) async throws
    -> IndexConsolidationStats
  {
    var st = IndexConsolidationStats()
    let listed = try await repo.backend.list(.index)
    st.indexFilesBefore = listed.count
    // Cheap test first: only a repository over the bound is read at all.
    guard listed.count > maxFiles else { return st }
    let index = try await StoredIndex.load(repo)
    var small = index.files.filter { f in f.file.packs.reduce(0) { $0 + $1.blobs.count } < IndexFile.maxBlobs }
    guard small.count > maxFiles else { return st }
    // Files the storage keeps until a date (S3 Object Lock) could be merged but not removed: merging them would
    // only add a file, at every run until the date. They are left out, and do not count against the bound.
    let retained = try await RetainedFiles.of(small.map { Handle(.index, $0.id.hex) }, in: repo.backend)
    small.removeAll { retained.contains(Handle(.index, $0.id.hex)) }
    guard small.count > maxFiles else { return st }

    // Per pack, every distinct entry in first-seen order; packs in the order the (sorted) files name them.
    var order: [PackID] = []
    var blobs: [PackID: [PackedBlob]] = [:]
    var seen: [PackID: Set<PackedBlob>] = [:]
    for f in small {
      for p in f.file.packs {
        if blobs[p.id] == nil {
          order.append(p.id)
          blobs[p.id] = []
        }
        for b in p.blobs {
          if seen[p.id, default: []].insert(b).inserted {
            blobs[p.id]!.append(b)
            st.entries += 1
          } else {
            st.duplicateEntries += 1
          }
        }
      }
    }
    st.packs = order.count
    st.indexFilesMerged = small.count
    let written = try await saveIndexFiles(
      repo, packs: order.map { ($0, blobs[$0]!) }, supersedes: small.map(\.id))
    st.indexFilesWritten = written.count
    // Only now, with every entry saved under a new name, may the old files go.
    try await repo.writeGate.pass()
    let stayed = try await Prune.removeAll(repo, .index, small.map(\.id.hex))
    st.indexFilesRemoved = small.count - stayed.count
    return st
  }
}

/// Saves `packs` as new index files, starting a new file once one holds `IndexFile.maxBlobs` entries (a pack is
/// never split); the first lists `supersedes`. Writes one (possibly empty) file even when `packs` is empty, so the
/// superseded IDs are recorded. Returns the IDs written, in order.
func saveIndexFiles(
  _ repo: Repository, packs: [(PackID, [PackedBlob])], supersedes: [IndexID]
) async throws -> [IndexID] {
  var file = IndexFile()
  file.supersedes = supersedes
  var count = 0
  var written: [IndexID] = []
  for (id, blobs) in packs {
    file.packs.append((id, blobs))
    count += blobs.count
    if count >= IndexFile.maxBlobs {
      written.append(IndexID(try await repo.saveUnpacked(.index, json: file.encode())))
      file = IndexFile()
      count = 0
    }
  }
  if !file.packs.isEmpty || written.isEmpty {
    written.append(IndexID(try await repo.saveUnpacked(.index, json: file.encode())))
  }
  return written
}
