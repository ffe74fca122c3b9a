// What the restic-compatible commands decide before printing: which nodes `ls` lists, what `forget` removes,
// how the flags become a policy, how `find` reads IDs, and the exact JSON documents restic's tools parse.
import Foundation
import Testing
import TidemarkCore
import TidemarkSystem

@testable import TidemarkOperations

private func snapshot(_ n: Int, host: String = "h", paths: [String] = ["/srv"]) -> Snapshot {
  var s = Snapshot(
    time: Timestamp(seconds: 1_700_000_000 + Int64(n) * 3600, nanoseconds: 0, offset: 0),
    tree: BlobID(RawID.hash([])), paths: paths)
  s.hostname = host
  s.id = SnapshotID(RawID.hash(Array("snapshot \(n)".utf8)))
  return s
}

private func text(_ b: [UInt8]) -> String { String(decoding: b, as: UTF8.self) }

@Suite struct ListingTests {
  @Test func withoutDirectoriesEverythingIsListed() {
    let f = ListingFilter(dirs: [], recursive: false)
    #expect(f.wanted([Array("a".utf8), Array("b".utf8)]) == (true, true))
  }

  @Test func directoriesLimitTheListing() {
    let c = { (p: String) in Array(p.utf8).split(separator: 47).map(Array.init) }
    let flat = ListingFilter(dirs: ["/srv/www"], recursive: false)
    #expect(flat.wanted(c("srv")) == (false, true))
    #expect(flat.wanted(c("srv/www")) == (false, true))
    #expect(flat.wanted(c("srv/www/index.html")) == (true, false))
    #expect(flat.wanted(c("srv/www/img/logo.png")) == (false, false))
    #expect(flat.wanted(c("etc")) == (false, false))
    let deep = ListingFilter(dirs: ["/srv/www"], recursive: true)
    #expect(deep.wanted(c("srv/www/img")) == (true, true))
    #expect(deep.wanted(c("srv/www/img/logo.png")) == (true, true))
    #expect(deep.wanted(c("srv/other")) == (false, false))
  }

  @Test func permissionsAsResticLsPrintsThem() {
    #expect(Listing.permissions(GoMode.dir | 0o755) == "drwxr-xr-x")
    #expect(Listing.permissions(GoMode.symlink | 0o777) == "Lrwxrwxrwx")
    #expect(Listing.permissions(GoMode.device | GoMode.charDevice | 0o620) == "crw--w----")
    #expect(Listing.permissions(0o644) == "-rw-r--r--")
  }

  @Test func latestKeepsTheNewestPerHostAndPaths() {
    let snaps = [
      snapshot(1), snapshot(2, host: "b"), snapshot(3), snapshot(4, paths: ["/etc"]), snapshot(5),
    ]
    let latest = Listing.latest(snaps, perGroup: 2)
    #expect(latest.map(\.id) == [snaps[1], snaps[2], snaps[3], snaps[4]].map(\.id))
  }

  @Test func nodeJSONHasResticsFields() {
    var n = Node(name: Array("a<b".utf8), type: .file)
    n.mode = 0o640
    n.size = 12
    let line = text(Listing.nodeJSON(n, path: Array("/x/a<b".utf8)))
    #expect(line.hasPrefix("{\"name\":\"a\\u003cb\",\"type\":\"file\",\"path\":\"/x/a\\u003cb\",\"uid\":0,\"gid\":0"))
    #expect(line.contains(",\"size\":12,\"mode\":416,\"permissions\":\"-rw-r-----\""))
    #expect(line.hasSuffix(",\"struct_type\":\"node\"}\n"))
  }
}

@Suite struct ForgetDecisionTests {
  @Test func flagsBecomeAPolicy() throws {
    let p = try ForgetPolicy(
      last: 2, hourly: 0, daily: 7, weekly: 0, monthly: 0, yearly: 0, within: "1m", withinHourly: "",
      withinDaily: "", withinWeekly: "", withinMonthly: "", withinYearly: "2y", keepTags: ["a,b"])
    #expect((p.last, p.daily) == (2, 7))
    #expect(p.within == RetentionDuration(months: 1))
    #expect(p.withinYearly == RetentionDuration(years: 2))
    #expect(p.keepTags == [["a", "b"]])
  }

