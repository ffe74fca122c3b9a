// Helpers for tests that run the real tidemark binary and the real restic binary side by side.
import Foundation
import Synchronization
import TidemarkCore
import TidemarkCrypto
import TidemarkEngine
import TidemarkSystem

struct RunResult {
  var status: Int32
  var stdout: [UInt8]
  var stderr: String
  var out: String { String(decoding: stdout, as: UTF8.self) }
}

enum Tools {
  static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

  /// TIDEMARK_BIN (set by scripts/test.sh), else the newest built binary.
  static var tidemark: String {
    if let b = ProcessInfo.processInfo.environment["TIDEMARK_BIN"], !b.isEmpty { return b }
    let cands = ["release", "debug"].map { packageRoot.appendingPathComponent(".build/\($0)/tidemark").path }
      .filter { FileManager.default.fileExists(atPath: $0) }
    return cands.max {
      ((try? FileManager.default.attributesOfItem(atPath: $0)[.modificationDate] as? Date) ?? .distantPast)
        < ((try? FileManager.default.attributesOfItem(atPath: $1)[.modificationDate] as? Date) ?? .distantPast)
    } ?? cands.first ?? "tidemark"
  }

  static let restic = "/usr/bin/restic"

  @discardableResult
  static func run(
    _ exe: String, _ args: [String], env: [String: String] = [:], cwd: String? = nil, stdin: [UInt8]? = nil
  )
    throws -> RunResult
  {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: exe)
    p.arguments = args
    var e = ProcessInfo.processInfo.environment
    for k in e.keys
    where k.hasPrefix("RESTIC_") || (k.hasPrefix("TIDEMARK_") && k != "TIDEMARK_BIN") || k.hasPrefix("AWS_") {
      e[k] = nil
    }
    e["RESTIC_CACHE_DIR"] = NSTemporaryDirectory() + "restic-test-cache"
    for (k, v) in env { e[k] = v }
    p.environment = e
    if let cwd { p.currentDirectoryURL = URL(fileURLWithPath: cwd) }
    let errFile = NSTemporaryDirectory() + "tm-stderr-\(UUID().uuidString)"
    FileManager.default.createFile(atPath: errFile, contents: nil)
    defer { try? FileManager.default.removeItem(atPath: errFile) }
    let outPipe = Pipe()
    p.standardOutput = outPipe
    p.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errFile))
    let inPipe = Pipe()
    p.standardInput = stdin == nil ? FileHandle.nullDevice : inPipe
    try p.run()
    if let stdin {
      inPipe.fileHandleForWriting.write(Data(stdin))
      try inPipe.fileHandleForWriting.close()
    }
    let out = outPipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    let err = (try? String(contentsOfFile: errFile, encoding: .utf8)) ?? ""
    if p.terminationStatus == 0, exe == tidemark || args.contains(tidemark), args.contains("init") {
      try CheapKeys.afterInit(args, env: e, cwd: cwd)
    }
    return RunResult(status: p.terminationStatus, stdout: Array(out), stderr: err)
  }

  static func sh(_ script: String, cwd: String) throws -> RunResult { try run("/bin/sh", ["-ec", script], cwd: cwd) }
}

/// A scratch directory removed at the end.
final class Workspace {
  let path: String
  init(_ name: String) throws {
    path = "/tmp/tidemark-test-\(name)-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
  }
  deinit {
    _ = try? Tools.run("/bin/rm", ["-rf", path])
  }
  func sub(_ s: String) -> String { path + "/" + s }

  func tidemark(_ args: [String], password: String = "test-pw", env: [String: String] = [:], stdin: [UInt8]? = nil)
    throws -> RunResult
  {
    var e = env
    if e["TIDEMARK_PASSWORD"] == nil && !password.isEmpty { e["TIDEMARK_PASSWORD"] = password }
    return try Tools.run(Tools.tidemark, args, env: e, cwd: path, stdin: stdin)
  }

  func restic(_ args: [String], password: String = "test-pw", env: [String: String] = [:]) throws -> RunResult {
    try Tools.run(Tools.restic, args, env: env.merging(["RESTIC_PASSWORD": password]) { $1 }, cwd: path)
  }

