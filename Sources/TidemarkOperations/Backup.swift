// Backup: walk the given paths, chunk and store file contents, store one tree per directory, then the
// snapshot. Files unchanged since the parent snapshot (size, mtime, ctime, inode) reuse its content
// without being read. Work is pipelined: the walk runs ahead while files are read, chunked, hashed,
// compressed and encrypted concurrently; a semaphore bounds files in flight, and so memory.
// Ordering: packs, then index (BlobSaver.finish), then the snapshot.
import Foundation
import Synchronization
import TidemarkCore
import TidemarkSystem

public struct BackupOptions: Sendable {
  public var paths: [BytePath] = []
  public var host: String = SystemInfo.hostname
  public var tags: [String] = []
  public var excludes: [PathPattern] = []
  public var parent: SnapshotID? = nil
  public var force = false
  public var dryRun = false
  public var time: Timestamp? = nil
  /// Back up standard input as one file of this name.
  public var stdinFilename: String? = nil
  /// Where the --stdin content comes from (standard input by default; a command's output pipe in the engine).
  public var stdinFD: Int32 = 0
  public var programVersion = "tidemark"
  /// A change journal's report since the parent snapshot (which must be given as `parent`): only the directories
  /// it names are read again, the parent's subtrees are kept everywhere else. The result is the tree a full walk
  /// would give, or the backup throws `JournalDoubt` (a full walk is then needed).
  public var changes: ChangeJournal.Changes? = nil
  /// With `changes`: the parent snapshot's tree may hold files with more than one name (a hard link's other
  /// names are not in the directory where the journal saw the change). A full walk's result says so
  /// (`BackupResult.sawHardLinks`).
  public var treeMayHoldHardLinks = true
  public init() {}

  /// The options `backup`'s flags give: tags repeatable or comma-separated, the exclude patterns and those of the
  /// exclude files, `--time` (parseTime). Refuses paths that do not exist: a typo would make a snapshot that
  /// silently lacks them.
  public init(
    paths: [String], host: String?, tags: [String], excludes: [String], excludeFiles: [String], time: String?
  ) throws {
    self.paths = paths.map { BytePath($0) }
    if let host { self.host = host }
    self.tags = tags.flatMap { $0.split(separator: ",").map(String.init) }
    self.excludes = try (excludes + excludeFiles.flatMap(Self.readExcludeFile)).map(PathPattern.init)
    if let time { self.time = try Self.parseTime(time) }
    for p in self.paths where !Sys.exists(p) {
      throw TidemarkError(.usage, "\(p) does not exist", hint: "check the paths to back up")
    }
  }

  /// The patterns of an exclude file: one a line, blank lines and `#` comments skipped.
  public static func readExcludeFile(_ path: String) throws -> [String] {
    let text: [UInt8]
    do { text = try Sys.readFile(BytePath(path)) } catch {
      throw TidemarkError(.usage, "cannot read exclude file \(path): \(error)")
    }
    return String(decoding: text, as: UTF8.self).split(separator: "\n")
      .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty && !$0.hasPrefix("#") }
  }

  /// `--time`: "2006-01-02 15:04:05" (UTC unless a zone is given) or RFC 3339.
  public static func parseTime(_ text: String) throws -> Timestamp {
    let zone = text.contains("Z") || text.contains("+") ? "" : "Z"
    guard let t = Timestamp(rfc3339: text.replacingOccurrences(of: " ", with: "T") + zone) else {
      throw TidemarkError(.usage, "invalid --time \(text)", hint: "use \"2006-01-02 15:04:05\"")
    }
    return t
  }
}

public struct BackupStats: Sendable {
  public var filesNew = 0, filesChanged = 0, filesUnmodified = 0
  public var dirsNew = 0, dirsChanged = 0, dirsUnmodified = 0
  public var filesDone = 0
  public var bytesDone: Int64 = 0
  public var totalFiles = 0
  public var totalBytes: Int64 = 0
  public var scanFinished = false
  public var errors: [String] = []
  public var currentFiles: Set<String> = []

  /// restic's `backup --json` progress line after `seconds` with `percent` (0…1) done.
  public func statusJSON(seconds: Int, percent: Double) -> String {
    "{\"message_type\":\"status\",\"seconds_elapsed\":\(seconds),\"percent_done\":\(percent),\"total_files\":\(totalFiles),\"files_done\":\(filesDone),\"total_bytes\":\(totalBytes),\"bytes_done\":\(bytesDone),\"error_count\":\(errors.count)}"
  }
}

