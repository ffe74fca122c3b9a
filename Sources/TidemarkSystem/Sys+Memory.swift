// glibc allocator tuning: the process's peak RSS depends on it as much as on its own buffers.
internal import CPosix

#if canImport(Glibc)
  import Glibc
#endif

extension Sys {
  /// Keeps RSS close to live memory in a program that passes multi-MiB buffers between threads:
  /// glibc's default of 8 arenas per core keeps freed buffers in many fragmented arenas, and its
  /// dynamic mmap threshold climbs to 16 MiB after the first pack is freed, after which packs are
  /// carved from (and fragment) the heap. A fixed 4 MiB threshold returns packs to the OS when freed
  /// while chunk-sized buffers stay in the arenas (256 KiB cost ~3 s of page faults per GiB; 4 MiB
  /// costs little). Measured with scripts/bench.sh: restore peak RSS 150 → 80 MB, backup 135 → 115 MB.
  ///
  /// The mount passes a larger threshold: its pack windows (4 MiB and a bit) come and go all the time,
  /// and faulting in fresh pages for each cost a third of a large read's CPU.
  ///
  /// Setting the mmap threshold also pins the trim threshold at 128 KiB, so arenas hand the top of
  /// the heap back after most freed chunks and fault it in again (~250,000 page faults for a first
  /// backup of the 1 GiB bench corpus). A 16 MiB trim threshold cut that to ~90,000 and the backup's
  /// kernel time by ~0.3 s, but added 10-40 MiB (and much run-to-run spread) to peak RSS, which must
  /// stay below restic's: it is left at the default. Long-running processes call
  /// `releaseFreeMemory()` when they go idle.
  public static func tuneMalloc(arenas: Int32 = 2, mmapThreshold: Int32 = 4 << 20, trimThreshold: Int32? = nil) {
    _ = mallopt(M_ARENA_MAX, arenas)
    _ = mallopt(M_MMAP_THRESHOLD, mmapThreshold)
    if let trimThreshold { _ = mallopt(M_TRIM_THRESHOLD, trimThreshold) }
  }

  /// Returns the allocator's free memory to the kernel (after a daemon's cycle, before it sleeps).
  public static func releaseFreeMemory() { _ = malloc_trim(0) }
}