  @Test func negativeCountsAndBadDurationsAreRefused() {
    func policy(daily: Int = 0, within: String = "") throws -> ForgetPolicy {
      try ForgetPolicy(
        last: 0, hourly: 0, daily: daily, weekly: 0, monthly: 0, yearly: 0, within: within, withinHourly: "",
        withinDaily: "", withinWeekly: "", withinMonthly: "", withinYearly: "", keepTags: [])
    }
    #expect(throws: TidemarkError.self) { try policy(daily: -1) }
    do {
      _ = try policy(within: "3x")
      Issue.record("3x accepted")
    } catch let e as TidemarkError {
      #expect(e.message.hasPrefix("invalid argument \"3x\" for \"--keep-within\" flag: "))
    } catch {
      Issue.record("unexpected \(error)")
    }
  }

  @Test func namedSnapshotsAreRemovedExactly() {
    let all = (1...4).map { snapshot($0) }
    let d = Forget.decide(
      all, names: [all[2].id!.hex, all[0].id!.short, "ffffffff", all[2].id!.hex], policy: ForgetPolicy(),
      grouping: .default, filter: SnapshotFilter(hosts: [], tags: [], paths: []))
    #expect(d.remove == [all[2].id!, all[0].id!].sorted())
    #expect(d.groups.isEmpty)
    #expect(d.problems == [.notFound("ffffffff")])
  }

  @Test func thePolicyDecidesPerGroup() {
    let all = [snapshot(1), snapshot(2, host: "b"), snapshot(3), snapshot(4, host: "b"), snapshot(5, host: "c")]
    var policy = ForgetPolicy()
    policy.last = 1
    let d = Forget.decide(
      all, names: [], policy: policy, grouping: .default,
      filter: SnapshotFilter(hosts: ["b", "h"], tags: [], paths: []))
    #expect(d.groups.count == 2)
    #expect(d.remove == [all[0].id!, all[1].id!].sorted())
    let none = Forget.decide(
      all, names: [], policy: ForgetPolicy(), grouping: .default, filter: SnapshotFilter(hosts: [], tags: [], paths: [])
    )
    #expect(none.remove.isEmpty && none.groups.isEmpty)
  }

  @Test func jsonWritesEmptyListsAsNull() {
    var policy = ForgetPolicy()
    policy.last = 1
    let groups = Forget.plan([snapshot(1)], policy: policy, grouping: SnapshotGrouping())
    let json = text(Forget.json(groups))
    #expect(json.hasPrefix("[{\"tags\":null,\"host\":\"\",\"paths\":null,\"keep\":[{"))
    #expect(json.contains("\"remove\":null,\"reasons\":[{\"snapshot\":{"))
    #expect(json.contains(",\"matches\":[\"last snapshot\"],\"counters\":{"))
    #expect(json.hasSuffix("}}]}]\n"))
    #expect(text(Forget.json([])) == "[]\n")
  }

  @Test func snapshotPathsAreMadeAbsoluteAsGoDoes() {
    #expect(SnapshotSelection.absolute("/a/./b/../c/") == "/a/c")
    #expect(SnapshotSelection.absolute("/../x") == "/x")
    #expect(
      SnapshotSelection.absolute("d") == SnapshotSelection.absolute(FileManager.default.currentDirectoryPath + "/d"))
  }
}

@Suite struct ResultDocumentTests {
  @Test func goFloatsInJSON() {
    func f(_ v: Double) -> String {
      var w = JSONWriter()
      w.number(v)
      return text(w.out)
    }
    #expect(f(2) == "2")
    #expect(f(0.5) == "0.5")
    #expect(f(1e-7) == "1e-7")
    #expect(f(1e21) == "1e+21")
    #expect(f(1.5e20) == "150000000000000000000")
    #expect(f(1.25e-5) == "0.0000125")
    #expect(f(100.0 / 3) == "33.333333333333336")
  }