public struct BackupResult: Sendable {
  public var snapshotID: SnapshotID?
  public var snapshot: Snapshot
  public var stats: BackupStats
  public var saver: BlobSaverStats
  public var duration: Double
  public var parent: SnapshotID?
  /// The backup read at least one regular file with more than one name.
  public var sawHardLinks = false
  /// The backup was driven by a change journal (it did not walk the whole tree).
  public var fromJournal = false

  /// restic's `backup --json` closing lines: one error message per unreadable file, then the summary.
  public var summaryJSON: [String] {
    let s = stats
    return s.errors.map { e in
      var w = JSONWriter()
      w.string(e)
      return
        "{\"message_type\":\"error\",\"error\":{\"message\":\(String(decoding: w.out, as: UTF8.self))},\"during\":\"archival\"}"
    } + [
      "{\"message_type\":\"summary\",\"files_new\":\(s.filesNew),\"files_changed\":\(s.filesChanged),\"files_unmodified\":\(s.filesUnmodified),\"dirs_new\":\(s.dirsNew),\"dirs_changed\":\(s.dirsChanged),\"dirs_unmodified\":\(s.dirsUnmodified),\"data_blobs\":\(saver.blobsAdded[0]),\"tree_blobs\":\(saver.blobsAdded[1]),\"data_added\":\(saver.bytesAdded),\"data_added_packed\":\(saver.bytesStored),\"total_files_processed\":\(s.filesDone),\"total_bytes_processed\":\(s.totalBytes),\"total_duration\":\(duration),\"snapshot_id\":\"\(snapshotID?.short ?? "")\"\(snapshotID.map { ",\"id\":\"\($0.hex)\"" } ?? "")}"
    ]
  }
}

public final class Backup: Sendable {
  let repo: Repository
  let options: BackupOptions
  let saver: BlobSaver
  let names = NameCache()
  let filePermits: AsyncSemaphore
  /// Files of more than one chunk hold a read buffer: fewer of them run at once.
  let largeFilePermits: AsyncSemaphore
  let chunkPermits: AsyncSemaphore
  /// Chunks on their way to the saver, reused so that every chunk does not fault in fresh pages: any chunk, up to
  /// the chunker's largest (buffers of chunks over 2 MiB, freed, were a third of a media backup's page faults).
  let chunkBuffers: BufferPool
  /// A small-file batch's read and sealing buffers (two per batch in flight).
  let batchBuffers: BufferPool
  let state = Mutex(BackupStats())
  let readBuffers = Mutex<[ReadBuffer]>([])
  /// Large files' stretches the page cache does not hold are read with O_DIRECT (see `DirectReader`).
  let directReads = DirectReader(minimum: 1 << 20)
  let journal: JournalPlan?
  let sawHardLinks = Atomic<Bool>(false)
  /// The first name read of each hard-linked file (too large to batch): its reading, and what `lstat` said
  /// before it. A further name with the same size and times is the same file, unchanged: it takes that content
  /// instead of reading the file again.
  /// An entry goes once all the file's other names took its content.
  let hardLinkReads = Mutex<[HardLinkKey: (seen: Node, read: Task<Node?, Error>, left: UInt64)]>([:])
  /// Small files waiting for their batch to fill (see Backup+SmallFiles.swift).
  let batch = Mutex(SmallFileBatch())
  /// Subdirectories walked beside the main walk: without them the walk is one chain of directory listings,
  /// one after the other, while the other cores wait for it.
  let sideWalks: AsyncSemaphore
  let sideWalkLimit: Int
  /// Directories kept open while their small files wait in batches, so that a batch opens each file by its
  /// name in its open directory. A few hundred: a batch in flight spans a few dozen directories at most.
  let openDirectories = DescriptorBudget(256)

  public init(repository: Repository, options: BackupOptions) {
    repo = repository
    self.options = options
    saver = BlobSaver(repository: repository)
    let cores = max(1, ProcessInfo.processInfo.activeProcessorCount)
    filePermits = AsyncSemaphore(cores + 2)
    largeFilePermits = AsyncSemaphore(cores)
    chunkPermits = AsyncSemaphore(cores)
    chunkBuffers = BufferPool(keep: cores, largest: 9 << 20)
    batchBuffers = BufferPool(keep: 2 * (cores + 2))
    sideWalkLimit = cores
    sideWalks = AsyncSemaphore(cores)
    journal = options.changes.map { JournalPlan($0, hardLinks: options.treeMayHoldHardLinks) }
  }

