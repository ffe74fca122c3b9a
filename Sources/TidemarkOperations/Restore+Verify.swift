// Verification (`verify`): what was written is read back and hashed blob by blob.
import Foundation
import TidemarkCore
import TidemarkSystem

extension Restore {
  /// With `verify`, re-reads what was written and hashes it blob by blob.
  func verifyWritten(_ run: RunContext) async {
    guard options.verify else { return }
    for job in run.jobs where !job.failed.withLock({ $0 }) {
      do {
        let n = try await Blocking.run { try self.verifyFile(job.path, job.item.node) }
        state.withLock { $0.bytesVerified += n }
      } catch {
        fail("\(job.path): verification failed: \(error)")
      }
    }
  }

  /// Blocking: reads `p` back and checks every blob of `n` against its ID; returns the bytes checked.
  func verifyFile(_ p: BytePath, _ n: Node) throws -> Int64 {
    let fd = try Sys.open(p, O_RDONLY | O_NOFOLLOW)
    defer { Sys.close(fd) }
    var buf: [UInt8] = []
    var off: Int64 = 0
    for id in n.content ?? [] {
      guard let e = repo.index.lookup(id) else { throw TidemarkError.corrupt("blob \(id.short) is not in the index") }
      let len = Int(e.blob.plainLength)
      buf.resizeReusing(len)
      let got = try buf.withUnsafeMutableBytes { try Sys.pread(fd, $0, offset: off) }
      guard got == len, RawID.hash(buf) == id.raw else {
        throw TidemarkError.corrupt("bytes \(off)..<\(off + Int64(len)) differ from blob \(id.short)")
      }
      off += Int64(len)
    }
    guard Int64(try Sys.fstat(fd).size) == off else { throw TidemarkError.corrupt("size differs from the snapshot") }
    return off
  }
}