  @Test func statsJSONAddsCompressionFieldsWhenSet() {
    var s = RepositoryStats()
    s.totalSize = 100
    s.snapshotsCount = 2
    #expect(s.json == "{\"total_size\":100,\"total_file_count\":0,\"snapshots_count\":2}")
    s.totalUncompressedSize = 200
    s.compressedBlobsSize = 100
    s.compressedBlobsUncompressedSize = 200
    s.totalBlobCount = 3
    #expect(
      s.json
        == "{\"total_size\":100,\"total_uncompressed_size\":200,\"compression_ratio\":2,\"compression_progress\":100,"
        + "\"compression_space_saving\":50,\"total_file_count\":0,\"total_blob_count\":3,\"snapshots_count\":2}")
  }

  @Test func diffJSON() {
    var st = DiffStatistics()
    st.changedFiles = 1
    st.added.files = 2
    st.removed.bytes = 9
    #expect(
      text(st.json(source: "a", target: "latest"))
        == "{\"message_type\":\"statistics\",\"source_snapshot\":\"a\",\"target_snapshot\":\"latest\",\"changed_files\":1,"
        + "\"added\":{\"files\":2,\"dirs\":0,\"others\":0,\"data_blobs\":0,\"tree_blobs\":0,\"bytes\":0},"
        + "\"removed\":{\"files\":0,\"dirs\":0,\"others\":0,\"data_blobs\":0,\"tree_blobs\":0,\"bytes\":9}}\n")
    let c = DiffChange(path: Array("/a&b".utf8), modifier: "+")
    #expect(text(c.json) == "{\"message_type\":\"change\",\"path\":\"/a\\u0026b\",\"modifier\":\"+\"}\n")
  }

  @Test func findReadsFullAndShortIDs() {
    let id = BlobID(RawID.hash([1]))
    let sel = BlobSelector(refs: [id.hex, "0123abcd"])
    #expect(sel.ids == [id])
    #expect(sel.shortIDs == ["0123abcd"])
    let tree = BlobID(RawID.hash([2]))
    let (data, trees) = BlobSelector.split([
      PackedBlob(id: id, type: .data, offset: 0, length: 1, uncompressedLength: 0),
      PackedBlob(id: tree, type: .tree, offset: 1, length: 1, uncompressedLength: 0),
    ])
    #expect(data.contains(id) && !data.contains(tree))
    #expect(trees.contains(tree) && !trees.contains(id))
  }

  @Test func findNodeJSONLeavesOutEmptyFields() {
    var n = Node(name: Array("f".utf8), type: .symlink)
    n.mode = GoMode.symlink | 0o777
    n.linkTarget = Array("t".utf8)
    var w = JSONWriter()
    Find.nodeJSON(&w, Array("/f".utf8), n)
    let json = text(w.out)
    #expect(json.hasPrefix("{\"path\":\"/f\",\"permissions\":\"Lrwxrwxrwx\",\"type\":\"symlink\",\"mode\":\(n.mode),"))
    #expect(json.hasSuffix("\"uid\":0,\"gid\":0,\"linktarget\":\"t\"}"))
  }

  @Test func restoreArgumentsAndTheirPaths() throws {
    let (ref, path) = try RestoreSelection.parse("latest:/srv/www")
    #expect(ref == "latest")
    #expect(path == [Array("srv".utf8), Array("www".utf8)])
    #expect(try RestoreSelection.parse("abc").path.isEmpty)
    #expect(throws: TidemarkError.self) { try RestoreSelection.parse("abc:/srv/../etc") }
    #expect(throws: TidemarkError.self) { try RestoreSelection.parse("/mnt/x", path: [Array(".".utf8)]) }
    #expect(try RestoreSelection.parse("/mnt/x", path: [Array("a".utf8)]).path == [Array("a".utf8)])
  }

  @Test func restoreOnRootWithDeleteIsRefused() throws {
    let whole = RestoreSelection(
      tree: BlobID(RawID.hash([])), only: nil, rootNode: nil, path: [], destination: BytePath("/"))
    var opts = RestoreOptions(target: BytePath("/tmp"))
    try whole.configure(&opts)
    #expect(opts.target == BytePath("/"))
    opts.delete = true
    #expect(throws: TidemarkError.self) { try whole.configure(&opts) }
  }

  @Test func itemizedChangeJSONKeepsTheCodeAsIs() {
    let c = ItemizedChange(code: ">f+++++++++", path: Array("a/b".utf8), size: 5, action: "restored")
    #expect(
      c.json
        == "{\"message_type\":\"verbose_status\",\"action\":\"restored\",\"change\":\">f+++++++++\",\"item\":\"a/b\",\"size\":5}"
    )
  }

  @Test func backupTimeAndExcludeFiles() throws {
    #expect(try BackupOptions.parseTime("2024-01-02 03:04:05") == Timestamp(rfc3339: "2024-01-02T03:04:05Z"))
    #expect(throws: TidemarkError.self) { try BackupOptions.parseTime("yesterday") }
    let file = FileManager.default.temporaryDirectory.appendingPathComponent("tidemark-excludes-\(getpid())")
    try "# caches\n*.tmp\n\n  /var/cache  \n".write(to: file, atomically: true, encoding: .utf8)
    defer { try? FileManager.default.removeItem(at: file) }
    #expect(try BackupOptions.readExcludeFile(file.path) == ["*.tmp", "/var/cache"])
    #expect(throws: TidemarkError.self) { try BackupOptions.readExcludeFile(file.path + ".missing") }
  }
}

