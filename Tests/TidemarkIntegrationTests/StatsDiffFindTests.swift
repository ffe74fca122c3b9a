// `stats`, `diff` and `find` against restic 0.14 on a history restic wrote: same numbers, same lines, same
// matches. The repository is created by tidemark only for its cheap test key (restic's scrypt is slow).
import Foundation
import Testing
import TidemarkCore

/// Three snapshots by restic of a tree that changes: files added, removed, modified, chmod-ed, a file that
/// becomes a directory, a symlink that becomes a file, duplicates, hard links, a copied directory. Returns the
/// snapshot IDs, oldest first.
private func makeHistory(_ ws: Workspace) throws -> [String] {
  #expect(try ws.tidemark(["-r", "repo", "init"]).status == 0)
  let steps = [
    """
    mkdir -p src/sub/deep/empty-dir src/gone src/docs
    printf 'hello\\n' > src/a.txt && cp src/a.txt src/dup.txt
    printf 'world\\n' > src/sub/b.txt && ln src/sub/b.txt src/sub/hl
    seq 1 100000 > src/sub/deep/num.log
    printf 'x\\n' > src/gone/x && printf 'y\\n' > src/turns-dir
    printf 'readme\\n' > src/docs/README.md && printf 'guide\\n' > src/docs/Guide.MD
    ln -s a.txt src/link && printf '#!/bin/sh\\n' > src/mode.sh && chmod 644 src/mode.sh
    head -c 2500000 /dev/urandom > src/big.bin && : > src/empty && mkfifo src/fifo
    """,
    """
    printf 'changed\\n' >> src/sub/b.txt && rm -r src/gone && chmod 755 src/mode.sh
    rm src/turns-dir && mkdir src/turns-dir && printf 'z\\n' > src/turns-dir/z
    printf 'new\\n' > src/new.txt && rm src/link && printf 'not a link\\n' > src/link
    ln -s sub src/newlink && touch -d '2020-02-02 02:02:02' src/dup.txt
    """,
    """
    cp -a src/sub src/sub2 && rm src/big.bin && printf 'UP\\n' > src/Upper.TXT
    printf 'more\\n' >> src/docs/README.md
    """,
  ]
  let backups = [["--tag", "one"], ["--tag", "two"], ["--tag", "one,three", "--host", "otherhost"]]
  for (step, extra) in zip(steps, backups) {
    let r = try Tools.sh(step, cwd: ws.path)
    try #require(r.status == 0, "\(r.stderr)")
    let b = try ws.restic(["-r", "repo", "backup", "src", "-q"] + extra)
    try #require(b.status == 0, "\(b.stderr)")
  }
  let list = try ws.restic(["-r", "repo", "snapshots", "--json"])
  let snaps = try #require(try JSONSerialization.jsonObject(with: Data(list.stdout)) as? [[String: Any]])
  return snaps.sorted { ($0["time"] as! String) < ($1["time"] as! String) }.map { $0["id"] as! String }
}

private func jsonObject(_ r: RunResult) throws -> Any {
  try JSONSerialization.jsonObject(with: Data(r.stdout), options: [.fragmentsAllowed])
}

/// A JSON value as canonical text (sorted keys), for comparing.
private func canonical(_ v: Any) -> String {
  guard let d = try? JSONSerialization.data(withJSONObject: v, options: [.sortedKeys, .fragmentsAllowed]) else {
    return "\(v)"
  }
  return String(decoding: d, as: UTF8.self)
}

/// `find --json` output by snapshot: matches (objects) or, for ID searches, the objects found.
private func findResults(_ r: RunResult) throws -> [String: [String]] {
  guard let arr = try jsonObject(r) as? [[String: Any]] else { return [:] }
  var out: [String: [String]] = [:]
  for o in arr {
    if let matches = o["matches"] as? [Any], let s = o["snapshot"] as? String {
      #expect(o["hits"] as? Int == matches.count)
      out[s, default: []] += matches.map(canonical)
    } else if let s = o["snapshot"] as? String {
      out[s, default: []].append(canonical(o))
    }
  }
  return out
}

