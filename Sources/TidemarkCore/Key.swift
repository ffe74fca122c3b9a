// The repository's master key and restic's authenticated encryption:
// seal(p) = nonce ‖ AES-256-CTR(p) ‖ Poly1305-AES(ct), 32 bytes of overhead.
import Foundation
import TidemarkCrypto

public struct MasterKey: Sendable, Equatable {
  public var encrypt: [UInt8]  // 32 bytes, AES-256
  public var macK: [UInt8]  // 16 bytes, AES-128 key for the Poly1305 nonce
  public var macR: [UInt8]  // 16 bytes, Poly1305 r (clamped on use)

  public static let overhead = 32

  public init(encrypt: [UInt8], macK: [UInt8], macR: [UInt8]) {
    precondition(encrypt.count == 32 && macK.count == 16 && macR.count == 16)
    self.encrypt = encrypt
    self.macK = macK
    self.macR = macR
  }

  public static func random() -> MasterKey {
    MasterKey(encrypt: SecureRandom.bytes(32), macK: SecureRandom.bytes(16), macR: SecureRandom.bytes(16))
  }

  /// The 64 bytes of scrypt output: AES key, then MAC k, then MAC r.
  public init(derived b: [UInt8]) {
    self.init(encrypt: Array(b[0..<32]), macK: Array(b[32..<48]), macR: Array(b[48..<64]))
  }

  static func clamp(_ r: [UInt8]) -> [UInt8] {
    var r = r
    for i in [3, 7, 11, 15] { r[i] &= 0x0f }
    for i in [4, 8, 12] { r[i] &= 0xfc }
    return r
  }

  private func tag(nonce: UnsafeRawBufferPointer, ciphertext: UnsafeRawBufferPointer) throws -> [UInt8] {
    let s = try macK.withUnsafeBytes { try AES.ecb128EncryptBlock(key: $0, block: nonce) }
    let polyKey = MasterKey.clamp(macR) + s
    return try polyKey.withUnsafeBytes { try Poly1305.mac(key: $0, message: ciphertext) }
  }

  /// Encrypts and authenticates `plaintext` with a fresh random nonce.
  public func seal(_ plaintext: UnsafeRawBufferPointer) throws -> [UInt8] {
    var nonce = SecureRandom.bytes(16)
    while nonce.allSatisfy({ $0 == 0 }) { nonce = SecureRandom.bytes(16) }
    let n = plaintext.count
    var out = [UInt8](repeating: 0, count: n + 32)
    try out.withUnsafeMutableBytes { o in
      o.copyMemory(from: UnsafeRawBufferPointer(nonce.withUnsafeBytes { $0 }))
      try encrypt.withUnsafeBytes { k in
        try nonce.withUnsafeBytes { iv in
          try AES.ctr256(
            key: k, iv: iv, input: plaintext, output: UnsafeMutableRawBufferPointer(rebasing: o[16..<(16 + n)]))
          let t = try tag(nonce: iv, ciphertext: UnsafeRawBufferPointer(rebasing: o[16..<(16 + n)]))
          UnsafeMutableRawBufferPointer(rebasing: o[(16 + n)...]).copyBytes(from: t)
        }
      }
    }
    return out
  }

  public func seal(_ plaintext: [UInt8]) throws -> [UInt8] { try plaintext.withUnsafeBytes { try seal($0) } }

  /// Seals in place: `buf` holds 16 bytes of room, the plaintext, then 16 bytes of room.
  public func sealInPlace(_ buf: inout [UInt8]) throws {
    try buf.withUnsafeMutableBytes { try sealInPlace(region: $0) }
  }

  /// Seals in place: `o` holds 16 bytes of room, the plaintext, then 16 bytes of room.
  public func sealInPlace(region o: UnsafeMutableRawBufferPointer) throws {
    precondition(o.count >= 32)
    var nonce = SecureRandom.bytes(16)
    while nonce.allSatisfy({ $0 == 0 }) { nonce = SecureRandom.bytes(16) }
    let n = o.count - 32
    o.copyBytes(from: nonce)
    let body = UnsafeMutableRawBufferPointer(rebasing: o[16..<(16 + n)])
    try encrypt.withUnsafeBytes { k in
      try nonce.withUnsafeBytes { iv in
        try AES.ctr256(key: k, iv: iv, input: UnsafeRawBufferPointer(body), output: body)
        let t = try tag(nonce: iv, ciphertext: UnsafeRawBufferPointer(body))
        UnsafeMutableRawBufferPointer(rebasing: o[(16 + n)...]).copyBytes(from: t)
      }
    }
  }

