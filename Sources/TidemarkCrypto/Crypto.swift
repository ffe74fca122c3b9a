// TidemarkCrypto: thin Swift over libcrypto (OpenSSL 3): SHA-256, MD5 (S3's Content-MD5 only), AES-256-CTR,
// AES-128-ECB (one block), Poly1305, scrypt and the system CSPRNG. The only module that imports COpenSSL.
// Concurrency: every function is thread-safe; algorithm objects are fetched once and are immutable,
// contexts are per call. Never: leak an OpenSSL type through the public API.
internal import COpenSSL
import Dispatch

/// An OpenSSL call failed; `function` names the C function.
public struct CryptoError: Error, CustomStringConvertible {
  public let function: String
  public var description: String { "libcrypto: \(function) failed" }
}

// Fetched once; OpenSSL algorithm objects are reference-counted, immutable and thread-safe.
nonisolated(unsafe) private let sha256MD: OpaquePointer? = EVP_MD_fetch(nil, "SHA256", nil)
nonisolated(unsafe) private let md5MD: OpaquePointer? = EVP_MD_fetch(nil, "MD5", nil)
nonisolated(unsafe) private let aes256CTR: OpaquePointer? = EVP_CIPHER_fetch(nil, "AES-256-CTR", nil)
nonisolated(unsafe) private let aes128ECB: OpaquePointer? = EVP_CIPHER_fetch(nil, "AES-128-ECB", nil)
nonisolated(unsafe) private let poly1305MAC: OpaquePointer? = EVP_MAC_fetch(nil, "POLY1305", nil)

public enum CryptoLibrary {
  /// Call first thing in main. Stops OpenSSL from tearing itself down in an atexit handler: a process
  /// that exits while a blocking thread is still inside libcrypto (an SSH session, a hash) would
  /// otherwise crash on a freed lock (seen with the SFTP backend: SIGSEGV in pthread_rwlock_wrlock).
  public static func initialize() {
    _ = OPENSSL_init_crypto(UInt64(OPENSSL_INIT_NO_ATEXIT), nil)
  }

  /// The version of the libcrypto loaded at run time (OpenSSL_version(OPENSSL_VERSION_STRING), e.g. "3.0.17"):
  /// the library the system provides, which may be newer than the headers tidemark was built with.
  public static var version: String {
    guard let v = OpenSSL_version(OPENSSL_VERSION_STRING) else { return "unknown" }
    return String(cString: v)
  }
}

public enum SHA256 {
  /// SHA-256 of `data` (EVP_Digest).
  public static func hash(_ data: UnsafeRawBufferPointer) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: 32)
    var len: UInt32 = 32
    let ok = out.withUnsafeMutableBufferPointer { o in
      EVP_Digest(data.baseAddress, data.count, o.baseAddress, &len, sha256MD, nil)
    }
    precondition(ok == 1, "EVP_Digest failed")
    return out
  }

  public static func hash(_ data: [UInt8]) -> [UInt8] {
    data.withUnsafeBytes { hash($0) }
  }

  /// Incremental hashing (EVP_DigestInit/Update/Final) for data that does not sit in one buffer.
  public final class Hasher {
    private let ctx: OpaquePointer
    public init() {
      ctx = EVP_MD_CTX_new()!
      EVP_DigestInit_ex(ctx, sha256MD, nil)
    }
    deinit { EVP_MD_CTX_free(ctx) }
    public func update(_ data: UnsafeRawBufferPointer) {
      EVP_DigestUpdate(ctx, data.baseAddress, data.count)
    }
    public func finalize() -> [UInt8] {
      var out = [UInt8](repeating: 0, count: 32)
      var len: UInt32 = 32
      out.withUnsafeMutableBufferPointer { _ = EVP_DigestFinal_ex(ctx, $0.baseAddress, &len) }
      return out
    }
  }
}

/// MD5, for S3's `Content-MD5` header (which S3 requires on object-lock uploads); never for integrity here.
public enum MD5 {
  /// MD5 of `data` (EVP_Digest).
  public static func hash(_ data: [UInt8]) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: 16)
    var len: UInt32 = 16
    let ok = data.withUnsafeBytes { d in
      out.withUnsafeMutableBufferPointer { o in EVP_Digest(d.baseAddress, d.count, o.baseAddress, &len, md5MD, nil) }
    }
    precondition(ok == 1, "EVP_Digest failed")
    return out
  }
}

