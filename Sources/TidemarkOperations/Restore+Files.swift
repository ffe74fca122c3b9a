// Files: each file's decision turned into a job to write (or a count, in a dry run).
import TidemarkCore
import TidemarkSystem

extension Restore {
  /// Decides each file against the disk and queues a job for every one whose content must be written.
  /// The further names of a hard-linked file are set aside: they become links, not copies.
  func queueFiles(_ run: inout RunContext) async throws {
    var firstLink: [String: BytePath] = [:]
    let items = run.items
    let decided = try await decideFiles(items, real: run.real)
    for (k, item) in items.enumerated() {
      switch item.node.type {
      case .dir: continue
      case .file:
        let n = item.node
        let p = path(item.components)
        var isFirst = false
        if n.links > 1 && n.inode != 0 {
          let key = "\(n.deviceID):\(n.inode)"
          if let first = firstLink[key] {
            run.hardlinks.append((item, first))
            continue
          }
          firstLink[key] = p
          isFirst = true
        }
        state.withLock {
          $0.totalFiles += 1
          $0.totalBytes += Int64(n.size)
        }
        switch decided[k] {
        case .success(let decision):
          let queued = run.jobs.count
          await queueFile(item, at: p, decision, into: &run)
          if isFirst, run.jobs.count > queued, let job = run.jobs.last {
            if case .inplace = job.mode {} else { run.renewed.insert(p.bytes) }
          }
        case .failure(let error): fail("\(p): \(error)")
        }
      default:
        run.others.append(item)
      }
    }
  }

  /// Acts on one file's decision: lists and counts it, clears a directory in its way, and queues a job
  /// unless the file stays as it is. A file where nothing stood is written unnamed where the filesystem allows
  /// and linked at its path when complete; one that replaces another goes to a temp file renamed over it.
  func queueFile(_ item: Item, at p: BytePath, _ decision: FileDecision, into run: inout RunContext) async {
    let n = item.node
    var mode = FileMode.fresh
    var mask: [Bool]? = nil
    switch decision {
    case .skip:
      state.withLock { $0.filesUnchanged += 1 }
      return
    case .keep(let c):
      state.withLock {
        $0.filesUnchanged += 1
        $0.bytesReused += Int64(n.size)
      }
      if !c.isEmpty {
        note(c.code(".", "f"), item.components, size: Int64(n.size), action: "updated")
        run.keeps.append((item, c))
      }
      return
    case .blockedByDirectory:
      fail("\(p): a directory stands where the snapshot has a file; add --delete to replace it")
      return
    case .create:
      note(">f+++++++++", item.components, size: Int64(n.size), action: "created")
    case .replaceDirectory:
      note(">f+++++++++", item.components, size: Int64(n.size), action: "created")
      if !options.dryRun {
        do {
          _ = try await Blocking.run { try Sys.removeTree(p) }
        } catch {
          fail("\(p): cannot remove the directory in the way: \(error)")
          return
        }
      }
    case .update(let c, let m, let fetch, let reused):
      note(c.code(">", "f"), item.components, size: Int64(n.size), action: "updated")
      mode = m
      mask = fetch
      state.withLock { $0.bytesReused += reused }
    }
    // A file that replaces another on disk goes through a named temp file and a rename.
    var replacing = false
    if case .update = decision { replacing = true }
    if replacing {
      state.withLock { $0.filesUpdated += 1 }
    } else {
      state.withLock { $0.filesCreated += 1 }
    }
    let fetches = mask.map { $0.filter { $0 }.count } ?? (n.content ?? []).count
    let job = FileJob(
      item: item, path: p, temp: tempPath(p, item.components.last!), mode: mode, sparse: options.sparse,
      blobs: fetches, writeback: writeback, unnamedFiles: replacing ? nil : unnamedFiles)
    if let mask { run.fetchMask[ObjectIdentifier(job)] = mask }
    run.jobs.append(job)
  }

  /// A dry run reports the bytes it would fetch: the blobs of every queued file not found on disk.
  func countDryRunBytes(_ run: RunContext) {
    state.withLock { s in
      for job in run.jobs {
        let content = job.item.node.content ?? []
        let mask = run.fetchMask[ObjectIdentifier(job)]
        for (k, id) in content.enumerated() where mask?[k] ?? true {
          s.bytesRestored += Int64(repo.index.lookup(id)?.blob.plainLength ?? 0)
        }
      }
    }
  }
}
