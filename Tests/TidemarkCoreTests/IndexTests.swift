// The in-memory index (compact table behind MasterIndex) and the direct index-file reader.
import Testing
import TidemarkCore

@Suite struct IndexTests {
  /// A blob ID made from a number, spread over all four words like a digest.
  func blobID(_ n: Int) -> BlobID {
    var x = UInt64(n) &* 0x9E37_79B9_7F4A_7C15 &+ 1
    var w: [UInt64] = []
    for _ in 0..<4 {
      x ^= x >> 31
      x = x &* 0xBF58_476D_1CE4_E5B9
      w.append(x)
    }
    return BlobID(RawID(words: (w[0], w[1], w[2], w[3])))
  }

  func packID(_ n: Int) -> PackID { PackID(blobID(1_000_000_000 + n).raw) }

  func blob(_ n: Int, type: BlobType = .data) -> PackedBlob {
    PackedBlob(
      id: blobID(n), type: type, offset: UInt32(n * 10), length: UInt32(n + 33),
      uncompressedLength: n % 2 == 0 ? 0 : UInt32(n + 100))
  }

  @Test func lookupCountsAndDuplicates() {
    let index = MasterIndex()
    // Enough blobs to span several segments and slot-table growths.
    let n = 200_000
    for p in 0..<(n / 1000) {
      index.add(pack: packID(p), blobs: (p * 1000..<(p + 1) * 1000).map { blob($0, type: $0 % 7 == 0 ? .tree : .data) })
    }
    #expect(index.blobCount == n)
    for k in stride(from: 0, to: n, by: 997) {
      let e = index.lookup(blobID(k))
      #expect(e?.pack == packID(k / 1000))
      #expect(e?.blob == blob(k, type: k % 7 == 0 ? .tree : .data))
      #expect(index.has(blobID(k)))
    }
    #expect(index.lookup(blobID(n + 5)) == nil)
    #expect(!index.has(blobID(n + 5)))
    // A duplicate in another pack keeps the first location and is not counted twice; the pack is known.
    index.add(pack: packID(9999), blobs: [blob(3), blob(n + 1)])
    #expect(index.blobCount == n + 1)
    #expect(index.lookup(blobID(3))?.pack == packID(0))
    #expect(index.lookup(blobID(n + 1))?.pack == packID(9999))
    #expect(Set(index.packIDs) == Set((0..<(n / 1000)).map(packID) + [packID(9999)]))
    let all = index.allEntries
    #expect(all.count == n + 1)
    #expect(Set(all.map(\.blob.id)).count == n + 1)
  }

  @Test func indexFileRoundTripsThroughTheReader() throws {
    var f = IndexFile()
    f.supersedes = [IndexID(blobID(77).raw)]
    f.packs = [(packID(1), [blob(1), blob(2, type: .tree)]), (packID(2), []), (packID(3), [blob(4)])]
    let back = try IndexFile(json: f.encode())
    #expect(back.supersedes == f.supersedes)
    #expect(back.packs.map(\.id) == f.packs.map(\.id))
    #expect(back.packs.map(\.blobs) == f.packs.map(\.blobs))
    let index = MasterIndex()
    index.add(back)
    #expect(index.blobCount == 3)
    #expect(index.lookup(blobID(2))?.blob.type == .tree)
  }

  @Test func indexFileReaderAcceptsAnyKeyOrderAndUnknownKeys() throws {
    let id = String(repeating: "ab", count: 32)
    let pid = String(repeating: "0f", count: 32)
    let json = """
      { "packs" : [ { "blobs": [ {"length": 40, "x": {"y": [1, "z"]}, "type": "data", "offset": 0, "id": "\(id)"} ],
      "id": "\(pid)" } ], "supersedes": null }
      """
    let f = try IndexFile(json: Array(json.utf8))
    #expect(f.supersedes.isEmpty)
    #expect(f.packs.count == 1)
    #expect(f.packs[0].id.hex == pid)
    #expect(
      f.packs[0].blobs == [PackedBlob(id: BlobID(hex: id)!, type: .data, offset: 0, length: 40, uncompressedLength: 0)])
  }

  @Test func indexFileReaderRejectsDamage() {
    let id = String(repeating: "ab", count: 32)
    let pid = String(repeating: "0f", count: 32)
    for bad in [
      "{}",
      "{\"packs\":[{\"blobs\":[]}]}",
      "{\"packs\":[{\"id\":\"\(pid)\",\"blobs\":[{\"id\":\"\(id)\",\"type\":\"data\",\"offset\":0}]}]}",
      "{\"packs\":[{\"id\":\"\(pid)\",\"blobs\":[{\"id\":\"zz\",\"type\":\"data\",\"offset\":0,\"length\":1}]}]}",
      "{\"packs\":[{\"id\":\"\(pid)\",\"blobs\":[{\"id\":\"\(id)\",\"type\":\"blob\",\"offset\":0,\"length\":1}]}]}",
      "{\"packs\":[]} x",
      "{\"packs\":[",
    ] {
      #expect(throws: (any Error).self) { try IndexFile(json: Array(bad.utf8)) }
    }
  }
}
