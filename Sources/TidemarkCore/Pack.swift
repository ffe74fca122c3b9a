// Pack files: sealed blobs back to back, then the sealed header, then the header's length (uint32 LE).

public enum BlobType: UInt8, Sendable, Hashable {
  case data = 0
  case tree = 1
  public var name: String { self == .data ? "data" : "tree" }
  public init?(name: String) {
    switch name {
    case "data": self = .data
    case "tree": self = .tree
    default: return nil
    }
  }
}

/// Where a blob is stored.
public struct PackedBlob: Sendable, Hashable {
  public var id: BlobID
  public var type: BlobType
  public var offset: UInt32
  /// Stored (sealed) length.
  public var length: UInt32
  /// Plaintext length when compressed; 0 when stored uncompressed.
  public var uncompressedLength: UInt32

  public init(id: BlobID, type: BlobType, offset: UInt32, length: UInt32, uncompressedLength: UInt32) {
    (self.id, self.type, self.offset, self.length, self.uncompressedLength) =
      (id, type, offset, length, uncompressedLength)
  }
  public var isCompressed: Bool { uncompressedLength != 0 }
  /// The plaintext size.
  public var plainLength: Int { isCompressed ? Int(uncompressedLength) : Int(length) - MasterKey.overhead }
}

public enum PackHeader {
  /// The plaintext header for `blobs` in pack order.
  public static func encode(_ blobs: [PackedBlob]) -> [UInt8] {
    var out: [UInt8] = []
    out.reserveCapacity(blobs.count * 41)
    func le(_ v: UInt32) { for s in [0, 8, 16, 24] { out.append(UInt8(truncatingIfNeeded: v >> UInt32(s))) } }
    for b in blobs {
      out.append(b.type.rawValue + (b.isCompressed ? 2 : 0))
      le(b.length)
      if b.isCompressed { le(b.uncompressedLength) }
      out.append(contentsOf: b.id.raw.bytes)
    }
    return out
  }

  public static func decode(_ h: [UInt8]) throws -> [PackedBlob] {
    var blobs: [PackedBlob] = []
    var i = 0
    var offset: UInt32 = 0
    func le(_ a: Int) -> UInt32 {
      UInt32(h[a]) | UInt32(h[a + 1]) << 8 | UInt32(h[a + 2]) << 16 | UInt32(h[a + 3]) << 24
    }
    while i < h.count {
      let t = h[i]
      guard t <= 3 else { throw TidemarkError.corrupt("pack header has unknown blob type \(t)") }
      let compressed = t >= 2
      let size = compressed ? 41 : 37
      guard i + size <= h.count else { throw TidemarkError.corrupt("pack header is truncated") }
      let len = le(i + 1)
      let ulen = compressed ? le(i + 5) : 0
      let idStart = i + (compressed ? 9 : 5)
      let id = BlobID(RawID(bytes: h[idStart..<(idStart + 32)]))
      blobs.append(
        PackedBlob(id: id, type: BlobType(rawValue: t & 1)!, offset: offset, length: len, uncompressedLength: ulen))
      offset &+= len
      i += size
    }
    return blobs
  }
}