@Suite(.serialized) struct StatsDiffFindTests {
  @Test func statsEqualsResticInEveryMode() throws {
    let ws = try Workspace("stats")
    let ids = try makeHistory(ws)
    for mode in ["restore-size", "files-by-contents", "raw-data", "blobs-per-file"] {
      // blobs-per-file depends on the order snapshots are walked: name them in the same order to both.
      let selections: [[String]] =
        mode == "blobs-per-file"
        ? [ids, [ids[2], ids[0]]] : mode == "restore-size" ? [[], ["latest"], [ids[0]]] : [[]]
      for (i, sel) in selections.enumerated() {
        let args = ["-r", "repo", "stats", "--mode", mode, "--json"] + sel
        let r = try ws.restic(args)
        let t = try ws.tidemark(args)
        try #require(r.status == 0 && t.status == 0, "\(r.stderr) \(t.stderr)")
        let want = try #require(try jsonObject(r) as? [String: Any])
        let got = try #require(try jsonObject(t) as? [String: Any])
        #expect(Set(want.keys).isSubset(of: got.keys), "\(mode) \(sel): \(t.out)")
        for (k, v) in want { #expect(canonical(v) == canonical(got[k] ?? "missing"), "\(mode) \(sel) \(k)") }
        if mode != "raw-data" && i == 0 {
          #expect(Set(got.keys) == Set(want.keys), "\(mode): \(t.out)")
          // The text report is restic's too.
          let rt = try ws.restic(Array(args.filter { $0 != "--json" }))
          let tt = try ws.tidemark(Array(args.filter { $0 != "--json" }))
          #expect(tt.out == rt.out)
        }
      }
    }
    // Filters, as restic applies them.
    for filter in [["--host", "otherhost"], ["--tag", "two", "--tag", "three"]] {
      let args = ["-r", "repo", "stats", "--json"] + filter
      #expect(try ws.tidemark(args).out == (try ws.restic(args).out), "\(filter)")
    }

    // The compression figures (restic 0.16's) follow from the index: nothing was pruned, so every blob counts.
    let t = try ws.tidemark(["-r", "repo", "stats", "--mode", "raw-data", "--json", "--no-lock"])
    let got = try #require(try jsonObject(t) as? [String: Any])
    var stored = 0
    var uncompressed = 0
    var compressed = (stored: 0, uncompressed: 0)
    for index in try ws.restic(["-r", "repo", "list", "index"]).out.split(separator: "\n") {
      let v = try JSONSerialization.jsonObject(
        with: Data(try ws.restic(["-r", "repo", "cat", "index", String(index)]).stdout))
      for p in (v as! [String: Any])["packs"] as! [[String: Any]] {
        for b in p["blobs"] as! [[String: Any]] {
          let len = b["length"] as! Int
          stored += len
          if let u = b["uncompressed_length"] as? Int {
            uncompressed += u + 32
            compressed.stored += len
            compressed.uncompressed += u + 32
          } else {
            uncompressed += len
          }
        }
      }
    }
    #expect(got["total_size"] as? Int == stored)
    #expect(got["total_uncompressed_size"] as? Int == uncompressed)
    let ratio = try #require(got["compression_ratio"] as? Double)
    #expect(abs(ratio - Double(compressed.uncompressed) / Double(compressed.stored)) < 1e-9)
    let saving = try #require(got["compression_space_saving"] as? Double)
    #expect(abs(saving - (1 - Double(stored) / Double(uncompressed)) * 100) < 1e-9)
    let progress = try #require(got["compression_progress"] as? Double)
    #expect(abs(progress - Double(compressed.uncompressed) / Double(uncompressed) * 100) < 1e-9)
    let text = try ws.tidemark(["-r", "repo", "stats", "--mode", "raw-data"]).out
    #expect(text.contains("Compression Ratio:  \(String(format: "%.2f", ratio))x"), "\(text)")
  }

  @Test func diffPrintsWhatResticPrints() throws {
    let ws = try Workspace("diff")
    let ids = try makeHistory(ws)
    let pairs = [(ids[0], ids[1]), (ids[1], ids[2]), (ids[2], ids[0])]
    for (n, (a, b)) in pairs.enumerated() {
      for extra in [[], ["--metadata"], ["--json"], n == 0 ? ["-q"] : ["--metadata", "--json"]] {
        let args = ["-r", "repo", "diff", String(a.prefix(8)), String(b.prefix(12))] + extra
        let r = try ws.restic(args)
        let t = try ws.tidemark(args)
        #expect(t.status == 0, "\(t.stderr)")
        #expect(t.out == r.out, "diff \(extra):\n--- restic\n\(r.out)\n--- tidemark\n\(t.out)")
      }
    }
    // Every kind of change is there (the comparison above would pass on two empty outputs too).
    let lines = try ws.tidemark(["-r", "repo", "diff", ids[0], ids[1], "--metadata"]).out.split(separator: "\n")
    for want in [
      "-    /src/gone/", "-    /src/gone/x", "TU   /src/link", "+    /src/new.txt", "+    /src/newlink",
      "M    /src/sub/b.txt", "M    /src/sub/hl", "TU   /src/turns-dir/", "U    /src/mode.sh", "U    /src/dup.txt",
    ] {
      #expect(lines.contains(Substring(want)), "\(want) missing")
    }
    // `latest` works as a name too.
    let latest = try ws.tidemark(["-r", "repo", "diff", ids[1], "latest"])
    #expect(latest.out == (try ws.tidemark(["-r", "repo", "diff", ids[1], ids[2]]).out))
    let bad = try ws.tidemark(["-r", "repo", "diff", ids[0]])
    #expect(bad.status == 1)
  }

  @Test func findMatchesWhatResticFinds() throws {
    let ws = try Workspace("find")
    let ids = try makeHistory(ws)
    let searches: [[String]] = [
      ["*.txt"], ["sub"], ["sub/*.txt", "/src/sub/deep"], ["**/num.log", "/src/**/*.md"], ["-i", "*.md", "B.TXT"],
      ["[a-c]*", "link", "src/*/deep/*"], ["*", "--oldest", "2021-01-01"], ["*.txt", "--newest", "2021-01-01 00:00"],
      ["nothing-matches"], ["turns-dir", "-s", ids[1], "--host", "otherhost"], ["*.txt", "--tag", "two"],
    ]
    for s in searches {
      let args = ["-r", "repo", "find", "--json"] + s
      let r = try ws.restic(args)
      let t = try ws.tidemark(args)
      #expect(t.status == 0, "\(t.stderr)")
      let want = try findResults(r)
      #expect(try findResults(t) == want, "find \(s):\n--- restic\n\(r.out)\n--- tidemark\n\(t.out)")
      #expect(!want.isEmpty || s == ["nothing-matches"], "find \(s) found nothing")
    }
    // Text output, one snapshot at a time (restic 0.14 lists several in no particular order).
    for extra in [["-l", "sub"], ["-l", "newlink", "fifo", "turns-dir"]] {
      let args = ["-r", "repo", "find", "-s", ids[1]] + extra
      #expect(try ws.tidemark(args).out == (try ws.restic(args).out), "find \(extra)")
    }
    // Snapshots come oldest first.
    let all = try ws.tidemark(["-r", "repo", "find", "a.txt"]).out.split(separator: "\n").filter {
      $0.hasPrefix("Found")
    }
    #expect(all.map { String($0.split(separator: " ")[5]) } == ids.map { String($0.prefix(8)) })
    let bad = try ws.tidemark(["-r", "repo", "find", "["])
    #expect(bad.status == 1 && bad.stderr.contains("syntax error in pattern"))
  }

  @Test func findPackNamesTheFilesThatUseIt() throws {
    let ws = try Workspace("findpack")
    let ids = try makeHistory(ws)
    // Which packs hold data blobs and which hold trees, from the index.
    var dataPacks: [String] = []
    var treePacks: [String] = []
    for index in try ws.restic(["-r", "repo", "list", "index"]).out.split(separator: "\n") {
      let v = try JSONSerialization.jsonObject(
        with: Data(try ws.restic(["-r", "repo", "cat", "index", String(index)]).stdout))
      for p in (v as! [String: Any])["packs"] as! [[String: Any]] {
        let types = Set((p["blobs"] as! [[String: Any]]).map { $0["type"] as! String })
        if types.contains("data") { dataPacks.append(p["id"] as! String) }
        if types.contains("tree") { treePacks.append(p["id"] as! String) }
      }
    }
    try #require(!dataPacks.isEmpty && !treePacks.isEmpty)
    for p in dataPacks {
      for ref in [p, String(p.prefix(8))] {
        let args = ["-r", "repo", "find", "--json", "--pack", ref]
        let want = try findResults(try ws.restic(args))
        #expect(!want.isEmpty)
        let got = try findResults(try ws.tidemark(args))
        #expect(got == want, "find --pack \(ref)")
      }
    }
    // The same file by blob ID, full and short.
    let big = try ws.tidemark(["-r", "repo", "find", "--pack", dataPacks[0], "--json"])
    let first = try #require((try jsonObject(big) as? [[String: Any]])?.first)
    let blob = first["id"] as! String
    for ref in [blob, String(blob.prefix(8))] {
      let args = ["-r", "repo", "find", "--json", "--blob", ref]
      #expect(try findResults(try ws.tidemark(args)) == (try findResults(try ws.restic(args))))
    }
    let shown = try ws.tidemark(["-r", "repo", "find", "--blob", String(blob.prefix(8)), "--show-pack-id"]).out
    #expect(shown.contains("Object belongs to pack "))

    // Beyond restic: a pack of trees names the directories stored in it (restic's find --pack reports only files).
    let trees = try ws.tidemark(["-r", "repo", "find", "--pack", treePacks[0], "--json"])
    let dirs = try #require(try jsonObject(trees) as? [[String: Any]])
    #expect(!dirs.isEmpty && dirs.allSatisfy { $0["object_type"] as? String == "tree" })
    #expect(dirs.contains { $0["path"] as? String == "/src" })

    // A damaged pack (its header unreadable) is still named from the index, with the files it held.
    let victim = ws.sub("repo/data/\(dataPacks[0].prefix(2))/\(dataPacks[0])")
    let before = try findResults(try ws.tidemark(["-r", "repo", "find", "--json", "--pack", dataPacks[0]]))
    _ = try Tools.sh("chmod u+w '\(victim)' && truncate -s 100 '\(victim)'", cwd: ws.path)
    let damaged = try ws.tidemark(["-r", "repo", "find", "--json", "--pack", dataPacks[0]])
    #expect(damaged.status == 0, "\(damaged.stderr)")
    #expect(damaged.stderr.contains("getting their blobs from the repository index"))
    #expect(try findResults(damaged) == before)
    #expect(Set(before.keys).isSubset(of: Set(ids)))
    let missing = try ws.tidemark(["-r", "repo", "find", "--pack", "0123456789abcdef"])
    #expect(missing.status == 1 && missing.stderr.contains("unable to find pack(s)"))
  }
}
