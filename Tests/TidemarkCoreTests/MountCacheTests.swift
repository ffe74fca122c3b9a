// The mount's blob cache (CLOCK): what a sweep evicts first.
import Testing

@testable import TidemarkMount

@Suite struct MountCacheTests {
  /// A reader has used A; B and C were fetched ahead of it. When D arrives, A goes, not the unread B.
  @Test func blobsFetchedAheadOutliveOnesAlreadyRead() {
    var c = ClockCache<String, Int>(limit: 3)
    c.insert("A", 1, cost: 1)
    #expect(c.get("A") == 1)
    c.insert("B", 2, cost: 1, wanted: true)
    c.insert("C", 3, cost: 1, wanted: true)
    c.insert("D", 4, cost: 1, wanted: true)
    #expect(!c.contains("A") && c.contains("B") && c.contains("C") && c.contains("D") && c.cost == 3)
    // Entries nobody marked go first, oldest first; a read gives an entry its second chance back.
    c.insert("E", 5, cost: 1)
    #expect(!c.contains("B") && c.contains("C") && c.contains("D") && c.contains("E"))
    #expect(c.get("C") == 3)
    c.insert("F", 6, cost: 1)
    #expect(c.contains("C") && c.contains("F") && c.count == 3)
  }

  /// The newest entry stays even when it alone is over the limit.
  @Test func anOversizedEntryStaysAlone() {
    var c = ClockCache<Int, [UInt8]>(limit: 10)
    c.insert(1, [1], cost: 4)
    c.insert(2, [2], cost: 20)
    #expect(!c.contains(1) && c.contains(2) && c.count == 1 && c.cost == 20)
  }

  /// A removed entry gives its cost back; its old place in the queue is skipped, and it can come back.
  @Test func removedEntriesFreeTheirCostAndMayReturn() {
    var c = ClockCache<String, Int>(limit: 3)
    for k in ["A", "B", "C"] { c.insert(k, 0, cost: 1) }
    c.remove("A")
    c.remove("nothing")
    #expect(!c.contains("A") && c.cost == 2 && c.count == 2)
    c.insert("D", 4, cost: 1)
    #expect(c.contains("B") && c.contains("C") && c.contains("D") && c.cost == 3)
    c.insert("A", 1, cost: 1)
    #expect(c.get("A") == 1 && c.count == 3 && c.cost == 3 && !c.contains("B"))
  }
}
