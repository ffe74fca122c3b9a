// The JSON summaries of check, prune, copy and replicate: exact keys, order and number formats, which scripts
// and monitoring read.
import Testing
import TidemarkCore

@testable import TidemarkOperations

struct SummaryJSONTests {
  static func text(_ b: [UInt8]) -> String { String(decoding: b, as: UTF8.self) }

  @Test func checkReportNamesDamagedPacksAndErrors() {
    var r = CheckReport()
    r.errors = ["pack x: \"bad\""]
    r.snapshots = 2
    r.packs = 3
    let pack = PackID(RawID.hash([1]))
    r.damaged = [(pack: pack, reason: "hash", affected: [])]
    #expect(
      Self.text(r.json())
        == "{\"message_type\":\"summary\",\"ok\":false,\"errors\":[\"pack x: \\\"bad\\\"\"],\"notes\":[],"
        + "\"snapshots\":2,\"trees\":0,\"packs\":3,\"index_files\":0,\"packs_read\":0,\"bytes_read\":0,"
        + "\"damaged_packs\":[{\"pack\":\"\(pack.hex)\",\"reason\":\"hash\",\"affected\":[]}]}\n")
  }

  @Test func pruneStatsCarryDerivedSizes() {
    var st = PruneStats()
    st.removeBytes = 10
    st.repackRemovedBytes = 5
    st.unreferencedBytes = 1
    st.unusedBytes = 20
    let s = Self.text(st.json(dryRun: true))
    #expect(s.hasPrefix("{\"message_type\":\"summary\",\"dry_run\":true,\"used_blobs\":0,"))
    #expect(s.contains(",\"pruned_size\":16,\"unused_size_after\":5,"))
    #expect(s.hasSuffix(",\"index_files_written\":0,\"index_files_removed\":0}\n"))
  }

  @Test func copyStatsListCopiedAndSkippedPairs() {
    var st = Copy.Stats()
    let a = SnapshotID(RawID.hash([1]))
    let b = SnapshotID(RawID.hash([2]))
    st.copied = [(source: a, copy: b)]
    st.bytesStored = 7
    #expect(
      Self.text(st.json())
        == "{\"message_type\":\"summary\",\"snapshots_copied\":1,\"snapshots_skipped\":0,"
        + "\"copied\":[{\"source\":\"\(a.hex)\",\"snapshot_id\":\"\(b.hex)\"}],\"skipped\":[],"
        + "\"tree_blobs\":0,\"data_blobs\":0,\"data_added\":0,\"data_added_packed\":7,\"packs_written\":0}\n")
  }

  @Test func replicaStatsSayWhetherTheSyncFailed() {
    var st = ReplicaStats()
    st.packsCopied = 1
    st.packBytes = 100
    st.snapshotBytes = 5
    st.seconds = 1.25
    let failed = Self.text(st.json(created: true, target: "/r", error: "pack damaged"))
    #expect(failed.hasPrefix("{\"message_type\":\"summary\",\"ok\":false,\"target\":\"/r\",\"created\":true,"))
    #expect(failed.contains(",\"bytes_copied\":105,"))
    #expect(failed.hasSuffix(",\"notes\":[],\"error\":\"pack damaged\",\"duration_seconds\":1.250}\n"))
    let ok = Self.text(st.json(created: false, target: "/r", error: nil))
    #expect(ok.contains("\"ok\":true") && !ok.contains("\"error\""))
  }
}