public enum AES {
  /// AES-256-CTR keystream XOR: the 16-byte IV is one big-endian 128-bit counter (OpenSSL's CTR mode).
  /// `input` and `output` may be the same memory.
  public static func ctr256(
    key: UnsafeRawBufferPointer, iv: UnsafeRawBufferPointer,
    input: UnsafeRawBufferPointer, output: UnsafeMutableRawBufferPointer
  ) throws {
    precondition(key.count == 32 && iv.count == 16 && output.count >= input.count)
    guard let ctx = EVP_CIPHER_CTX_new() else { throw CryptoError(function: "EVP_CIPHER_CTX_new") }
    defer { EVP_CIPHER_CTX_free(ctx) }
    guard
      EVP_EncryptInit_ex2(
        ctx, aes256CTR, key.bindMemory(to: UInt8.self).baseAddress,
        iv.bindMemory(to: UInt8.self).baseAddress, nil) == 1
    else { throw CryptoError(function: "EVP_EncryptInit_ex2") }
    var done = 0
    let inp = input.bindMemory(to: UInt8.self)
    let outp = output.bindMemory(to: UInt8.self)
    // EVP_EncryptUpdate takes Int32 lengths: feed at most 1 GiB per call.
    while done < input.count {
      let n = min(input.count - done, 1 << 30)
      var outl: Int32 = 0
      guard EVP_EncryptUpdate(ctx, outp.baseAddress! + done, &outl, inp.baseAddress! + done, Int32(n)) == 1
      else { throw CryptoError(function: "EVP_EncryptUpdate") }
      done += n
    }
  }

  /// Encrypts one 16-byte block with AES-128 (ECB, no padding).
  public static func ecb128EncryptBlock(key: UnsafeRawBufferPointer, block: UnsafeRawBufferPointer) throws
    -> [UInt8]
  {
    precondition(key.count == 16 && block.count == 16)
    guard let ctx = EVP_CIPHER_CTX_new() else { throw CryptoError(function: "EVP_CIPHER_CTX_new") }
    defer { EVP_CIPHER_CTX_free(ctx) }
    guard EVP_EncryptInit_ex2(ctx, aes128ECB, key.bindMemory(to: UInt8.self).baseAddress, nil, nil) == 1
    else { throw CryptoError(function: "EVP_EncryptInit_ex2") }
    EVP_CIPHER_CTX_set_padding(ctx, 0)
    var out = [UInt8](repeating: 0, count: 32)
    var outl: Int32 = 0
    let ok = out.withUnsafeMutableBufferPointer {
      EVP_EncryptUpdate(ctx, $0.baseAddress, &outl, block.bindMemory(to: UInt8.self).baseAddress, 16)
    }
    guard ok == 1, outl == 16 else { throw CryptoError(function: "EVP_EncryptUpdate") }
    return Array(out[0..<16])
  }
}

public enum Poly1305 {
  /// One-time Poly1305 MAC with a 32-byte key (r ‖ s); OpenSSL clamps r itself.
  public static func mac(key: UnsafeRawBufferPointer, message: UnsafeRawBufferPointer) throws -> [UInt8] {
    precondition(key.count == 32)
    guard let ctx = EVP_MAC_CTX_new(poly1305MAC) else { throw CryptoError(function: "EVP_MAC_CTX_new") }
    defer { EVP_MAC_CTX_free(ctx) }
    guard EVP_MAC_init(ctx, key.bindMemory(to: UInt8.self).baseAddress, 32, nil) == 1 else {
      throw CryptoError(function: "EVP_MAC_init")
    }
    if message.count > 0 {
      guard EVP_MAC_update(ctx, message.bindMemory(to: UInt8.self).baseAddress, message.count) == 1 else {
        throw CryptoError(function: "EVP_MAC_update")
      }
    }
    var out = [UInt8](repeating: 0, count: 16)
    var outl = 0
    let ok = out.withUnsafeMutableBufferPointer { EVP_MAC_final(ctx, $0.baseAddress, &outl, 16) }
    guard ok == 1, outl == 16 else { throw CryptoError(function: "EVP_MAC_final") }
    return out
  }
}

