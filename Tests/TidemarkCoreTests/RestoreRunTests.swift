// A restore reads each pack in runs of neighbouring blobs, and those runs are what its workers share out: a pack
// of thousands of small files becomes many runs, each small enough to keep the buffers in flight small.
import Testing
import TidemarkCore

@testable import TidemarkOperations

@Suite struct RestoreRunTests {
  func blob(_ n: UInt8, at offset: UInt32, length: UInt32) -> (PackedBlob, UInt8) {
    (PackedBlob(id: BlobID(RawID.hash([n])), type: .data, offset: offset, length: length, uncompressedLength: 0), n)
  }

  @Test func runsFollowThePackAndSpanAtMostFourMiB() {
    // 3,000 small blobs of 4 KiB (12 MB), handed over out of order, and three large ones behind them.
    var blobs: [(PackedBlob, UInt8)] = []
    for k in 0..<3000 { blobs.append(blob(UInt8(truncatingIfNeeded: k), at: UInt32(k) * 4096, length: 4096)) }
    let small = UInt32(3000 * 4096)
    blobs.append(blob(1, at: small, length: 6 << 20))  // larger than a run: a run of its own
    blobs.append(blob(2, at: small + (6 << 20), length: 1 << 20))
    blobs.append(blob(3, at: small + (7 << 20), length: 1 << 20))
    blobs.reverse()

    let runs = Restore.runs(blobs)
    let flat = runs.flatMap { $0 }
    #expect(flat.count == blobs.count)
    #expect(zip(flat, flat.dropFirst()).allSatisfy { $0.0.offset < $1.0.offset }, "runs keep the pack's order")
    for run in runs where run.count > 1 {
      let span = run.last!.0.offset + run.last!.0.length - run.first!.0.offset
      #expect(span <= 4 << 20, "a run of \(run.count) blobs spans \(span) bytes")
    }
    // 12 MB of small blobs is at least three runs: no one worker is left with them all.
    #expect(runs.filter { $0.allSatisfy { $0.0.length == 4096 } }.count >= 3)
    #expect(runs.contains { $0.count == 1 && $0[0].0.length == 6 << 20 })
  }
}