  /// Verifies the MAC, then decrypts. Returns nil when the MAC does not match (wrong key or damage).
  public func open(_ sealed: UnsafeRawBufferPointer) throws -> [UInt8]? {
    guard sealed.count >= 32 else { return nil }
    let n = sealed.count - 32
    let nonce = UnsafeRawBufferPointer(rebasing: sealed[0..<16])
    let ct = UnsafeRawBufferPointer(rebasing: sealed[16..<(16 + n)])
    let expected = try tag(nonce: nonce, ciphertext: ct)
    var diff: UInt8 = 0
    for i in 0..<16 { diff |= expected[i] ^ sealed[16 + n + i] }
    guard diff == 0 else { return nil }
    // Written in full by AES-CTR: no need to zero it first.
    var failure: Error? = nil
    let out = [UInt8](unsafeUninitializedCapacity: n) { o, count in
      count = n
      guard n > 0 else { return }
      do {
        try encrypt.withUnsafeBytes { k in
          try AES.ctr256(key: k, iv: nonce, input: ct, output: UnsafeMutableRawBufferPointer(o))
        }
      } catch {
        failure = error
      }
    }
    if let failure { throw failure }
    return out
  }

  public func open(_ sealed: [UInt8]) throws -> [UInt8]? { try sealed.withUnsafeBytes { try open($0) } }

  /// Verifies the MAC, then decrypts in place. Returns the plaintext (a slice of `sealed`), or nil
  /// when the MAC does not match.
  public func openInPlace(_ sealed: UnsafeMutableRawBufferPointer) throws -> UnsafeMutableRawBufferPointer? {
    guard sealed.count >= 32 else { return nil }
    let n = sealed.count - 32
    let nonce = UnsafeRawBufferPointer(rebasing: sealed[0..<16])
    let body = UnsafeMutableRawBufferPointer(rebasing: sealed[16..<(16 + n)])
    let expected = try tag(nonce: nonce, ciphertext: UnsafeRawBufferPointer(body))
    var diff: UInt8 = 0
    for i in 0..<16 { diff |= expected[i] ^ sealed[16 + n + i] }
    guard diff == 0 else { return nil }
    if n > 0 {
      try encrypt.withUnsafeBytes { k in
        try AES.ctr256(key: k, iv: nonce, input: UnsafeRawBufferPointer(body), output: body)
      }
    }
    return body
  }

  /// `{"mac":{"k":…,"r":…},"encrypt":…}` as stored (sealed) in a key file.
  public var json: [UInt8] {
    var w = JSONWriter()
    w.raw("{\"mac\":{\"k\":")
    w.string(Base64.encode(macK))
    w.raw(",\"r\":")
    w.string(Base64.encode(macR))
    w.raw("},\"encrypt\":")
    w.string(Base64.encode(encrypt))
    w.raw("}")
    return w.out
  }

  public init?(json: [UInt8]) {
    guard let v = try? JSON.parse(json), let k = v["mac"]?["k"]?.bytes.flatMap(Base64.decode),
      let r = v["mac"]?["r"]?.bytes.flatMap(Base64.decode), let e = v["encrypt"]?.bytes.flatMap(Base64.decode),
      k.count == 16, r.count == 16, e.count == 32
    else { return nil }
    self.init(encrypt: e, macK: k, macR: r)
  }
}

/// A key file (`keys/<id>`): plaintext JSON holding the master key sealed under a password-derived key.
public struct KeyFile: Sendable {
  public var created: Timestamp
  public var username: String
  public var hostname: String
  public var n: UInt64, r: UInt64, p: UInt64
  public var salt: [UInt8]
  public var data: [UInt8]

  /// scrypt parameters restic 0.14 calibrated to on this class of machine.
  public static let defaultParams: (n: UInt64, r: UInt64, p: UInt64) = (32768, 8, 5)

  public func userKey(password: [UInt8]) throws -> MasterKey {
    MasterKey(derived: try KeyFile.scrypt(password, salt, n, r, p))
  }

  /// scrypt for key files. Several lanes (p > 1) and cores: two lanes at a time (Scrypt.deriveParallel),
  /// so opening a repository takes ~0.6x the time. One lane or one core: OpenSSL's implementation.
  static func scrypt(_ password: [UInt8], _ salt: [UInt8], _ n: UInt64, _ r: UInt64, _ p: UInt64) throws -> [UInt8] {
    let cores = ProcessInfo.processInfo.activeProcessorCount
    if p >= 2 && cores >= 2 && n >= 1024 {
      return try Scrypt.deriveParallel(password: password, salt: salt, n: n, r: r, p: p, length: 64, threads: 2)
    }
    return try Scrypt.derive(password: password, salt: salt, n: n, r: r, p: p, length: 64)
  }

  /// Opens the master key; nil when the password does not fit this key.
  public func open(password: [UInt8]) throws -> MasterKey? {
    guard let plain = try userKey(password: password).open(data) else { return nil }
    guard let mk = MasterKey(json: plain) else {
      throw TidemarkError.corrupt("key file holds no valid master key")
    }
    return mk
  }

