// Pins the repository format: known-answer crypto vectors, restic-made fixtures, golden JSON.
import Foundation
import Testing
import TidemarkBackends
import TidemarkCore
import TidemarkCrypto
import TidemarkOperations
import TidemarkSystem

func hex(_ s: String) -> [UInt8] {
  var out: [UInt8] = []
  var it = s.utf8.makeIterator()
  while let a = it.next(), let b = it.next() { out.append(UInt8(String(decoding: [a, b], as: UTF8.self), radix: 16)!) }
  return out
}

func toHex(_ b: [UInt8]) -> String { b.map { String(format: "%02x", $0) }.joined() }

let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")

@Suite struct CryptoTests {
  @Test func resticKnownAnswerVectorOpens() throws {
    let key = MasterKey(
      encrypt: hex("303e8687b1d7db18421bdc6bb8588ccadac4d59ee87b8ff70c44e635790cafef"),
      macK: hex("ef4d8824cb80b2bcc5fbff8a9b12a42c"), macR: hex("cc8d4b948ee0ebfe1d415de921d10353"))
    let sealed = hex(
      "69fb41c62d12def4593bd71757138606338f621aeaeb39da0fe4f99233f8037a54ea63338a813bcf3f75d8c3cc75dddf8750")
    let plain = try key.open(sealed)
    #expect(plain.map { String(decoding: $0, as: UTF8.self) } == "Dies ist ein Test!")
    // One flipped bit anywhere fails authentication.
    for i in [0, 17, sealed.count - 1] {
      var bad = sealed
      bad[i] ^= 1
      #expect(try key.open(bad) == nil)
    }
  }

  @Test func sealOpenRoundTripAndOverhead() throws {
    let key = MasterKey.random()
    for n in [0, 1, 15, 16, 17, 1000, 1 << 20] {
      let p = SecureRandom.bytes(n)
      let s = try key.seal(p)
      #expect(s.count == n + 32)
      #expect(try key.open(s) == p)
      #expect(try MasterKey.random().open(s) == nil)
    }
  }

  @Test func sha256KnownAnswer() {
    #expect(toHex(SHA256.hash(Array("abc".utf8))) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
  }

  @Test func scryptRFC7914Vector() throws {
    let out = try Scrypt.derive(
      password: Array("password".utf8), salt: Array("NaCl".utf8), n: 1024, r: 8, p: 16, length: 64)
    #expect(
      toHex(out)
        == "fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc82378 30e77376634b3731622eaf30d92e22a3886ff109279d9830dac727afb94a83ee6d8360cbdfa2cc0640"
        .replacingOccurrences(of: " ", with: ""))
  }

  /// The parallel scrypt (half tables, and whole ones for the workers with one lane more) gives exactly OpenSSL's
  /// output (RFC 7914 vector and odd shapes).
  @Test func parallelScryptMatchesOpenSSL() throws {
    let rfc = try Scrypt.deriveParallel(
      password: Array("password".utf8), salt: Array("NaCl".utf8), n: 1024, r: 8, p: 16, length: 64, threads: 2)
    #expect(
      toHex(rfc)
        == "fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc82378 30e77376634b3731622eaf30d92e22a3886ff109279d9830dac727afb94a83ee6d8360cbdfa2cc0640"
        .replacingOccurrences(of: " ", with: ""))
    for (n, r, p, threads, pw) in [
      (2, 1, 1, 1, ""), (16, 1, 3, 2, "x"), (64, 2, 5, 2, "pässwörd"), (1024, 8, 2, 4, "restic"), (256, 3, 7, 3, "z"),
    ] as [(UInt64, UInt64, UInt64, Int, String)] {
      let salt = SecureRandom.bytes(Int(n % 61) + 1)
      let a = try Scrypt.derive(password: Array(pw.utf8), salt: salt, n: n, r: r, p: p, length: 64)
      let b = try Scrypt.deriveParallel(
        password: Array(pw.utf8), salt: salt, n: n, r: r, p: p, length: 64, threads: threads)
      #expect(a == b, "N=\(n) r=\(r) p=\(p)")
    }
    #expect(throws: (any Error).self) {
      try Scrypt.deriveParallel(password: [], salt: [1], n: 1000, r: 8, p: 1, length: 64, threads: 2)
    }
  }

  @Test func keyFileRoundTripAndWrongPassword() throws {
    let mk = MasterKey.random()
    let kf = try KeyFile.create(
      master: mk, password: Array("secret".utf8), username: "u", hostname: "h", params: (1024, 8, 1))
    let parsed = try KeyFile(json: kf.json)
    #expect(try parsed.open(password: Array("secret".utf8)) == mk)
    #expect(try parsed.open(password: Array("wrong".utf8)) == nil)
  }
}