public enum Scrypt {
  /// scrypt(password, salt, N, r, p) → `length` bytes (EVP_PBE_scrypt with an explicit memory cap).
  public static func derive(password: [UInt8], salt: [UInt8], n: UInt64, r: UInt64, p: UInt64, length: Int)
    throws -> [UInt8]
  {
    var out = [UInt8](repeating: 0, count: length)
    let maxmem = 128 * r * n * (p + 2) + (64 << 20)
    let ok = password.withUnsafeBufferPointer { pw in
      salt.withUnsafeBufferPointer { s in
        out.withUnsafeMutableBufferPointer { o in
          // A zero-length password is passed as a valid pointer to one byte: OpenSSL rejects NULL.
          withUnsafePointer(to: 0 as UInt8) { empty in
            EVP_PBE_scrypt(
              pw.count == 0
                ? UnsafeRawPointer(empty).assumingMemoryBound(to: CChar.self)
                : UnsafeRawPointer(pw.baseAddress!).assumingMemoryBound(to: CChar.self),
              pw.count, s.baseAddress, s.count, n, r, p, maxmem, o.baseAddress, length)
          }
        }
      }
    }
    guard ok == 1 else { throw CryptoError(function: "EVP_PBE_scrypt") }
    return out
  }
}

public enum SecureRandom {
  /// `count` bytes from OpenSSL's CSPRNG (RAND_bytes).
  public static func bytes(_ count: Int) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: count)
    let ok = out.withUnsafeMutableBufferPointer { RAND_bytes($0.baseAddress, Int32(count)) }
    precondition(ok == 1, "RAND_bytes failed")
    return out
  }
}

extension Scrypt {
  /// scrypt with its `p` independent lanes computed `threads` at a time. A lane keeps only the even entries
  /// of its table and recomputes an odd one when asked for it (the standard time-memory trade-off: half the
  /// memory, a quarter more work), so two lanes in parallel need the memory one lane needs in `derive`. When
  /// the lanes do not share out evenly (restic's p = 5 on two cores: three lanes and two), the workers with
  /// the most lanes keep their whole table instead: they set the time, and the others still finish first.
  /// Five lanes on two cores: 0.6x `derive`'s time at 1.5x its memory (48 MiB at N = 2^15, r = 8).
  /// Same output as `derive`.
  public static func deriveParallel(
    password: [UInt8], salt: [UInt8], n: UInt64, r: UInt64, p: UInt64, length: Int, threads: Int
  ) throws -> [UInt8] {
    guard n >= 2, n & (n - 1) == 0, n <= 1 << 30, r >= 1, r <= 1 << 12, p >= 1, p <= 1 << 12, threads >= 1 else {
      throw CryptoError(function: "scrypt parameters")
    }
    let laneBytes = Int(128 * r)
    var b = try pbkdf2(password, salt, length: Int(p) * laneBytes)
    let lanes = Int(p)
    let workers = min(threads, lanes)
    b.withUnsafeMutableBytes { raw in
      let base = Int(bitPattern: raw.baseAddress!)
      DispatchQueue.concurrentPerform(iterations: workers) { w in
        let words = 32 * Int(r)
        // Worker w takes lanes w, w + workers, ...: the first `lanes % workers` take one more.
        let whole = lanes % workers != 0 && w < lanes % workers
        let shift = whole ? 0 : 1
        let table = UnsafeMutablePointer<UInt32>.allocate(capacity: Int(n >> UInt64(shift)) * words)
        let scratch = UnsafeMutablePointer<UInt32>.allocate(capacity: 3 * words)
        defer {
          table.deallocate()
          scratch.deallocate()
        }
        var lane = w
        while lane < lanes {
          // Lanes are disjoint slices of `b`: each worker writes only its own.
          let p = UnsafeMutableRawPointer(bitPattern: base + lane * laneBytes)!
          romix(
            p.bindMemory(to: UInt32.self, capacity: words), r: Int(r), n: Int(n), shift: shift, v: table, t: scratch)
          lane += workers
        }
      }
    }
    return try pbkdf2(password, b, length: length)
  }

