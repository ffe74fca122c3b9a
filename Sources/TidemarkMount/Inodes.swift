// The inodes the kernel holds below snapshot directories, and the mount's cache budget.
import TidemarkCore

/// Every inode the kernel holds below a snapshot directory, with the kernel's lookup count, kept small.
///
/// The kernel may hold every entry of a snapshot at once: listings go out as readdirplus, where each entry
/// counts as a lookup, and the kernel forgets inodes only under memory pressure, so one `find` over 500,000
/// files leaves 500,000 of them here. An entry is therefore not a decoded node (hundreds of bytes with its
/// name, content list and owner strings) but 16 bytes: the directory tree it was found in (one shared record
/// per directory) and its position there. Its node is read from that tree when wanted, through the tree
/// cache, which loads the tree again if it let it go. Directories also keep their own tree's ID, so that
/// opening or listing one never needs its parent's tree. Entries go when the kernel forgets them.
struct InodeTable {
  struct Entry {
    var directory: UInt32
    var slot: UInt32
    var lookups: UInt64
  }
  /// A directory tree as reached from one snapshot directory (hard links are grouped per snapshot).
  struct Place: Hashable {
    var tree: BlobID
    var root: UInt64
  }
  private struct Directory {
    var place: Place
    var references: Int
  }

  private var entries: [UInt64: Entry] = [:]
  private var directories: [Directory] = []
  private var slots: [Place: UInt32] = [:]
  private var free: [UInt32] = []
  /// The tree of every directory inode held.
  private var subtrees: [UInt64: BlobID] = [:]
  /// The directory record used last.
  private var last: UInt32? = nil

  /// Inodes held.
  var count: Int { entries.count }
  /// Directory trees those inodes were found in.
  var placeCount: Int { slots.count }

  /// Counts one kernel lookup of `ino`, node `slot` of `tree` (reached through snapshot directory `root`);
  /// `subtree`: the node's own tree when it is a directory.
  mutating func lookedUp(_ ino: UInt64, tree: BlobID, root: UInt64, slot: Int, subtree: BlobID?) {
    if let i = entries.index(forKey: ino) {
      entries.values[i].lookups += 1
      return
    }
    let place = Place(tree: tree, root: root)
    let d: UInt32
    if let s = last, directories[Int(s)].references > 0, directories[Int(s)].place == place {
      // A listing's entries come one after another from the same tree: no hash lookup for them.
      d = s
      directories[Int(s)].references += 1
    } else if let s = slots[place] {
      d = s
      directories[Int(s)].references += 1
    } else if let s = free.popLast() {
      d = s
      directories[Int(s)] = Directory(place: place, references: 1)
      slots[place] = s
    } else {
      d = UInt32(directories.count)
      directories.append(Directory(place: place, references: 1))
      slots[place] = d
    }
    last = d
    entries[ino] = Entry(directory: d, slot: UInt32(slot), lookups: 1)
    if let subtree { subtrees[ino] = subtree }
  }

  /// The kernel dropped `count` references to `ino`; at zero the entry goes.
  mutating func forget(_ ino: UInt64, count: UInt64) {
    guard let i = entries.index(forKey: ino) else { return }
    let e = entries.values[i]
    if e.lookups > count {
      entries.values[i].lookups = e.lookups - count
      return
    }
    entries.remove(at: i)
    subtrees[ino] = nil
    let d = Int(e.directory)
    directories[d].references -= 1
    if directories[d].references == 0 {
      slots[directories[d].place] = nil
      free.append(e.directory)
    }
    // Dictionaries keep their capacity when emptied: after the kernel forgot most of a large walk, give
    // the memory back.
    if entries.capacity > 1 << 14 && entries.count < entries.capacity / 8 { shrink() }
  }

  private mutating func shrink() {
    entries = Dictionary(uniqueKeysWithValues: entries.lazy.map { ($0.key, $0.value) })
    subtrees = Dictionary(uniqueKeysWithValues: subtrees.lazy.map { ($0.key, $0.value) })
    slots = Dictionary(uniqueKeysWithValues: slots.lazy.map { ($0.key, $0.value) })
  }

  /// Where `ino`'s node is: its tree, snapshot directory and position; nil when the kernel holds no such inode.
  func locate(_ ino: UInt64) -> (place: Place, slot: Int)? {
    guard let e = entries[ino] else { return nil }
    return (directories[Int(e.directory)].place, Int(e.slot))
  }

  /// The tree of directory `ino` and the snapshot directory it was reached through; nil when `ino` is not a
  /// directory the kernel holds.
  func directory(_ ino: UInt64) -> (tree: BlobID, root: UInt64)? {
    guard let t = subtrees[ino], let e = entries[ino] else { return nil }
    return (t, directories[Int(e.directory)].place.root)
  }

  /// Whether `ino` is held at all.
  func contains(_ ino: UInt64) -> Bool { entries[ino] != nil }
}

/// How the mount's cache budget (`--cache-size`) is shared out. Every cache is a CLOCK cache bounded by its
/// share in bytes: decoded blob plaintext (file contents and raw trees, read-ahead included) gets half,
/// decoded trees five sixteenths, directory listings one eighth, paths followed under `versions/` one thirty-second,
/// blob lists of files being read one thirty-second. Outside the budget: the inode table (about 40 bytes per inode
/// the kernel holds, about 100 per directory under `versions/`), the repository index and the allocator's own
/// overhead.
public struct CacheBudget: Sendable, Equatable {
  public var blobs: Int
  public var trees: Int
  public var listings: Int
  public var versions: Int
  public var files: Int

  public init(total: Int) {
    let t = max(total, 16)
    blobs = t / 2
    trees = t * 5 / 16
    listings = t / 8
    versions = t / 32
    files = t - blobs - trees - listings - versions
  }

  public var total: Int { blobs + trees + listings + versions + files }

  /// The default: 128 MiB.
  public static let defaultTotal = 128 << 20

  /// A size as `--cache-size` takes it: a number with a unit, B, k/K, m/M, g/G (powers of 1024; "KiB", "MB" and
  /// the like too); a bare number means MiB. nil when `text` is not such a size.
  public static func parse(_ text: String) -> Int? {
    var s = Substring(text.filter { !$0.isWhitespace })
    var unit = 1 << 20
    if s.hasSuffix("iB") || s.hasSuffix("ib") {
      s = s.dropLast(2)
    } else if s.hasSuffix("B") || s.hasSuffix("b") {
      s = s.dropLast()
      if s.last?.isNumber == true { unit = 1 }  // "4096B": bytes
    }
    if let last = s.last, !last.isNumber {
      switch last {
      case "k", "K": unit = 1 << 10
      case "m", "M": unit = 1 << 20
      case "g", "G": unit = 1 << 30
      default: return nil
      }
      s = s.dropLast()
    }
    guard let n = Int(s), n > 0, n <= (1 << 50) / unit else { return nil }
    return n * unit
  }
}