@Suite struct ChunkerTests {
  @Test func polynomialIrreducibility() {
    // restic's chunker test polynomial is irreducible; multiplying it by x makes it reducible.
    #expect(Polynomial(0x3DA3358B4DC173).isIrreducible)
    #expect(!Polynomial(0x3DA3358B4DC173 << 1).isIrreducible)
    let r = Polynomial.randomIrreducible()
    #expect(r.degree == 53 && r.isIrreducible)
  }

  @Test func boundariesAreMinMaxAndStreamingIndependent() {
    let tables = ChunkerTables(polynomial: Polynomial(0x3DA3358B4DC173))
    var rng = SystemRandomNumberGenerator()
    let data = (0..<(20 << 20)).map { _ in UInt8.random(in: 0...255, using: &rng) }
    func cuts(piece: Int) -> [Int] {
      var c = Chunker(tables: tables)
      var out: [Int] = []
      var pos = 0
      var last = 0
      while pos < data.count {
        let end = min(pos + piece, data.count)
        var i = pos
        while i < end {
          let r = data.withUnsafeBytes { c.next(UnsafeRawBufferPointer(rebasing: $0[i..<end])) }
          guard let r else { break }
          i += r
          out.append(i - last)
          last = i
        }
        pos = end
      }
      return out
    }
    let a = cuts(piece: 1 << 20)
    let b = cuts(piece: 65_537)
    #expect(a == b)
    #expect(!a.isEmpty)
    #expect(a.allSatisfy { $0 >= Chunker.minSize && $0 <= Chunker.maxSize })
  }

  /// `Chunker.cut(in:scanned:tables:)` (four stretches at once, over a contiguous chunk) must cut
  /// exactly where the streaming chunker does, however the bytes arrive.
  @Test func contiguousCutMatchesStreamingChunker() {
    let tables = ChunkerTables(polynomial: Polynomial(0x3DA3358B4DC173))
    var rng = SystemRandomNumberGenerator()
    // Random bytes (cuts by the mask), a long run of one byte value (a cut at the minimum size: the
    // digest of 64 zero bytes is zero) and a repeating low-entropy pattern (cuts at the maximum size).
    var data = (0..<(24 << 20)).map { _ in UInt8.random(in: 0...255, using: &rng) }
    data += [UInt8](repeating: 0, count: 3 << 20)
    data += (0..<(20 << 20)).map { UInt8(truncatingIfNeeded: $0 % 251 == 0 ? 7 : 1) }
    data += (0..<(5 << 20)).map { _ in UInt8.random(in: 0...255, using: &rng) }
    func streaming() -> [Int] {
      var c = Chunker(tables: tables)
      var out: [Int] = []
      var i = 0
      while i < data.count {
        let r = data.withUnsafeBytes { c.next(UnsafeRawBufferPointer(rebasing: $0[i...])) }
        guard let r else { break }
        i += r
        out.append(i)
      }
      return out
    }
    func contiguous(piece: Int) -> [Int] {
      var out: [Int] = []
      var start = 0  // the current chunk's first byte
      var end = 0  // bytes available so far
      var scanned = 0
      while end < data.count {
        end = min(end + piece, data.count)
        while true {
          let cut = data.withUnsafeBytes {
            Chunker.cut(in: UnsafeRawBufferPointer(rebasing: $0[start..<end]), scanned: scanned, tables: tables)
          }
          guard let cut else {
            scanned = end - start
            break
          }
          start += cut
          scanned = 0
          out.append(start)
        }
      }
      return out
    }
    let reference = streaming()
    #expect(reference.count > 20)
    #expect(contiguous(piece: 2 << 20) == reference)
    #expect(contiguous(piece: 65_537) == reference)
    #expect(contiguous(piece: 1_000_003) == reference)
    #expect(contiguous(piece: 9 << 20) == reference)
  }
}

