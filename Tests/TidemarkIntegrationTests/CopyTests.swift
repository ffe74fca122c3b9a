// `tidemark copy` between repositories with different keys, against the real restic 0.14: the copies check
// clean and restore with both tools, carry `original`, are skipped when copied again (by either tool), and with
// shared chunker parameters deduplicate against backups made in the destination.
import Foundation
import Testing
import TidemarkCore

@Suite(.serialized) struct CopyTests {
  static let fromPassword = ["TIDEMARK_FROM_PASSWORD": "src-pw"]

  /// A source repository (tidemark's init for its cheap test KDF, snapshots by restic): s1 of `src` (host h1, tag
  /// daily), s2 of `src` with one more file (host h2, tag hourly), s3 of `src/sub` (host h1). Returns their IDs.
  static func makeSource(_ ws: Workspace) throws -> [String] {
    try makeAwkwardTree(in: ws.path, nonUTF8LinkTarget: false)
    #expect(try ws.tidemark(["-r", "srcrepo", "init"], password: "src-pw").status == 0)
    let runs: [([String], String?)] = [
      (["src", "--host", "h1", "--tag", "daily"], nil),
      (["src", "--host", "h2", "--tag", "hourly"], "printf 'added later\\n' > src/added.txt"),
      (["src/sub", "--host", "h1"], nil),
    ]
    for (args, before) in runs {
      if let before { #expect(try Tools.sh(before, cwd: ws.path).status == 0) }
      let b = try ws.restic(["-r", "srcrepo", "backup", "-q"] + args, password: "src-pw")
      #expect(b.status == 0, "\(b.stderr)")
    }
    return try snapshots(ws, "srcrepo", password: "src-pw").map { $0["id"] as! String }
  }

  /// `restic snapshots --json`, oldest first.
  static func snapshots(_ ws: Workspace, _ repo: String, password: String = "dst-pw") throws -> [[String: Any]] {
    let r = try ws.restic(["-r", repo, "snapshots", "--json"], password: password)
    #expect(r.status == 0, "\(r.stderr)")
    let list = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout)) as? [[String: Any]])
    return list.sorted { ($0["time"] as! String) < ($1["time"] as! String) }
  }

  static func copy(_ ws: Workspace, _ repo: String, _ args: [String] = []) throws -> RunResult {
    try ws.tidemark(["-r", repo, "copy", "--from-repo", "srcrepo"] + args, password: "dst-pw", env: fromPassword)
  }

  static func lines(_ r: RunResult, containing s: String) -> Int {
    r.out.split(separator: "\n").filter { $0.contains(s) }.count
  }

  @Test func copiesCheckCleanRestoreWithBothToolsAndAreNotCopiedTwice() throws {
    let ws = try Workspace("copy")
    let ids = try CopyTests.makeSource(ws)
    try #require(ids.count == 3)

    // dst1 shares the source's chunker polynomial; dst2 has its own.
    let i1 = try ws.tidemark(
      ["-r", "dst1", "init", "--copy-chunker-params", "--from-repo", "srcrepo"], password: "dst-pw",
      env: CopyTests.fromPassword)
    #expect(i1.status == 0, "\(i1.stderr)")
    #expect(try ws.tidemark(["-r", "dst2", "init"], password: "dst-pw").status == 0)

    for dst in ["dst1", "dst2"] {
      let c = try CopyTests.copy(ws, dst)
      #expect(c.status == 0, "\(c.stderr)")
      #expect(CopyTests.lines(c, containing: "  copy started, this may take a while...") == 3)
      #expect(c.out.contains("snapshot \(ids[0].prefix(8)) of [\(ws.sub("src"))] at "))
      let check = try ws.restic(["-r", dst, "check", "--read-data"], password: "dst-pw")
      #expect(check.status == 0, "restic check of \(dst): \(check.out) \(check.stderr)")
      let copies = try CopyTests.snapshots(ws, dst)
      #expect(copies.map { $0["original"] as? String } == ids)
      #expect(copies.allSatisfy { $0["parent"] == nil })
    }
    // The same snapshot fields as the source's (time, tree, host, tags, paths).
    let source = try CopyTests.snapshots(ws, "srcrepo", password: "src-pw")
    for (s, c) in zip(source, try CopyTests.snapshots(ws, "dst1")) {
      for k in ["time", "tree", "hostname", "username", "paths", "tags"] {
        #expect("\(s[k] ?? "-")" == "\(c[k] ?? "-")", "\(k)")
      }
    }

    // Restoring s2's copy gives today's `src` (s2 is the last snapshot of all of it), by either tool.
    let copyOfS2 = try #require(try CopyTests.snapshots(ws, "dst1")[1]["id"] as? String)
    let want = try describeTree(ws.sub("src"))
    let rr = try ws.restic(["-r", "dst1", "restore", copyOfS2, "--target", "by-restic"], password: "dst-pw")
    #expect(rr.status == 0, "\(rr.stderr)")
    let d1 = differences(want, try describeTree(ws.sub("by-restic/src")))
    #expect(d1.isEmpty, "restic restore of the copy differs:\n\(d1.joined(separator: "\n"))")
    let tr = try ws.tidemark(["-r", "dst1", "restore", copyOfS2, "--target", "by-tidemark"], password: "dst-pw")
    #expect(tr.status == 0, "\(tr.stderr)")
    let d2 = differences(want, try describeTree(ws.sub("by-tidemark/src")))
    #expect(d2.isEmpty, "tidemark restore of the copy differs:\n\(d2.joined(separator: "\n"))")

    // Copying again copies nothing, with tidemark or with restic.
    let before = try ws.size("dst1")
    let again = try CopyTests.copy(ws, "dst1", ["--json"])
    #expect(again.status == 0, "\(again.stderr)")
    #expect(again.out.contains("\"snapshots_copied\":0,\"snapshots_skipped\":3"))
    let text = try CopyTests.copy(ws, "dst1")
    #expect(CopyTests.lines(text, containing: "skipping source snapshot") == 3)
    #expect(!text.out.contains("copy started"))
    let byRestic = try ws.restic(
      ["-r", "dst1", "copy", "--from-repo", "srcrepo"], password: "dst-pw", env: ["RESTIC_FROM_PASSWORD": "src-pw"])
    #expect(byRestic.status == 0, "\(byRestic.stderr)")
    #expect(CopyTests.lines(byRestic, containing: "skipping source snapshot") == 3, "\(byRestic.out)")
    #expect(try CopyTests.snapshots(ws, "dst1").count == 3)
    #expect(try ws.size("dst1") - before < 16 << 10)  // lock files come and go; no data, index or snapshot

    // With shared chunker parameters, the data is stored once (about what the source holds for the same three
    // snapshots), and a backup of the same files in the destination adds almost nothing.
    let srcData = try ws.size("srcrepo/data")
    let dstData = try ws.size("dst1/data")
    #expect(
      Double(dstData) < Double(srcData) * 1.25 && Double(dstData) > Double(srcData) * 0.75,
      "destination data \(dstData) B vs source \(srcData) B")
    let beforeBackup = try ws.size("dst1/data")
    let b = try ws.tidemark(["-r", "dst1", "backup", "src", "--json"], password: "dst-pw")
    #expect(b.status == 0, "\(b.stderr)")
    #expect(try ws.size("dst1/data") - beforeBackup < 64 << 10)
  }

  @Test func filtersIDsInteropAndWrongPassword() throws {
    let ws = try Workspace("copyf")
    let ids = try CopyTests.makeSource(ws)
    try #require(ids.count == 3)
    #expect(try ws.tidemark(["-r", "dst", "init"], password: "dst-pw").status == 0)

    // --host: only s2.
    let byHost = try CopyTests.copy(ws, "dst", ["--host", "h2"])
    #expect(byHost.status == 0, "\(byHost.stderr)")
    #expect(try CopyTests.snapshots(ws, "dst").map { $0["original"] as? String } == [ids[1]])
    // An explicit ID prefix (from a password file this time): only s1.
    #expect(try Tools.sh("printf 'src-pw\\n' > src-pw.txt", cwd: ws.path).status == 0)
    let byID = try ws.tidemark(
      ["-r", "dst", "copy", "--from-repo", "srcrepo", "--from-password-file", "src-pw.txt", String(ids[0].prefix(8))],
      password: "dst-pw")
    #expect(byID.status == 0, "\(byID.stderr)")
    #expect(CopyTests.lines(byID, containing: "copy started") == 1)
    #expect(Set(try CopyTests.snapshots(ws, "dst").compactMap { $0["original"] as? String }) == [ids[0], ids[1]])
    // --tag daily: s1 again, already there.
    let byTag = try CopyTests.copy(ws, "dst", ["--tag", "daily"])
    #expect(byTag.status == 0)
    #expect(CopyTests.lines(byTag, containing: "skipping source snapshot \(ids[0].prefix(8))") == 1)
    #expect(!byTag.out.contains("copy started"))
    // `latest` with a host: s3.
    let latest = try CopyTests.copy(ws, "dst", ["latest", "--host", "h1"])
    #expect(latest.status == 0, "\(latest.stderr)")
    #expect(try CopyTests.snapshots(ws, "dst").compactMap { $0["original"] as? String }.sorted() == ids.sorted())
    // An ID that matches nothing: said so, exit 1.
    let none = try CopyTests.copy(ws, "dst", ["deadbeef"])
    #expect(none.status == 1)
    #expect(none.stderr.contains("Ignoring \"deadbeef\""))
    #expect(try ws.restic(["-r", "dst", "check", "--read-data"], password: "dst-pw").status == 0)

    // restic copies s1 first; tidemark then skips it and copies the other two.
    #expect(try ws.tidemark(["-r", "rdst", "init"], password: "dst-pw").status == 0)
    let rc = try ws.restic(
      ["-r", "rdst", "copy", "--from-repo", "srcrepo", ids[0]], password: "dst-pw",
      env: ["RESTIC_FROM_PASSWORD": "src-pw"])
    #expect(rc.status == 0, "\(rc.stderr)")
    let rest = try CopyTests.copy(ws, "rdst")
    #expect(rest.status == 0, "\(rest.stderr)")
    #expect(CopyTests.lines(rest, containing: "skipping source snapshot \(ids[0].prefix(8))") == 1)
    #expect(CopyTests.lines(rest, containing: "copy started") == 2)
    #expect(try CopyTests.snapshots(ws, "rdst").map { $0["original"] as? String } == ids)

    // A wrong source password: exit 12, one line naming the source.
    let wrong = try ws.tidemark(
      ["-r", "dst", "copy", "--from-repo", "srcrepo"], password: "dst-pw", env: ["TIDEMARK_FROM_PASSWORD": "nope"])
    #expect(wrong.status == 12)
    #expect(wrong.stderr.contains("wrong password for the source repository srcrepo"), "\(wrong.stderr)")
    // No source at all.
    let missing = try ws.tidemark(["-r", "dst", "copy"], password: "dst-pw")
    #expect(missing.status == 1)
    #expect(missing.stderr.contains("copy needs a source repository"))
  }
}
