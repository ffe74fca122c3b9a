// TidemarkCrypto: thin Swift over libcrypto (OpenSSL 3): SHA-256, AES-256-CTR, AES-128-ECB (one block),
// Poly1305, scrypt and the system CSPRNG. The only module that imports COpenSSL.
// Concurrency: every function is thread-safe; algorithm objects are fetched once and are immutable,
// contexts are per call. Never: leak an OpenSSL type through the public API.
internal import COpenSSL

/// An OpenSSL call failed; `function` names the C function.
public struct CryptoError: Error, CustomStringConvertible {
  public let function: String
  public var description: String { "libcrypto: \(function) failed" }
}

// Fetched once; OpenSSL algorithm objects are reference-counted, immutable and thread-safe.
nonisolated(unsafe) private let sha256MD: OpaquePointer? = EVP_MD_fetch(nil, "SHA256", nil)
nonisolated(unsafe) private let aes256CTR: OpaquePointer? = EVP_CIPHER_fetch(nil, "AES-256-CTR", nil)
nonisolated(unsafe) private let aes128ECB: OpaquePointer? = EVP_CIPHER_fetch(nil, "AES-128-ECB", nil)
nonisolated(unsafe) private let poly1305MAC: OpaquePointer? = EVP_MAC_fetch(nil, "POLY1305", nil)

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