  public static func create(
    master: MasterKey, password: [UInt8], username: String, hostname: String,
    params: (n: UInt64, r: UInt64, p: UInt64) = KeyFile.defaultParams
  ) throws -> KeyFile {
    let salt = SecureRandom.bytes(64)
    let user = MasterKey(derived: try KeyFile.scrypt(password, salt, params.n, params.r, params.p))
    return KeyFile(
      created: .now(), username: username, hostname: hostname, n: params.n, r: params.r, p: params.p, salt: salt,
      data: try user.seal(master.json))
  }

  public var json: [UInt8] {
    var w = JSONWriter()
    w.raw("{\"created\":")
    w.string(created.rfc3339Nano)
    w.raw(",\"username\":")
    w.string(username)
    w.raw(",\"hostname\":")
    w.string(hostname)
    w.raw(",\"kdf\":\"scrypt\",\"N\":")
    w.number(n)
    w.raw(",\"r\":")
    w.number(r)
    w.raw(",\"p\":")
    w.number(p)
    w.raw(",\"salt\":")
    w.string(Base64.encode(salt))
    w.raw(",\"data\":")
    w.string(Base64.encode(data))
    w.raw("}")
    return w.out
  }

  public init(
    created: Timestamp, username: String, hostname: String, n: UInt64, r: UInt64, p: UInt64, salt: [UInt8],
    data: [UInt8]
  ) {
    (self.created, self.username, self.hostname, self.n, self.r, self.p, self.salt, self.data) =
      (created, username, hostname, n, r, p, salt, data)
  }

  public init(json: [UInt8]) throws {
    let v = try JSON.parse(json)
    guard v["kdf"]?.string == "scrypt", let n = v["N"]?.uint64, let r = v["r"]?.uint64, let p = v["p"]?.uint64,
      let salt = v["salt"]?.bytes.flatMap(Base64.decode), let data = v["data"]?.bytes.flatMap(Base64.decode)
    else { throw TidemarkError.corrupt("key file is not a valid scrypt key") }
    guard n > 1, n & (n - 1) == 0, r > 0, p > 0, r * p < (1 << 30), n <= (1 << 30) else {
      throw TidemarkError.corrupt("key file has invalid scrypt parameters N=\(n) r=\(r) p=\(p)")
    }
    self.init(
      created: v["created"]?.string.flatMap { Timestamp(rfc3339: $0) }
        ?? Timestamp(seconds: 0, nanoseconds: 0, offset: 0),
      username: v["username"]?.string ?? "", hostname: v["hostname"]?.string ?? "", n: n, r: r, p: p, salt: salt,
      data: data)
  }
}

extension Repository {
  /// Every readable key file with its name, oldest first.
  public func keyFiles() async throws -> [(String, KeyFile)] {
    var rows: [(String, KeyFile)] = []
    for f in try await backend.list(.key) {
      if let k = try? KeyFile(json: try await backend.load(Handle(.key, f.name))) { rows.append((f.name, k)) }
    }
    return rows.sorted { $0.1.created < $1.1.created }
  }

  /// The scrypt parameters of the key file this repository was opened with; restic's defaults when it was
  /// opened without one or the file cannot be read.
  public func keyParams() async -> (n: UInt64, r: UInt64, p: UInt64) {
    guard let id = keyID, let json = try? await backend.load(Handle(.key, id.hex)),
      let k = try? KeyFile(json: json)
    else { return KeyFile.defaultParams }
    return (k.n, k.r, k.p)
  }

  /// Saves a new key file wrapping this repository's master key with `password`; returns its name. The key
  /// records `username` and `hostname`, this machine's when nil.
  public func addKey(
    password: [UInt8], username: String? = nil, hostname: String? = nil,
    kdf: (n: UInt64, r: UInt64, p: UInt64) = KeyFile.defaultParams
  ) async throws -> String {
    let kf = try KeyFile.create(
      master: key, password: password, username: username ?? SystemInfo.username,
      hostname: hostname ?? SystemInfo.hostname, params: kdf)
    let json = kf.json
    let id = RawID.hash(json).hex
    try await backend.save(Handle(.key, id), data: json)
    return id
  }

  /// The key file `prefix` names, refused when it is the key this repository was opened with (removing it would
  /// leave the caller unable to prove it still has a working password).
  public func removableKey(_ prefix: String) async throws -> String {
    let name = try await resolve(.key, prefix: prefix)
    if name == keyID?.hex {
      throw TidemarkError(
        .usage, "refusing to remove the key in use", hint: "open the repository with another password first")
    }
    return name
  }

  /// Changes the password: saves a key file for `password`, then removes the one in use; returns the new name.
  public func changePassword(
    to password: [UInt8], kdf: (n: UInt64, r: UInt64, p: UInt64) = KeyFile.defaultParams
  ) async throws -> String {
    let id = try await addKey(password: password, kdf: kdf)
    if let old = keyID { try await backend.remove(Handle(.key, old.hex)) }
    return id
  }
}