  public var stats: BackupStats { state.withLock { $0 } }

  func warn(_ msg: String) { state.withLock { $0.errors.append(msg) } }

  // MARK: Running

  public func run() async throws -> BackupResult {
    let start = ContinuousClock.now
    let parentID = try await findParent()
    var parentTree: Tree? = nil
    if let parentID {
      let parentSnapshot = try await repo.loadSnapshot(parentID)
      if let journal {
        try journal.check(parent: parentSnapshot, options: options)
      }
      parentTree = try await repo.loadTree(parentSnapshot.tree)
    } else if journal != nil {
      throw JournalDoubt(reason: "there is no parent snapshot")
    }
    var tree: Tree
    let paths: [String]
    if let name = options.stdinFilename {
      tree = Tree(nodes: [try await stdinNode(name)])
      paths = ["/" + name]
    } else {
      let roots = options.paths.map { $0.absolute() }
      paths = roots.map(\.description)
      do {
        tree = try await rootTree(parentTree: parentTree)
      } catch let e as JournalDoubt {
        // What was stored so far is indexed, so that the full walk that follows finds it.
        try await saver.finish()
        throw e
      }
    }
    tree.sort()
    let treeID = try await saveTree(tree)
    try await saver.finish()
    var snap = Snapshot(time: options.time ?? .now(), tree: treeID, paths: paths)
    snap.parent = parentID
    snap.hostname = options.host
    snap.username = SystemInfo.username
    snap.uid = getuid()
    snap.gid = getgid()
    snap.tags = options.tags
    snap.excludes = options.excludes.map(\.text)
    snap.programVersion = options.programVersion
    var id: SnapshotID? = nil
    if !options.dryRun { id = try await repo.saveSnapshot(snap) }
    snap.id = id
    let d = ContinuousClock.now - start
    return BackupResult(
      snapshotID: id, snapshot: snap, stats: stats, saver: saver.stats,
      duration: d.inSeconds, parent: parentID,
      sawHardLinks: sawHardLinks.load(ordering: .relaxed), fromJournal: journal != nil)
  }

  func findParent() async throws -> SnapshotID? {
    if options.force { return nil }
    if let p = options.parent { return p }
    guard options.stdinFilename == nil else { return nil }
    let want = Set(options.paths.map { $0.absolute().description })
    let all = try await repo.listSnapshots()
    return all.last { $0.hostname == options.host && Set($0.paths) == want }?.id
  }

  func saveTree(_ t: Tree) async throws -> BlobID {
    let data = t.encode()
    let id = BlobID(RawID.hash(data))
    if !options.dryRun { try await saver.save(.tree, data, id: id) }
    return id
  }

  // MARK: The root: one directory node per path component, as restic builds it

  /// A node of the virtual tree above the backed-up paths.
  final class VDir: @unchecked Sendable {
    var path: BytePath
    var children: [[UInt8]: VDir] = [:]
    var isTarget = false
    init(path: BytePath) { self.path = path }
  }

  func rootTree(parentTree: Tree?) async throws -> Tree {
    let root = VDir(path: BytePath("/"))
    for p in options.paths {
      let given = p.bytes
      let relative = !p.isAbsolute && !p.components.contains([46, 46])
      let abs = p.absolute()
      var comps = relative ? BytePath(bytes: given).components.filter { $0 != [46] } : abs.components
      if comps.isEmpty { comps = abs.components }
      // Real paths of each component: the last `comps.count` components of the absolute path.
      let absComps = abs.components
      var cur = root
      for (i, c) in comps.enumerated() {
        let real = BytePath(
          bytes: [47] + Array(absComps[0..<(absComps.count - comps.count + i + 1)].joined(separator: [47])))
        if let next = cur.children[c] {
          cur = next
        } else {
          let next = VDir(path: real)
          cur.children[c] = next
          cur = next
        }
      }
      cur.isTarget = true
    }
    let pending: [PendingNode]
    do {
      pending = try await virtualChildren(root, parentTree: parentTree)
      await sideWalksFinished()
      await flushBatch()
    } catch {
      await sideWalksFinished()
      abandonBatch(error)
      throw error
    }
    var nodes: [Node] = []
    for p in pending { if let n = try await p.value { nodes.append(n) } }
    return Tree(nodes: nodes)
  }

