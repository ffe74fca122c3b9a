// The tripwire's judgement: most files changed, and more than usual; or changed data turned incompressible.
import Testing
import TidemarkOperations

@testable import TidemarkEngine

struct TripwireTests {
  static func profile(before: Int, modified: Int, deleted: Int = 0, bytes: UInt64 = 0, turned: UInt64 = 0)
    -> ChangeProfile
  {
    var p = ChangeProfile()
    (p.filesBefore, p.modified, p.deleted, p.changedBytes, p.turnedIncompressible) =
      (before, modified, deleted, bytes, turned)
    return p
  }

  @Test func mostFilesChangedTripsUnlessThatIsUsual() {
    let c = EngineConfig.Tripwire()
    let attack = Self.profile(before: 1000, modified: 700, deleted: 100)
    let evidence = Tripwire.judge(attack, history: [0.01, 0.02, 0.01], config: c)
    #expect(evidence?.contains("800 of 1000 files (80%) modified or deleted") == true, "\(evidence ?? "nil")")
    // A tree that is rewritten every cycle (a dump directory) is its own baseline.
    #expect(Tripwire.judge(attack, history: [0.75, 0.8, 0.85], config: c) == nil)
    // A handful of files is no evidence, however large its share.
    #expect(Tripwire.judge(Self.profile(before: 10, modified: 10), history: [], config: c) == nil)
    var off = c
    off.enabled = false
    #expect(Tripwire.judge(attack, history: [], config: off) == nil)
  }

  @Test func changedBytesTurningIncompressibleTrips() {
    let c = EngineConfig.Tripwire()
    // Only 10% of the files, but every one of them encrypted.
    let p = Self.profile(before: 1000, modified: 100, bytes: 50 << 20, turned: 48 << 20)
    let evidence = Tripwire.judge(p, history: [], config: c)
    #expect(
      evidence?.contains("96% of the 50.000 MiB changed turned from compressible to incompressible") == true,
      "\(evidence ?? "nil")")
    #expect(
      Tripwire.judge(
        Self.profile(before: 1000, modified: 100, bytes: 50 << 20, turned: 1 << 20), history: [], config: c) == nil)
  }
}