  /// PBKDF2-HMAC-SHA256 with one iteration (all scrypt uses).
  static func pbkdf2(_ password: [UInt8], _ salt: [UInt8], length: Int) throws -> [UInt8] {
    var out = [UInt8](repeating: 0, count: length)
    let ok = password.withUnsafeBufferPointer { pw in
      salt.withUnsafeBufferPointer { s in
        out.withUnsafeMutableBufferPointer { o in
          withUnsafePointer(to: 0 as UInt8) { empty in
            PKCS5_PBKDF2_HMAC(
              pw.count == 0
                ? UnsafeRawPointer(empty).assumingMemoryBound(to: CChar.self)
                : UnsafeRawPointer(pw.baseAddress!).assumingMemoryBound(to: CChar.self),
              Int32(pw.count), s.count == 0 ? empty : s.baseAddress, Int32(s.count), 1, EVP_sha256(),
              Int32(length), o.baseAddress)
          }
        }
      }
    }
    guard ok == 1 else { throw CryptoError(function: "PKCS5_PBKDF2_HMAC") }
    return out
  }

  /// ROMix on one lane (32r little-endian words, in place). With `shift` 1 only the even table entries are
  /// kept in `v` (n/2 x 32r words) and an odd one is recomputed from its predecessor when read; with 0, all
  /// of them (n x 32r words). `t` is scratch for 3 x 32r words.
  static func romix(
    _ x: UnsafeMutablePointer<UInt32>, r: Int, n: Int, shift: Int, v: UnsafeMutablePointer<UInt32>,
    t: UnsafeMutablePointer<UInt32>
  ) {
    let words = 32 * r
    let y = t
    let z = t + words
    let w = t + 2 * words
    let skipped = (1 << shift) - 1  // 0 or 1: the index bits of entries not kept
    // Host order is little-endian on every platform tidemark builds for; keep the conversions anyway.
    for i in 0..<words { w[i] = UInt32(littleEndian: x[i]) }
    for i in 0..<n {
      if i & skipped == 0 { (v + (i >> shift) * words).update(from: w, count: words) }
      blockMix(w, y, r)
      w.update(from: y, count: words)
    }
    let last = (2 * r - 1) * 16
    for _ in 0..<n {
      let j = Int(w[last]) & (n - 1)
      let entry: UnsafeMutablePointer<UInt32>
      if j & skipped == 0 {
        entry = v + (j >> shift) * words
      } else {
        blockMix(v + (j >> shift) * words, z, r)
        entry = z
      }
      for k in 0..<words { w[k] ^= entry[k] }
      blockMix(w, y, r)
      w.update(from: y, count: words)
    }
    for i in 0..<words { x[i] = w[i].littleEndian }
  }

  /// BlockMix_{Salsa20/8, r}: `input` (2r 64-byte blocks) to `output` (even blocks first, then odd).
  @inline(__always)
  static func blockMix(_ input: UnsafeMutablePointer<UInt32>, _ output: UnsafeMutablePointer<UInt32>, _ r: Int) {
    var b = (
      input[(2 * r - 1) * 16], input[(2 * r - 1) * 16 + 1], input[(2 * r - 1) * 16 + 2], input[(2 * r - 1) * 16 + 3],
      input[(2 * r - 1) * 16 + 4], input[(2 * r - 1) * 16 + 5], input[(2 * r - 1) * 16 + 6],
      input[(2 * r - 1) * 16 + 7], input[(2 * r - 1) * 16 + 8], input[(2 * r - 1) * 16 + 9],
      input[(2 * r - 1) * 16 + 10], input[(2 * r - 1) * 16 + 11], input[(2 * r - 1) * 16 + 12],
      input[(2 * r - 1) * 16 + 13], input[(2 * r - 1) * 16 + 14], input[(2 * r - 1) * 16 + 15]
    )
    for i in 0..<(2 * r) {
      let s = input + i * 16
      b.0 ^= s[0]
      b.1 ^= s[1]
      b.2 ^= s[2]
      b.3 ^= s[3]
      b.4 ^= s[4]
      b.5 ^= s[5]
      b.6 ^= s[6]
      b.7 ^= s[7]
      b.8 ^= s[8]
      b.9 ^= s[9]
      b.10 ^= s[10]
      b.11 ^= s[11]
      b.12 ^= s[12]
      b.13 ^= s[13]
      b.14 ^= s[14]
      b.15 ^= s[15]
      salsa8(&b)
      let d = output + ((i & 1) == 0 ? (i >> 1) : (r + (i >> 1))) * 16
      d[0] = b.0
      d[1] = b.1
      d[2] = b.2
      d[3] = b.3
      d[4] = b.4
      d[5] = b.5
      d[6] = b.6
      d[7] = b.7
      d[8] = b.8
      d[9] = b.9
      d[10] = b.10
      d[11] = b.11
      d[12] = b.12
      d[13] = b.13
      d[14] = b.14
      d[15] = b.15
    }
  }