  func virtualChildren(_ v: VDir, parentTree: Tree?) async throws -> [PendingNode] {
    var out: [PendingNode] = []
    for (name, child) in v.children.sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) {
      let pnode = parentTree?.node(named: name)
      let st: FileStat
      do {
        st = try await Blocking.run { [path = child.path] in try Sys.lstat(path) }
      } catch {
        warn("\(child.path): \(error)")
        continue
      }
      if child.isTarget {
        out.append(
          try await entry(path: child.path, name: name, stat: st, parentNode: pnode, journal: journal != nil))
      } else {
        // An intermediate directory: its own metadata, and only the listed children.
        let path = child.path
        var node = try await Blocking.run { [names] in try Node.from(path: path, name: name, stat: st, names: names) }
        var ptree: Tree? = nil
        if let sub = pnode?.subtree { ptree = try? await repo.loadTree(sub) }
        let kids = try await virtualChildren(child, parentTree: ptree)
        let task = Task<Node?, Error> {
          var t = Tree()
          for k in kids { if let n = try await k.value { t.nodes.append(n) } }
          t.sort()
          node.subtree = try await self.saveTree(t)
          return node
        }
        out.append(.task(task))
      }
    }
    return out
  }

  // MARK: The walk

  enum PendingNode: Sendable {
    case ready(Node?)
    case task(Task<Node?, Error>)
    /// The file at this index of a small-file batch.
    case batched(Promise<[Node?]>, Int)
    var value: Node? {
      get async throws {
        switch self {
        case .ready(let n): return n
        case .task(let t): return try await t.value
        case .batched(let p, let i): return try await p.value[i]
        }
      }
    }
  }

  func excluded(_ path: BytePath) -> Bool {
    guard !options.excludes.isEmpty else { return false }
    let comps = path.components
    return options.excludes.contains { $0.matches(comps) }
  }

  /// Starts backing up one filesystem entry; returns its node now or a task that yields it.
  func entry(
    path: BytePath, name: [UInt8], stat st: FileStat, parentNode: Node?, node prebuilt: Node? = nil,
    journal: Bool = false, in dir: OpenDirectory? = nil, listed: Listing? = nil
  ) async throws -> PendingNode {
    let node: Node
    if let prebuilt {
      node = prebuilt
    } else {
      do {
        node = try await Blocking.run { [names] in try Node.from(path: path, name: name, stat: st, names: names) }
      } catch {
        warn("\(path): \(error)")
        return .ready(nil)
      }
    }
    switch node.type {
    case .dir:
      if journal, let plan = self.journal {
        return try await journalDirectory(path: path, node: node, parentNode: parentNode, plan: plan)
      }
      return try await directory(path: path, node: node, parentNode: parentNode, listed: listed)
    case .file:
      return try await file(path: path, node: node, parentNode: parentNode, in: dir)
    default:
      return .ready(node)
    }
  }

  func file(path: BytePath, node: Node, parentNode: Node?, in dir: OpenDirectory? = nil) async throws -> PendingNode {
    var node = node
    state.withLock {
      $0.totalFiles += 1
      $0.totalBytes += Int64(node.size)
    }
    let unchanged =
      parentNode.map { p in
        p.type == .file && p.size == node.size && p.mtime == node.mtime && p.ctime == node.ctime
          && p.inode == node.inode
      } ?? false
    if node.links > 1 {
      sawHardLinks.store(true, ordering: .relaxed)
      // Its other names are in directories the journal may not have seen change.
      if journal != nil && !unchanged {
        throw JournalDoubt(reason: "\(path) has \(node.links) names and changed")
      }
    }
    if unchanged, let p = parentNode, let content = p.content, content.allSatisfy({ repo.index.has($0) }) {
      node.content = content
      state.withLock {
        $0.filesUnmodified += 1
        $0.filesDone += 1
        $0.bytesDone += Int64(node.size)
      }
      return .ready(node)
    }
    let isNew = parentNode == nil
    // Empty files are opened too: an unreadable empty file is an error like any other.
    if Backup.batches(node) { return await batched(path: path, node: node, isNew: isNew, in: dir) }
    await filePermits.acquire()
    let start = { [node] in
      Task<Node?, Error> {
        defer { self.filePermits.release() }
        return try await self.read(path: path, node: node, isNew: isNew)
      }
    }
    guard node.links > 1 && node.inode != 0 else { return .task(start()) }
    // Looked up and recorded in one step: of names walked at once in different directories, one reads.
    let key = HardLinkKey(device: node.deviceID, inode: node.inode)
    let (task, reused) = hardLinkReads.withLock { reads -> (Task<Node?, Error>, Bool) in
      if let f = reads[key] {
        if f.seen.size == node.size && f.seen.mtime == node.mtime && f.seen.ctime == node.ctime {
          if f.left <= 1 { reads[key] = nil } else { reads[key]?.left -= 1 }
          return (f.read, true)
        }
        return (start(), false)
      }
      let t = start()
      reads[key] = (node, t, node.links - 1)
      return (t, false)
    }
    guard reused else { return .task(task) }
    filePermits.release()
    return .task(sameContent(as: task, path: path, node: node, isNew: isNew))
  }

  /// A further name of a hard-linked file read under another name in this backup, with the same size and
  /// times: the content of that read. When that read failed, this name is read itself.
  func sameContent(as first: Task<Node?, Error>, path: BytePath, node: Node, isNew: Bool) -> Task<Node?, Error> {
    Task {
      var node = node
      if let read = try? await first.value, let content = read.content {
        node.content = content
        node.size = read.size
        self.countDone(isNew: isNew, bytes: Int64(read.size))
        return node
      }
      await self.filePermits.acquire()
      defer { self.filePermits.release() }
      return try await self.read(path: path, node: node, isNew: isNew)
    }
  }

  /// Reads and stores one file's content (holding a file permit); nil, with a warning, when it cannot be read.
  func read(path: BytePath, node: Node, isNew: Bool) async throws -> Node? {
    var node = node
    state.withLock { _ = $0.currentFiles.insert(path.description) }
    defer { state.withLock { _ = $0.currentFiles.remove(path.description) } }
    do {
      let (content, size) = try await saveContent(path: path, expectedSize: Int64(node.size), sparse: true)
      node.content = content
      node.size = UInt64(size)
    } catch let e as SystemError {
      warn("\(path): \(e)")
      return nil
    }
    countDone(isNew: isNew)
    return node
  }

  /// Counts a file whose content is stored; `bytes` when they were not counted as they were read.
  func countDone(isNew: Bool, bytes: Int64 = 0) {
    state.withLock {
      if isNew { $0.filesNew += 1 } else { $0.filesChanged += 1 }
      $0.filesDone += 1
      $0.bytesDone += bytes
    }
  }

  /// A directory listed (each entry lstat'ed, its node built), sorted by name; with the listings of the
  /// subdirectories made in the same blocking call.
  final class Listing: Sendable {
    let entries: [([UInt8], FileStat, Node?)]
    let directory: OpenDirectory?
    let subdirectories: [[UInt8]: Listing]
    init(entries: [([UInt8], FileStat, Node?)], directory: OpenDirectory?, subdirectories: [[UInt8]: Listing]) {
      self.entries = entries
      self.directory = directory
      self.subdirectories = subdirectories
    }
  }

  /// Entries one blocking call lists at most, going on into the subdirectories (depth first, in name order)
  /// while fewer have been listed. A tree of small directories is then walked with one hop to a blocking thread
  /// per few hundred entries instead of one per directory: each hop waits for a thread and then for a core, and
  /// the batches that keep the cores busy are filled only as fast as the walk goes.
  static let listAhead = 512

  /// Lists `path` and, within `budget` entries, its subdirectories (on the calling, blocking thread).
  func list(_ path: BytePath, budget: inout Int) throws -> Listing {
    let excludes = !options.excludes.isEmpty
    let (out, kept) = try Sys.readDirectory(path, keepingOpen: openDirectories) {
      [names] dir, n, st -> ([UInt8], FileStat, Node?)? in
      let p = path.appending(n)
      if excludes && self.excluded(p) { return nil }
      return (n, st, try? Node.from(path: p, name: n, stat: st, names: names, directory: dir))
    }
    let entries = out.sorted { $0.0.lexicographicallyPrecedes($1.0) }
    budget -= entries.count
    var subdirectories: [[UInt8]: Listing] = [:]
    for (name, _, node) in entries where node?.type == .dir {
      guard budget > 0 else { break }
      // A subdirectory that cannot be listed now is listed again when the walk reaches it, which warns.
      if let sub = try? list(path.appending(name), budget: &budget) { subdirectories[name] = sub }
    }
    return Listing(entries: entries, directory: kept, subdirectories: subdirectories)
  }

  func directory(
    path: BytePath, node: Node, parentNode: Node?, journal: Bool = false, listed: Listing? = nil
  ) async throws -> PendingNode {
    // The parent snapshot's tree of this directory loads while the directory is listed (when it was not listed
    // ahead with its parent).
    let parentTreeLoad = (parentNode?.type == .dir ? parentNode?.subtree : nil).map { sub in
      Task { try? await self.repo.loadTree(sub) }
    }
    // One blocking hop lists the directory, and its subdirectories ahead of the walk, unless listed already.
    // Following a change journal, only this directory is listed: which subdirectories to walk is the journal's.
    let listing: Listing
    if let listed {
      listing = listed
    } else {
      do {
        listing = try await Blocking.run {
          var budget = journal ? 0 : Backup.listAhead
          return try self.list(path, budget: &budget)
        }
      } catch {
        parentTreeLoad?.cancel()
        warn("\(path): \(error)")
        return .ready(nil)
      }
    }
    let entries = listing.entries
    let ptree = await parentTreeLoad?.value ?? nil
    var parentByName: [[UInt8]: Node] = [:]
    for n in ptree?.nodes ?? [] { parentByName[n.name] = n }
    if journal, let plan = self.journal {
      try plan.checkRemoved(in: path, old: ptree?.nodes ?? [], now: entries.map { ($0.0, $0.1) })
    }
    var children: [PendingNode] = []
    children.reserveCapacity(entries.count)
    for (name, st, node) in entries {
      let childPath = path.appending(name)
      if node?.type == .dir, sideWalks.tryAcquire() {
        // Walked beside this one; its files join the batches as they are found.
        let parentNode = parentByName[name]
        let task = Task<Node?, Error> {
          let pending: PendingNode
          do {
            pending = try await self.entry(
              path: childPath, name: name, stat: st, parentNode: parentNode, node: node, journal: journal,
              listed: listing.subdirectories[name])
          } catch {
            self.sideWalks.release()
            throw error
          }
          self.sideWalks.release()
          return try await pending.value
        }
        children.append(.task(task))
        continue
      }
      children.append(
        try await entry(
          path: childPath, name: name, stat: st, parentNode: parentByName[name], node: node, journal: journal,
          in: listing.directory, listed: listing.subdirectories[name]))
    }
    return assemble(node: node, children: children, parentSubtree: parentNode?.subtree)
  }

  /// Waits until no subdirectory is being walked beside the main walk, so that no file joins a batch after
  /// the last one is flushed (or abandoned).
  func sideWalksFinished() async {
    for _ in 0..<sideWalkLimit { await sideWalks.acquire() }
    for _ in 0..<sideWalkLimit { sideWalks.release() }
  }

  /// The directory's node once its children are done: their tree stored, the counts kept.
  func assemble(node: Node, children: [PendingNode], parentSubtree: BlobID?) -> PendingNode {
    var node = node
    let task = Task<Node?, Error> {
      var t = Tree()
      t.nodes.reserveCapacity(children.count)
      for c in children { if let n = try await c.value { t.nodes.append(n) } }
      let id = try await self.saveTree(t)
      node.subtree = id
      self.state.withLock {
        if parentSubtree == nil {
          $0.dirsNew += 1
        } else if parentSubtree == id {
          $0.dirsUnmodified += 1
        } else {
          $0.dirsChanged += 1
        }
      }
      return node
    }
    return .task(task)
  }

  // MARK: File content

  static let readSize = 2 << 20
  /// Files smaller than this need no large-file permit.
  static let fewChunksLimit = 4 << 20

  /// Reads a file, cuts it into chunks and stores them. Holes of sparse files are not read.
  func saveContent(path: BytePath, expectedSize: Int64, sparse: Bool) async throws -> ([BlobID], Int64) {
    // One blocking hop opens the file and, when it is small (one chunk), reads it whole.
    let (fd, small) = try await Blocking.run { () -> (Int32, [UInt8]?) in
      let fd: Int32
      do {
        fd = try Sys.open(path, O_RDONLY | Sys.oNoAtime | O_NOFOLLOW)
      } catch let e as SystemError where e.errno == EPERM {
        fd = try Sys.open(path, O_RDONLY | O_NOFOLLOW)
      }
      guard expectedSize < Int64(Chunker.minSize) else { return (fd, nil) }
      do {
        return (fd, try Backup.readSmall(fd: fd, expectedSize: Int(expectedSize)))
      } catch {
        Sys.close(fd)
        throw error
      }
    }
    defer { Sys.close(fd) }
    if let data = small {
      if data.count >= Chunker.minSize { return try await chunked(fd: fd, sparse: false) }
      if data.isEmpty { return ([], 0) }
      let id = try await storeChunk(data)
      state.withLock { $0.bytesDone += Int64(data.count) }
      return ([id], Int64(data.count))
    }
    let st = try Sys.fstat(fd)
    let maybeSparse = sparse && st.blocks * 512 < st.size
    return try await chunked(fd: fd, sparse: maybeSparse, few: expectedSize < Backup.fewChunksLimit)
  }

  /// Reads a file expected to hold `expectedSize` bytes whole, into an array allocated once (not zero-filled);
  /// a file that grew meanwhile is read to its end.
  static func readSmall(fd: Int32, expectedSize: Int) throws -> [UInt8] {
    var data = try [UInt8](unsafeUninitializedCapacity: expectedSize + 1) { b, n in
      n = try Sys.pread(fd, UnsafeMutableRawBufferPointer(b), offset: 0)
    }
    guard data.count > expectedSize else { return data }
    var chunk = [UInt8](repeating: 0, count: 1 << 20)
    while true {
      let k = try chunk.withUnsafeMutableBytes { try Sys.pread(fd, $0, offset: Int64(data.count)) }
      if k == 0 { break }
      data += chunk[0..<k]
    }
    return data
  }

  /// `stream`: read sequentially with read(2) (standard input may be a pipe, which cannot pread).
  /// `few`: the file is small enough to have only a few chunks; it then runs without a large-file
  /// permit (it holds a file permit already, and touches only a few MiB of its read buffer).
  func chunked(fd: Int32, sparse: Bool, stream: Bool = false, few: Bool = false) async throws -> ([BlobID], Int64) {
    if !few { await largeFilePermits.acquire() }
    let buf = readBuffers.withLock { $0.popLast() } ?? ReadBuffer(capacity: Chunker.maxSize + Backup.readSize)
    defer {
      buf.reset()
      readBuffers.withLock { $0.append(buf) }
      if !few { largeFilePermits.release() }
    }
    // A second descriptor of the same file for direct reads (O_DIRECT is a property of the descriptor): a stretch
    // the page cache does not hold goes straight from the disk into a reused buffer, without filling pages of the
    // page cache that nobody will read again.
    let direct: Int32 =
      stream || sparse || few ? -1 : (try? Sys.open(BytePath("/proc/self/fd/\(fd)"), O_RDONLY | Sys.oNoAtime)) ?? -1
    defer { if direct >= 0 { Sys.close(direct) } }
    let directReads = self.directReads
    let tables = repo.chunkerTables
    var offset: Int64 = 0
    var scanned = 0  // bytes of the current chunk (from buf.start) already examined for a cut
    var inflight: [Task<BlobID, Error>] = []
    var ids: [BlobID] = []
    var eof = false
    func emit(_ chunk: consuming [UInt8]) async throws {
      await chunkPermits.acquire()
      // Moved into the task and from it back into the pool: a reference left in the task's context until it
      // ends would make the next chunk read into this buffer copy it first, onto fresh pages.
      let box = MoveBox(consume chunk)
      inflight.append(
        Task {
          let chunk = box.take()
          let id: Result<BlobID, Error>
          do {
            id = .success(try await self.storeChunk(chunk))
          } catch {
            id = .failure(error)
          }
          self.chunkBuffers.give(consume chunk)
          self.chunkPermits.release()
          return try id.get()
        })
      if inflight.count > 1 { ids.append(try await inflight.removeFirst().value) }
    }
    while true {
      if !eof {
        buf.compactIfNeeded(room: Backup.readSize)
        let got = try await Blocking.run { [offset] in
          if stream { return try Sys.read(fd, buf.freeSpace(max: Backup.readSize)) }
          let space = buf.freeSpace(max: Backup.readSize)
          if direct >= 0, let n = try directReads.read(direct, into: space, offset: offset) { return n }
          return try Backup.readBlock(fd: fd, offset: offset, into: space, sparse: sparse)
        }
        buf.end += got
        offset += Int64(got)
        if got == 0 { eof = true }
      }
      while buf.start + scanned < buf.end {
        guard
          let cut = Chunker.cut(
            in: UnsafeRawBufferPointer(start: buf.base + buf.start, count: buf.end - buf.start), scanned: scanned,
            tables: tables)
        else {
          scanned = buf.end - buf.start
          break
        }
        let chunk = buf.take(cut, from: chunkBuffers)
        scanned = 0
        state.withLock { $0.bytesDone += Int64(chunk.count) }
        try await emit(consume chunk)
      }
      if eof {
        if buf.end > buf.start {
          let chunk = buf.take(buf.end - buf.start, from: chunkBuffers)
          state.withLock { $0.bytesDone += Int64(chunk.count) }
          try await emit(consume chunk)
        }
        break
      }
    }
    for t in inflight { ids.append(try await t.value) }
    return (ids, offset)
  }

  /// Reads up to `b.count` bytes at `offset` into `b`; holes (SEEK_HOLE) become zeros without reading.
  /// Returns the number of bytes filled (less only at the end of the file).
  static func readBlock(fd: Int32, offset: Int64, into b: UnsafeMutableRawBufferPointer, sparse: Bool) throws -> Int {
    let count = b.count
    var done = 0
    while done < count {
      let pos = offset + Int64(done)
      if sparse {
        guard let data = try Sys.nextData(fd, from: pos) else {
          // Only a hole remains up to the end of the file.
          let size = Int64(try Sys.fstat(fd).size)
          let n = Int(min(Int64(count - done), max(0, size - pos)))
          UnsafeMutableRawBufferPointer(rebasing: b[done..<(done + n)]).initializeMemory(as: UInt8.self, repeating: 0)
          return done + n
        }
        if data > pos {
          let n = Int(min(data - pos, Int64(count - done)))
          UnsafeMutableRawBufferPointer(rebasing: b[done..<(done + n)]).initializeMemory(as: UInt8.self, repeating: 0)
          done += n
          continue
        }
        let hole = try Sys.nextHole(fd, from: pos)
        let want = Int(max(1, min(hole - pos, Int64(count - done))))
        let n = try Sys.pread(fd, UnsafeMutableRawBufferPointer(rebasing: b[done..<(done + want)]), offset: pos)
        done += n
        if n < want { return done }
      } else {
        return try Sys.pread(fd, b, offset: pos)
      }
    }
    return done
  }

  func storeChunk(_ chunk: [UInt8]) async throws -> BlobID {
    let id = BlobID(RawID.hash(chunk))
    if !options.dryRun { try await saver.save(.data, chunk, id: id) }
    return id
  }

  // MARK: stdin

  func stdinNode(_ name: String) async throws -> Node {
    var node = Node(name: Array(name.utf8), type: .file)
    let now = Timestamp.now()
    node.mode = 0o600
    (node.mtime, node.atime, node.ctime) = (now, now, now)
    node.uid = getuid()
    node.gid = getgid()
    node.user = names.user(node.uid)
    node.group = names.group(node.gid)
    let (content, size) = try await chunked(fd: options.stdinFD, sparse: false, stream: true)
    node.content = content
    node.size = UInt64(size)
    state.withLock {
      $0.filesNew += 1
      $0.filesDone += 1
    }
    return node
  }
}