@Suite struct JSONFormatTests {
  /// Timestamps and numbers are written as bytes, as Go writes them: the trees' IDs depend on every byte.
  @Test func timestampsAndNumbersAreWrittenAsGoWritesThem() {
    for text in [
      "2024-01-02T03:04:05Z", "2024-01-02T03:04:05.5+02:00", "2024-01-02T03:04:05.123456789-07:30",
      "1999-12-31T23:59:59.000000001Z", "0001-01-01T00:00:00Z", "2262-04-11T23:47:16.8547758+05:45",
    ] {
      #expect(Timestamp(rfc3339: text)?.rfc3339Nano == text)
    }
    #expect(Timestamp(rfc3339: "2024-01-02T03:04:05.120Z")?.rfc3339Nano == "2024-01-02T03:04:05.12Z")
    #expect(Timestamp(rfc3339: "2024-01-02T03:04:05.120Z")?.rfc3339 == "2024-01-02T03:04:05Z")
    var w = JSONWriter()
    for v: Int64 in [0, 7, -42, 1_000_000, .min, .max] {
      w.number(v)
      w.comma()
    }
    w.number(UInt64.max)
    #expect(
      String(decoding: w.out, as: UTF8.self)
        == "0,7,-42,1000000,-9223372036854775808,9223372036854775807,18446744073709551615")
  }

  @Test func resticTreeReencodesByteForByte() throws {
    let json = Array(try Data(contentsOf: fixtures.appendingPathComponent("restic-0.14-tree.json")))
    let id = try String(contentsOf: fixtures.appendingPathComponent("restic-0.14-tree.id"), encoding: .utf8)
      .trimmingCharacters(in: .whitespacesAndNewlines)
    #expect(RawID.hash(json).hex == id)
    let tree = try Tree(json: json)
    #expect(tree.nodes.contains { $0.name == Array("bad".utf8) + [0xff] + Array("name".utf8) })
    let again = tree.encode()
    // restic 0.14 stored the non-UTF-8 symlink target lossily, as the escape \ufffd; decoded, that is a valid
    // U+FFFD, which Go (and tidemark) write literally. Everything else must match byte for byte.
    let expected = String(decoding: json, as: UTF8.self).replacingOccurrences(of: "tgt\\ufffd", with: "tgt\u{FFFD}")
    #expect(String(decoding: again, as: UTF8.self) == expected)
  }

  /// The fast tree decoder reads every shape the general JSON path reads, to the same nodes.
  @Test func treeDecoderAgreesWithGeneralParser() throws {
    let fixture = Array(try Data(contentsOf: fixtures.appendingPathComponent("restic-0.14-tree.json")))
    let z = "\"" + String(repeating: "0", count: 63) + "1\""
    let odd: [String] = [
      #"{"nodes":[]}"#,
      #"{"nodes":null}"#,
      #" { "other" : [1, {"a": null}], "nodes" : [ { "type" : "file" , "name" : "a\u00e9\n\"q" , "size" : 12 } ] } "#,
      #"{"nodes":[{"name":"x","type":"file","content":null,"mode":1e3,"uid":-1,"gid":18446744073709551616}]}"#,
      #"{"nodes":[{"name":"x","type":"file","content":"odd","subtree":"nothex","inode":12.0}]}"#,
      #"{"nodes":[{"name":"d","type":"dir","subtree":\#(z),"generic_attributes":{"k":[1,2]},"links":3}]}"#,
      #"{"nodes":[{"name":"f","type":"file","content":[\#(z), \#(z)],"mtime":"2024-01-02T03:04:05.123456789+02:00"}]}"#,
      #"{"nodes":[{"name":"l","type":"symlink","linktarget":"t","linktarget_raw":"dGd0/w=="}]}"#,
      #"{"nodes":[{"name":"l","type":"symlink","linktarget":"t\ufffd","linktarget_raw":null}]}"#,
      #"{"nodes":[{"name":"x","type":"weird","extended_attributes":[{"name":"user.a","value":"AAE="},{"value":"x"}]}]}"#,
      #"{"nodes":[{"name":"b\\xffname","type":"file","user":"u","group":"g","device":7,"device_id":9}]}"#,
    ]
    for text in [String(decoding: fixture, as: UTF8.self)] + odd {
      let json = Array(text.utf8)
      let fast = try Tree(json: json), slow = try Tree(genericJSON: json)
      #expect(fast.encode() == slow.encode(), "\(text)")
      #expect(fast.nodes.map(\.linkTarget) == slow.nodes.map(\.linkTarget), "\(text)")
      #expect(fast.nodes.map { $0.xattrs.map(\.value) } == slow.nodes.map { $0.xattrs.map(\.value) }, "\(text)")
    }
    for bad in [
      #"{"nodes":[{"type":"file"}]}"#, #"{"nodes":[{"name":"x","type":"file","content":["zz"]}]}"#, #"{}"#,
      #"{"nodes":[{"name":"x","type":"file"}]"#, #"[]"#, #"{"nodes":[]} x"#,
    ] {
      #expect(throws: (any Error).self, "\(bad)") { try Tree(json: Array(bad.utf8)) }
      #expect(throws: (any Error).self, "\(bad)") { try Tree(genericJSON: Array(bad.utf8)) }
    }
  }

  @Test func goQuoteMatchesStrconvQuote() {
    #expect(goQuote(Array("plain.txt".utf8)) == Array("plain.txt".utf8))
    #expect(goQuote([0x62, 0xff]) == Array("b\\xff".utf8))
    #expect(goQuote(Array("a\"b\\c\n".utf8)) == Array("a\\\"b\\\\c\\n".utf8))
    #expect(goQuote(Array("grüße 日本".utf8)) == Array("grüße 日本".utf8))
    #expect(goQuote(Array("\u{00a0}".utf8)) == Array("\\u00a0".utf8))
    for _ in 0..<200 {
      let name = (0..<Int.random(in: 1...20)).map { _ in UInt8.random(in: 1...255) }
      #expect(goUnquote(goQuote(name)) == name)
    }
  }

  @Test func goJSONStringEscaping() {
    var w = JSONWriter()
    w.string(Array("<a&b>\u{2028}\t".utf8) + [0xfe])
    #expect(String(decoding: w.out, as: UTF8.self) == "\"\\u003ca\\u0026b\\u003e\\u2028\\t\\ufffd\"")
  }

  @Test func timestampsFormatLikeGo() throws {
    let t = try #require(Timestamp(rfc3339: "2020-01-02T03:04:05.123456789+01:00"))
    #expect(t.rfc3339Nano == "2020-01-02T03:04:05.123456789+01:00")
    #expect(Timestamp(seconds: t.seconds, nanoseconds: 120_000_000, offset: 0).rfc3339Nano == "2020-01-02T02:04:05.12Z")
    #expect(Timestamp(seconds: 0, nanoseconds: 0, offset: 0).rfc3339Nano == "1970-01-01T00:00:00Z")
    #expect(Timestamp(rfc3339: "1969-12-31T23:59:59Z")?.seconds == -1)
  }

  @Test func packHeaderAndIndexRoundTrip() throws {
    let blobs = [
      PackedBlob(id: BlobID(RawID.hash([1])), type: .data, offset: 0, length: 100, uncompressedLength: 0),
      PackedBlob(id: BlobID(RawID.hash([2])), type: .data, offset: 100, length: 50, uncompressedLength: 400),
    ]
    #expect(try PackHeader.decode(PackHeader.encode(blobs)) == blobs)
    #expect(PackHeader.encode(blobs).count == 37 + 41)
    var f = IndexFile()
    f.packs = [(PackID(RawID.hash([9])), blobs)]
    let back = try IndexFile(json: f.encode())
    #expect(back.packs.count == 1 && back.packs[0].blobs == blobs)
  }
}

