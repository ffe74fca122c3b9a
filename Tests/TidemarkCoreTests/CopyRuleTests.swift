// restic 0.14's rule for "already copied" (`similarSnapshots` on the `original`-or-ID key) and the grouping of a
// pack's blobs into ranged reads.
import Testing
import TidemarkCore

@testable import TidemarkOperations

struct CopyRuleTests {
  static func id(_ n: UInt8) -> BlobID { BlobID(RawID.hash([n])) }
  static func snap(_ n: UInt8) -> Snapshot {
    var s = Snapshot(
      time: Timestamp(seconds: 1_700_000_000, nanoseconds: 5, offset: 3600), tree: id(0), paths: ["/a", "/b"])
    s.id = SnapshotID(RawID.hash([n, 1]))
    s.hostname = "h"
    s.username = "u"
    s.tags = ["x", "y"]
    s.excludes = ["*.tmp", "/c"]
    return s
  }

  @Test func similarIgnoresParentOriginalZoneAndOrderOfPathsAndTags() {
    let a = CopyRuleTests.snap(1)
    var b = a
    b.id = SnapshotID(RawID.hash([9]))
    b.parent = SnapshotID(RawID.hash([8]))
    b.original = a.id
    b.paths = ["/b", "/a"]
    b.tags = ["y", "x"]
    b.time.offset = 0  // the same instant
    #expect(Copy.similar(a, b))
    var c = b
    c.excludes = ["/c", "*.tmp"]  // excludes compare in order
    #expect(!Copy.similar(a, c))
    for change in [
      { (s: inout Snapshot) in s.time.nanoseconds += 1 }, { $0.tree = CopyRuleTests.id(7) }, { $0.hostname = "g" },
      { $0.username = "v" }, { $0.uid = 1 }, { $0.gid = 1 }, { $0.paths = ["/a"] }, { $0.tags = ["x", "z"] },
    ] {
      var d = b
      change(&d)
      #expect(!Copy.similar(a, d))
    }
    // restic compares tags (and paths) by count and containment, so [x, x] passes against [x, y]; kept as restic has it.
    var e = b
    e.tags = ["x", "x"]
    #expect(Copy.similar(a, e))
  }

  @Test func existingCopyIsFoundByOriginalOrByID() {
    let s = CopyRuleTests.snap(1)
    var copy = s
    copy.id = SnapshotID(RawID.hash([2]))
    copy.original = s.id
    #expect(Copy.existingCopy(of: s, in: [copy])?.id == copy.id)
    // A copy of the copy answers to the same original.
    var second = copy
    second.id = SnapshotID(RawID.hash([3]))
    #expect(Copy.existingCopy(of: second, in: [copy])?.id == copy.id)
    // The snapshot itself (copied verbatim) counts too; a different original does not.
    #expect(Copy.existingCopy(of: s, in: [s])?.id == s.id)
    var other = copy
    other.original = SnapshotID(RawID.hash([4]))
    #expect(Copy.existingCopy(of: s, in: [other]) == nil)
  }

  @Test func spansJoinNeighboursUpToAGapAndASize() {
    func blob(_ n: UInt8, _ off: Int, _ len: Int) -> PackedBlob {
      PackedBlob(
        id: CopyRuleTests.id(n), type: .data, offset: UInt32(off), length: UInt32(len), uncompressedLength: 0)
    }
    let mib = 1 << 20
    let spans = Copy.spans([
      blob(3, 2 * mib, mib), blob(1, 0, mib), blob(2, mib + 100, mib - 100),  // contiguous-ish: one read
      blob(4, 10 * mib, 100),  // far away
      blob(5, 10 * mib + 200, 7 * mib), blob(6, 17 * mib + 300, mib),  // would exceed 8 MiB
    ])
    #expect(spans.map(\.offset) == [0, 10 * mib, 17 * mib + 300])
    #expect(spans.map(\.length) == [3 * mib, 7 * mib + 200, mib])
    #expect(spans.map { $0.blobs.count } == [3, 2, 1])
  }
}