  /// Total bytes of the files under `dir`.
  func size(_ dir: String) throws -> Int64 {
    Int64(try Tools.run("/usr/bin/du", ["-sb", "--apparent-size", sub(dir)]).out.split(separator: "\t")[0]) ?? 0
  }
}

/// Everything a restore must reproduce about one entry.
struct EntryFacts: Equatable, CustomStringConvertible {
  var type: UInt32
  var perm: UInt32
  var size: Int64
  var mtime: String
  var uid: UInt32
  var gid: UInt32
  var linkTarget: [UInt8]
  var xattrs: [String]
  var content: String
  var hardlinkGroup: String
  var rdev: UInt64

  var description: String {
    "type=\(String(type, radix: 8)) perm=\(String(perm, radix: 8)) size=\(size) mtime=\(mtime) uid=\(uid) gid=\(gid) link=\(BytePath.display(linkTarget)) xattrs=\(xattrs) content=\(content.prefix(12)) hl=\(hardlinkGroup) rdev=\(rdev)"
  }
}

/// Walks `root` and describes each entry by its path relative to `root`.
func describeTree(_ root: String) throws -> [String: EntryFacts] {
  var out: [String: EntryFacts] = [:]
  var firstByInode: [UInt64: String] = [:]
  func walk(_ p: BytePath, _ rel: [UInt8]) throws {
    let st = try Sys.lstat(p)
    let relS = BytePath.display(rel)
    var group = ""
    if !st.isDirectory && st.links > 1 {
      if let f = firstByInode[st.inode] {
        group = f
      } else {
        firstByInode[st.inode] = relS
        group = relS
      }
    }
    var content = ""
    if st.isRegular { content = RawID.hash(try Sys.readFile(p)).hex }
    let xattrs = try Sys.extendedAttributes(p).filter { $0.name.starts(with: Array("user.".utf8)) }
      .map { BytePath.display($0.name) + "=" + toHexString($0.value) }
    out[relS] = EntryFacts(
      type: st.fileType, perm: st.mode & 0o7777, size: st.isDirectory ? 0 : st.size,
      mtime: st.isSymlink ? "" : "\(st.mtime.0).\(st.mtime.1)", uid: st.uid, gid: st.gid,
      linkTarget: st.isSymlink ? try Sys.readlink(p) : [], xattrs: xattrs, content: content, hardlinkGroup: group,
      rdev: st.rdev)
    if st.isDirectory {
      for n in try Sys.readDirectory(p).sorted(by: { $0.lexicographicallyPrecedes($1) }) {
        try walk(p.appending(n), rel.isEmpty ? n : rel + [47] + n)
      }
    }
  }
  try walk(BytePath(root), [])
  return out
}

func toHexString(_ b: [UInt8]) -> String { b.map { String(format: "%02x", $0) }.joined() }

/// Lists differences between two described trees (empty when equal).
func differences(
  _ a: [String: EntryFacts], _ b: [String: EntryFacts], ignoreLinkTargetOf: Set<String> = [],
  ignoreRootMtime: Bool = true
) -> [String] {
  var diffs: [String] = []
  for k in Set(a.keys).union(b.keys).sorted() {
    guard var x = a[k], var y = b[k] else {
      diffs.append("\(k): only in \(a[k] == nil ? "second" : "first")")
      continue
    }
    if ignoreLinkTargetOf.contains(k) { (x.linkTarget, y.linkTarget, x.size, y.size) = ([], [], 0, 0) }
    if k == "" && ignoreRootMtime { (x.mtime, y.mtime) = ("", "") }
    if x != y { diffs.append("\(k):\n   \(x)\n   \(y)") }
  }
  return diffs
}