  typealias Block = (
    UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32,
    UInt32, UInt32
  )

  @inline(__always) static func rotl(_ a: UInt32, _ k: UInt32) -> UInt32 { (a << k) | (a >> (32 - k)) }

  /// The Salsa20/8 core, in place.
  @inline(__always)
  static func salsa8(_ b: inout Block) {
    var (x0, x1, x2, x3, x4, x5, x6, x7) = (b.0, b.1, b.2, b.3, b.4, b.5, b.6, b.7)
    var (x8, x9, x10, x11, x12, x13, x14, x15) = (b.8, b.9, b.10, b.11, b.12, b.13, b.14, b.15)
    for _ in 0..<4 {
      x4 ^= rotl(x0 &+ x12, 7)
      x8 ^= rotl(x4 &+ x0, 9)
      x12 ^= rotl(x8 &+ x4, 13)
      x0 ^= rotl(x12 &+ x8, 18)
      x9 ^= rotl(x5 &+ x1, 7)
      x13 ^= rotl(x9 &+ x5, 9)
      x1 ^= rotl(x13 &+ x9, 13)
      x5 ^= rotl(x1 &+ x13, 18)
      x14 ^= rotl(x10 &+ x6, 7)
      x2 ^= rotl(x14 &+ x10, 9)
      x6 ^= rotl(x2 &+ x14, 13)
      x10 ^= rotl(x6 &+ x2, 18)
      x3 ^= rotl(x15 &+ x11, 7)
      x7 ^= rotl(x3 &+ x15, 9)
      x11 ^= rotl(x7 &+ x3, 13)
      x15 ^= rotl(x11 &+ x7, 18)
      x1 ^= rotl(x0 &+ x3, 7)
      x2 ^= rotl(x1 &+ x0, 9)
      x3 ^= rotl(x2 &+ x1, 13)
      x0 ^= rotl(x3 &+ x2, 18)
      x6 ^= rotl(x5 &+ x4, 7)
      x7 ^= rotl(x6 &+ x5, 9)
      x4 ^= rotl(x7 &+ x6, 13)
      x5 ^= rotl(x4 &+ x7, 18)
      x11 ^= rotl(x10 &+ x9, 7)
      x8 ^= rotl(x11 &+ x10, 9)
      x9 ^= rotl(x8 &+ x11, 13)
      x10 ^= rotl(x9 &+ x8, 18)
      x12 ^= rotl(x15 &+ x14, 7)
      x13 ^= rotl(x12 &+ x15, 9)
      x14 ^= rotl(x13 &+ x12, 13)
      x15 ^= rotl(x14 &+ x13, 18)
    }
    b.0 &+= x0
    b.1 &+= x1
    b.2 &+= x2
    b.3 &+= x3
    b.4 &+= x4
    b.5 &+= x5
    b.6 &+= x6
    b.7 &+= x7
    b.8 &+= x8
    b.9 &+= x9
    b.10 &+= x10
    b.11 &+= x11
    b.12 &+= x12
    b.13 &+= x13
    b.14 &+= x14
    b.15 &+= x15
  }
}

public enum HMACSHA256 {
  /// HMAC-SHA256(key, data) (OpenSSL's one-shot HMAC).
  public static func mac(key: [UInt8], data: [UInt8]) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: 32)
    var len: UInt32 = 32
    key.withUnsafeBufferPointer { k in
      data.withUnsafeBufferPointer { d in
        out.withUnsafeMutableBufferPointer { o in
          _ = HMAC(EVP_sha256(), k.baseAddress, Int32(k.count), d.baseAddress, d.count, o.baseAddress, &len)
        }
      }
    }
    return out
  }
}