/// A file's read-ahead window: bytes [start, end) are read but not yet cut into chunks.
/// Used by one task at a time (handed between the task and its blocking reads, never shared).
final class ReadBuffer: @unchecked Sendable {
  let base: UnsafeMutableRawPointer
  let capacity: Int
  var start = 0
  var end = 0

  init(capacity: Int) {
    self.capacity = capacity
    base = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 64)
  }
  deinit { base.deallocate() }

  func reset() { (start, end) = (0, 0) }

  /// Moves the unconsumed bytes to the front when fewer than `room` bytes are free at the end.
  func compactIfNeeded(room: Int) {
    guard capacity - end < room else { return }
    if end > start { memmove(base, base + start, end - start) }
    end -= start
    start = 0
  }

  func freeSpace(max n: Int) -> UnsafeMutableRawBufferPointer {
    UnsafeMutableRawBufferPointer(start: base + end, count: min(n, capacity - end))
  }

  /// Copies out and consumes the next `n` bytes, into a buffer from `pool`.
  func take(_ n: Int, from pool: BufferPool) -> [UInt8] {
    var out = pool.take()
    out.resizeReusing(n)
    out.withUnsafeMutableBytes { $0.copyMemory(from: UnsafeRawBufferPointer(start: base + start, count: n)) }
    start += n
    return out
  }
}

/// A file's identity on this machine: the device and inode its names share.
struct HardLinkKey: Hashable, Sendable {
  var device: UInt64
  var inode: UInt64
}