/// The awkward tree: every kind of entry restic stores, with the metadata that must survive.
func makeAwkwardTree(in dir: String, nonUTF8LinkTarget: Bool) throws {
  let script = """
    mkdir -p src/empty-dir src/sub/deeper src/sticky src/setgid-dir
    printf 'hello tidemark\\n' > src/file.txt
    : > src/empty-file
    ln src/file.txt src/hardlink
    ln src/file.txt src/sub/hardlink2
    ln -s file.txt src/symlink
    ln -s /nonexistent/dangling/target src/dangling
    printf 'not utf-8 name\\n' > "src/$(printf 'bad\\377name')"
    mkdir "src/$(printf 'dir\\376')"
    printf 'x' > "src/$(printf 'dir\\376')/inner"
    printf 'quote"back\\\\slash' > 'src/we"ird\\name'
    \(nonUTF8LinkTarget ? "ln -s \"$(printf 'tgt\\375')\" src/badtarget" : "")
    setfattr -n user.note -v 'hello xattr' src/file.txt
    setfattr -n user.bin -v 0x00ff10 src/sub/deeper
    truncate -s 48M src/sparse
    printf 'middle' | dd of=src/sparse bs=1 seek=20000000 conv=notrunc status=none
    mkfifo src/fifo
    printf '#!/bin/sh\\n' > src/setuid && chmod 4755 src/setuid
    chmod 1777 src/sticky
    chmod 2750 src/setgid-dir
    head -c 3000000 /dev/urandom > src/sub/random.bin
    seq 1 300000 > src/sub/numbers.txt
    printf 'owned' > src/owned && chown 1234:5678 src/owned
    chmod 0600 src/sub/numbers.txt
    mknod src/chardev c 1 3 2>/dev/null || true
    touch -h -d '2021-03-04 05:06:07.123456789' src/symlink
    touch -d '2019-01-01 00:00:00.5' src/file.txt src/sub/deeper src/empty-dir
    """
  let r = try Tools.sh(script, cwd: dir)
  if r.status != 0 { throw TidemarkError(.general, "building the test tree failed: \(r.stderr)") }
}

/// A DC for engine tests in a workspace: `src/` to back up, the password file `pw` ("secret"), and `c.yaml` with
/// the repository `dc`, that source, one local target `dr` and `extra` YAML; its state directory is `state`.
struct EngineSite {
  let ws: Workspace
  var config: String { ws.sub("c.yaml") }
  var env: [String: String] { ["TIDEMARK_STATE_DIR": ws.sub("state")] }

  init(_ ws: Workspace, host: String? = nil, extra: String = "") throws {
    self.ws = ws
    try FileManager.default.createDirectory(atPath: ws.sub("src"), withIntermediateDirectories: true)
    try "secret\n".write(toFile: ws.sub("pw"), atomically: true, encoding: .utf8)
    try """
    \(host.map { "host: \($0)" } ?? "")
    repository: \(ws.sub("dc"))
    password-file: \(ws.sub("pw"))
    sources:
      - path: \(ws.sub("src"))
    targets:
      - name: dr
        repository: \(ws.sub("dr"))

    """.appending(extra).write(toFile: config, atomically: true, encoding: .utf8)
  }

  /// `tidemark ARGS --config c.yaml` with the site's state directory.
  func run(_ args: [String]) throws -> RunResult {
    try ws.tidemark(args + ["--config", config], password: "", env: env)
  }

  /// How many snapshot files the repository in `dir` of the workspace holds.
  func snapshots(_ dir: String) -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: ws.sub(dir + "/snapshots")).count) ?? 0
  }

  /// Starts `tidemark daemon` for c.yaml with this state directory; kill it with `stop`.
  func startDaemon() throws -> pid_t { try TidemarkIntegrationTests.startDaemon(ws, config: config) }
}

/// Starts `tidemark daemon --config CONFIG` with the workspace's `state` directory (posix_spawn, not Process).
func startDaemon(_ ws: Workspace, config: String) throws -> pid_t {
  try spawn([
    "/usr/bin/env", "TIDEMARK_STATE_DIR=\(ws.sub("state"))", Tools.tidemark, "daemon", "--config", config,
  ])
}

/// SIGKILL and reap (for `defer`).
func stop(_ pid: pid_t) {
  kill(pid, SIGKILL)
  _ = waitpid(pid, nil, 0)
}

/// The next port for a server a test starts (handed out once per test process, so two tests never pick the same
/// one), below the kernel's ephemeral range (32768 and up). Above it, a probe that connects before the server
/// listens can connect to itself (TCP simultaneous open, when the kernel picks the destination port as the probe's
/// source port): the server then looked up while its own bind had failed, and every request was refused.
private let nextTestPort = Mutex(Int.random(in: 20000..<26000))