@Suite struct CommandArgumentTests {
  @Test func repositoryVersions() throws {
    #expect(try Repository.formatVersion("1") == 1)
    #expect(try Repository.formatVersion("latest") == 2)
    #expect(throws: TidemarkError.self) { try Repository.formatVersion("3") }
  }

  @Test func statsModes() throws {
    #expect(try StatsMode(parsing: "raw-data") == .rawData)
    #expect(throws: TidemarkError.self) { try StatsMode(parsing: "files") }
  }

  @Test func groupDescriptionAsResticPrintsIt() {
    let key = SnapshotGrouping.Key(hostname: "h", paths: ["/x", "/y"], tags: ["a", "b"])
    #expect(key.description == "host [h], tags [a, b], paths [/x, /y]")
    #expect(SnapshotGrouping.Key(hostname: "", paths: nil, tags: nil).description == "")
  }

  @Test func findJSONDocumentFramesSnapshots() {
    var doc = FindMatchesJSON()
    #expect(doc.end == "[]")
    let n = Node(name: Array("f".utf8), type: .file)
    let id = SnapshotID(RawID.hash([1]))
    var out = doc.match(Array("/f".utf8), n, hit: 0) + doc.match(Array("/g".utf8), n, hit: 1)
    out += doc.snapshotEnd(id, hits: 2) + doc.match(Array("/f".utf8), n, hit: 0)
    let json = text(out)
    #expect(json.hasPrefix("[{\"matches\":[{\"path\":\"/f\","))
    #expect(json.contains("},{\"path\":\"/g\","))
    #expect(json.contains("}],\"hits\":2,\"snapshot\":\"\(id.hex)\"},{\"matches\":[{\"path\":\"/f\","))
    #expect(doc.end == "]")
  }
}

@Suite struct BackupAndRestoreFlagTests {
  @Test func backupFlagsBecomeOptions() throws {
    let opts = try BackupOptions(
      paths: ["/"], host: "web1", tags: ["a,b", "c"], excludes: ["*.tmp"], excludeFiles: [], time: nil)
    #expect(opts.host == "web1")
    #expect(opts.tags == ["a", "b", "c"])
    #expect(opts.excludes.map(\.text) == ["*.tmp"])
    #expect(throws: TidemarkError.self) {
      try BackupOptions(
        paths: ["/nonexistent-\(getpid())"], host: nil, tags: [], excludes: [], excludeFiles: [], time: nil)
    }
  }

  @Test func overwritePolicies() throws {
    #expect(try OverwritePolicy(parsing: "if-newer") == .ifNewer)
    #expect(throws: TidemarkError.self) { try OverwritePolicy(parsing: "sometimes") }
  }
}
