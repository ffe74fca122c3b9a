// Directories kept open after their listing, so that work on their entries resolves one name (`openat`)
// instead of the entry's whole path: for a tree of many small files, the path walk of every open was a
// large part of the kernel's time.
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// How many descriptors may be held open this way at once. A holder that finds none left works by path:
/// a deep or wide tree never uses up the process's descriptors.
public final class DescriptorBudget: Sendable {
  private let left: Atomic<Int>

  public init(_ count: Int) { left = Atomic(count) }

  /// Takes one if one is left.
  public func take() -> Bool {
    var n = left.load(ordering: .relaxed)
    while n > 0 {
      let (done, now) = left.compareExchange(expected: n, desired: n - 1, ordering: .relaxed)
      if done { return true }
      n = now
    }
    return false
  }

  public func give() { left.add(1, ordering: .relaxed) }
}

/// An open directory descriptor, closed (and given back to its budget) when the last holder lets go.
public final class OpenDirectory: Sendable {
  public let fd: Int32
  private let budget: DescriptorBudget

  init(fd: Int32, budget: DescriptorBudget) {
    self.fd = fd
    self.budget = budget
  }

  deinit {
    Sys.close(fd)
    budget.give()
  }
}