@Suite struct ResticFixtureTests {
  /// A repository written by restic 0.14 (Tests/TidemarkCoreTests/Fixtures) opens, lists and reads in tidemark.
  @Test func readsRepositoryMadeByRestic() async throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tm-fixture-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    let tar = Process()
    tar.executableURL = URL(fileURLWithPath: "/bin/tar")
    tar.arguments = ["xzf", fixtures.appendingPathComponent("restic-0.14-repo.tar.gz").path, "-C", dir.path]
    try tar.run()
    tar.waitUntilExit()
    #expect(tar.terminationStatus == 0)

    let backend = LocalBackend(path: BytePath(dir.appendingPathComponent("repo").path))
    await #expect(throws: TidemarkError.self) {
      _ = try await Repository.open(backend: backend, password: Array("nope".utf8))
    }
    let repo = try await Repository.open(backend: backend, password: Array("fixture-password".utf8))
    #expect(repo.config.version == 2)
    #expect(repo.config.chunkerPolynomial.description == "23d68c0783510b")
    try await repo.loadIndex()
    let snaps = try await repo.listSnapshots()
    #expect(snaps.count == 1)
    let s = snaps[0]
    #expect(s.hostname == "fixture-host" && s.tags == ["fx"] && s.paths == ["/tmp/fx/data"])
    // `restic backup data` (a relative path) makes root → data → sub → blob.bin.
    let root = try await repo.loadTree(s.tree)
    #expect(root.nodes.map(\.nameString) == ["data"])
    let dataID = try #require(root.node(named: Array("data".utf8))?.subtree)
    let tree = try await repo.loadTree(dataID)
    // Re-encoding restic's trees reproduces their IDs exactly (tree-level dedup across the tools).
    for id in [s.tree, dataID] {
      #expect(RawID.hash(try await repo.loadTree(id).encode()) == id.raw)
    }
    let hello = try #require(tree.node(named: Array("hello.txt".utf8)))
    #expect(hello.mtime.rfc3339Nano.hasPrefix("2020-01-02T03:04:05.123456789"))
    let sub = try await repo.loadTree(try #require(tree.node(named: Array("sub".utf8))?.subtree))
    let blobNode = try #require(sub.node(named: Array("blob.bin".utf8)))
    var content: [UInt8] = []
    for id in blobNode.content ?? [] { content += try await repo.loadBlob(id) }
    #expect(RawID.hash(content).hex == "2225ff01692791f97e9d72672160d60629154a1cff6f3b9f11545d892d631682")

    // Chunking the same bytes with tidemark gives restic's blob IDs.
    let original = try Sys.readFile(BytePath(dir.appendingPathComponent("data/sub/blob.bin").path))
    #expect(original == content)
    var chunker = Chunker(tables: repo.chunkerTables)
    var ids: [BlobID] = []
    var pos = 0
    while pos < original.count {
      let cut =
        original.withUnsafeBytes { chunker.next(UnsafeRawBufferPointer(rebasing: $0[pos...])) }
        ?? (original.count - pos)
      ids.append(BlobID(RawID.hash(Array(original[pos..<(pos + cut)]))))
      pos += cut
    }
    #expect(ids == blobNode.content)
  }
}

@Suite struct PatternTests {
  func comps(_ s: String) -> [[UInt8]] { Array(s.utf8).split(separator: 47).map(Array.init) }

  @Test func resticPatternRules() {
    #expect(PathPattern("*.log").matches(comps("/var/log/x.log")))
    #expect(!PathPattern("*.log").matches(comps("/var/log/x.txt")))
    #expect(PathPattern("/var/cache").matches(comps("/var/cache/a/b")))
    #expect(!PathPattern("/cache").matches(comps("/var/cache")))
    #expect(PathPattern("cache").matches(comps("/var/cache")))
    #expect(PathPattern("/home/**/tmp").matches(comps("/home/u/x/tmp")))
    #expect(PathPattern("file[0-9]").matches(comps("/a/file7")))
  }
}