/// A port for a test's server that nothing listens on yet (see `nextTestPort`).
func unusedPort() throws -> Int {
  for _ in 0..<50 {
    let port = nextTestPort.withLock { p in
      defer { p = p + 1 < 32000 ? p + 1 : 20000 }
      return p
    }
    if try Tools.run("/bin/bash", ["-c", "exec 3<>/dev/tcp/127.0.0.1/\(port)"]).status != 0 { return port }
  }
  throw TidemarkError(.general, "no free port found")
}

/// Damages one byte of the file at `path`: it is XORed, so it always changes (writing a fixed byte changed nothing
/// one time in 256, when the encrypted byte there already had that value).
func flipByte(_ path: String, at offset: UInt64) throws {
  let fh = try FileHandle(forUpdating: URL(fileURLWithPath: path))
  defer { try? fh.close() }
  try fh.seek(toOffset: offset)
  guard let b = try fh.read(upToCount: 1)?.first else {
    throw TidemarkError(.general, "\(path) is shorter than \(offset + 1) bytes")
  }
  try fh.seek(toOffset: offset)
  try fh.write(contentsOf: Data([b ^ 0x40]))
}

/// Cheap key files for test repositories. tidemark writes key files with restic's scrypt cost, a quarter of a
/// second on every open; the tests open repositories hundreds of times. After a successful `tidemark init` the
/// new local repositories' key files are wrapped again with N=1024 (same master key, the old file removed), and
/// replicas inherit that cost from their source. Remote repositories (SFTP, S3) keep the real cost.
enum CheapKeys {
  static let params: (n: UInt64, r: UInt64, p: UInt64) = (1024, 8, 1)

  /// The repositories `tidemark ARGS` (an `init`) created: `-r`/`--repo`, or the configuration's DC and targets.
  static func afterInit(_ args: [String], env: [String: String], cwd: String?) throws {
    func value(_ names: Set<String>) -> String? {
      for (i, a) in args.enumerated().dropLast() where names.contains(a) { return args[i + 1] }
      return nil
    }
    func absolute(_ p: String) -> String {
      p.hasPrefix("/") ? p : (cwd ?? FileManager.default.currentDirectoryPath) + "/" + p
    }
    func firstLine(_ file: String) throws -> [UInt8] {
      Array((try String(contentsOfFile: absolute(file), encoding: .utf8).split(separator: "\n").first ?? "").utf8)
    }
    if let config = value(["--config"]) {
      let c = try EngineConfig.load(absolute(config))
      let dcPassword = try c.passwordFile.map(firstLine) ?? Array((env["TIDEMARK_PASSWORD"] ?? "").utf8)
      try rewrap(c.repository, password: dcPassword)
      for t in c.targets { try rewrap(t.repository, password: try t.passwordFile.map(firstLine) ?? dcPassword) }
    } else if let repo = value(["-r", "--repo"]) ?? env["TIDEMARK_REPOSITORY"] ?? env["RESTIC_REPOSITORY"] {
      let password =
        try value(["--password-file"]).map(firstLine)
        ?? Array((env["TIDEMARK_PASSWORD"] ?? env["RESTIC_PASSWORD"] ?? "").utf8)
      try rewrap(absolute(repo), password: password)
    }
  }

  /// Wraps every key file of the local repository at `location` that `password` opens and that costs more than
  /// `params` again at `params`. Other locations are left alone.
  static func rewrap(_ location: String, password: [UInt8]) throws {
    let dir = location.hasPrefix("local:") ? String(location.dropFirst(6)) : location
    guard dir.hasPrefix("/"), FileManager.default.fileExists(atPath: dir + "/config") else { return }
    for name in try FileManager.default.contentsOfDirectory(atPath: dir + "/keys") {
      let old = dir + "/keys/" + name
      let key = try KeyFile(json: Array(try Data(contentsOf: URL(fileURLWithPath: old))))
      guard key.n > params.n, let master = try key.open(password: password) else { continue }
      let json = try KeyFile.create(
        master: master, password: password, username: key.username, hostname: key.hostname, params: params
      ).json
      let new = dir + "/keys/" + RawID.hash(json).hex
      try json.withUnsafeBytes { try Sys.writeAtomically(BytePath(new), $0, mode: 0o400) }
      let owner = try Sys.lstat(BytePath(old))  // a repository made by another user stays readable to them
      _ = chown(new, owner.uid, owner.gid)
      try FileManager.default.removeItem(atPath: old)
    }
  }
}
