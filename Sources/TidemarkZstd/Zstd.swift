internal import CZstd
// TidemarkZstd: thin Swift over libzstd. The only module that imports CZstd.
// Concurrency: contexts are per call (ZSTD_CCtx is not thread-safe); all functions are thread-safe.
import Foundation

public struct ZstdError: Error, CustomStringConvertible {
  public let message: String
  public var description: String { "zstd: \(message)" }
}

public enum Zstd {
  /// The version of the libzstd loaded at run time (ZSTD_versionString).
  public static var version: String { String(cString: ZSTD_versionString()) }

  /// Compresses `input` into one frame at `level`, with the content size in the frame header.
  public static func compress(_ input: UnsafeRawBufferPointer, level: Int32) throws -> [UInt8] {
    let bound = ZSTD_compressBound(input.count)
    guard let cctx = ZSTD_createCCtx() else { throw ZstdError(message: "cannot create context") }
    defer { ZSTD_freeCCtx(cctx) }
    var err: Int = 0
    let out = [UInt8](unsafeUninitializedCapacity: bound) { buf, n in
      let r = ZSTD_compressCCtx(cctx, buf.baseAddress, bound, input.baseAddress, input.count, level)
      if ZSTD_isError(r) != 0 {
        err = r
        n = 0
      } else {
        n = r
      }
    }
    if err != 0 { throw ZstdError(message: String(cString: ZSTD_getErrorName(err))) }
    return out
  }

  /// Decompresses one or more frames. `expectedSize` (when known, e.g. from the index) sizes the output
  /// exactly; otherwise the frame's content size or streaming decompression is used (restic may omit it).
  public static func decompress(_ input: UnsafeRawBufferPointer, expectedSize: Int? = nil, limit: Int = 1 << 31)
    throws -> [UInt8]
  {
    if let size = expectedSize ?? knownContentSize(input) {
      guard size <= limit else { throw ZstdError(message: "frame larger than \(limit) bytes") }
      var err: Int = 0
      var got = 0
      let out = [UInt8](unsafeUninitializedCapacity: max(size, 1)) { buf, n in
        let r = ZSTD_decompress(buf.baseAddress, size, input.baseAddress, input.count)
        if ZSTD_isError(r) != 0 { err = r; n = 0 } else { got = r; n = r }
      }
      if err != 0 { throw ZstdError(message: String(cString: ZSTD_getErrorName(err))) }
      if let e = expectedSize, got != e {
        throw ZstdError(message: "decompressed \(got) bytes, expected \(e)")
      }
      return out
    }
    return try decompressStream(input, limit: limit)
  }

  /// Decompresses into `output` (sized by the caller from the index); returns the bytes written.
  public static func decompress(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer)
    throws -> Int
  {
    let r = ZSTD_decompress(output.baseAddress, output.count, input.baseAddress, input.count)
    if ZSTD_isError(r) != 0 { throw ZstdError(message: String(cString: ZSTD_getErrorName(r))) }
    return r
  }

  private static func knownContentSize(_ input: UnsafeRawBufferPointer) -> Int? {
    let s = ZSTD_getFrameContentSize(input.baseAddress, input.count)
    // ZSTD_CONTENTSIZE_UNKNOWN / _ERROR are the two largest UInt64 values.
    if s >= UInt64.max - 1 { return nil }
    // Multi-frame input: the first frame's size is not the total.
    if ZSTD_findFrameCompressedSize(input.baseAddress, input.count) != input.count { return nil }
    return Int(s)
  }

  /// Streaming decompression for frames without a content size.
  public static func decompressStream(_ input: UnsafeRawBufferPointer, limit: Int) throws -> [UInt8] {
    guard let dctx = ZSTD_createDStream() else { throw ZstdError(message: "cannot create stream") }
    defer { ZSTD_freeDStream(dctx) }
    var result: [UInt8] = []
    let chunk = ZSTD_DStreamOutSize()
    var buffer = [UInt8](repeating: 0, count: chunk)
    var inBuf = ZSTD_inBuffer(src: input.baseAddress, size: input.count, pos: 0)
    var last = 0
    while true {
      let before = inBuf.pos
      var produced = 0
      let r = buffer.withUnsafeMutableBytes { b -> Int in
        var outBuf = ZSTD_outBuffer(dst: b.baseAddress, size: chunk, pos: 0)
        let r = ZSTD_decompressStream(dctx, &outBuf, &inBuf)
        produced = outBuf.pos
        return r
      }
      if ZSTD_isError(r) != 0 { throw ZstdError(message: String(cString: ZSTD_getErrorName(r))) }
      result.append(contentsOf: buffer[0..<produced])
      guard result.count <= limit else { throw ZstdError(message: "output larger than \(limit) bytes") }
      last = r
      if inBuf.pos == inBuf.size && produced < chunk { break }
      if produced == 0 && inBuf.pos == before { break }
    }
    if last != 0 { throw ZstdError(message: "truncated frame") }
    return result
  }
}

/// A free list of zstd contexts, each used by one thread at a time: taken, used, put back. Creating one
/// per call costs an allocation of its workspace and (for decompression) a `cpuid` probe, which in a
/// virtual machine traps to the hypervisor: that was 8% of the mount's CPU per blob read.
private final class ContextPool: @unchecked Sendable {
  // Guarded by `lock`; contexts are owned by the pool and freed in deinit.
  private var free: [OpaquePointer] = []
  private let lock = NSLock()
  private let make: () -> OpaquePointer?
  private let release: (OpaquePointer) -> Void

  init(make: @escaping () -> OpaquePointer?, release: @escaping (OpaquePointer) -> Void) {
    self.make = make
    self.release = release
  }
  deinit { for c in free { release(c) } }

  func with<R>(_ body: (OpaquePointer) throws -> R) throws -> R {
    lock.lock()
    let ctx = free.popLast() ?? make()
    lock.unlock()
    guard let ctx else { throw ZstdError(message: "cannot create context") }
    defer {
      lock.lock()
      free.append(ctx)
      lock.unlock()
    }
    return try body(ctx)
  }
}

/// Reusable decompression contexts (see `ContextPool` for why). Thread-safe.
public final class ZstdDecompressorPool: Sendable {
  private let pool = ContextPool(make: { ZSTD_createDCtx() }, release: { ZSTD_freeDCtx($0) })

  public init() {}

  /// Decompresses into `output` (sized by the caller from the index); returns the bytes written.
  public func decompress(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) throws -> Int {
    let r = try pool.with { ZSTD_decompressDCtx($0, output.baseAddress, output.count, input.baseAddress, input.count) }
    if ZSTD_isError(r) != 0 { throw ZstdError(message: String(cString: ZSTD_getErrorName(r))) }
    return r
  }

  /// Decompresses a frame whose plaintext is `size` bytes (from the index) into a new array.
  public func decompress(_ input: UnsafeRawBufferPointer, size: Int) throws -> [UInt8] {
    var err = 0
    var got = 0
    let out = try pool.with { ctx in
      [UInt8](unsafeUninitializedCapacity: max(size, 1)) { buf, n in
        let r = ZSTD_decompressDCtx(ctx, buf.baseAddress, size, input.baseAddress, input.count)
        if ZSTD_isError(r) != 0 { err = r; n = 0 } else { got = r; n = r }
      }
    }
    if err != 0 { throw ZstdError(message: String(cString: ZSTD_getErrorName(err))) }
    if got != size { throw ZstdError(message: "decompressed \(got) bytes, expected \(size)") }
    return out
  }
}

/// Reusable compression contexts (see `ContextPool`). Thread-safe.
public final class ZstdCompressorPool: Sendable {
  private let pool = ContextPool(make: { ZSTD_createCCtx() }, release: { ZSTD_freeCCtx($0) })

  public init() {}

  /// Compresses into `out` (its storage reused when large enough) starting at `offset`, leaving at
  /// least `tailroom` bytes after the frame; returns the frame's length. `out.count` is then at least
  /// `offset + ZSTD_compressBound(input.count) + tailroom` (>= the input's size plus both).
  public func compress(
    _ input: UnsafeRawBufferPointer, level: Int32, into out: inout [UInt8], at offset: Int, tailroom: Int = 0
  ) throws -> Int {
    let bound = ZSTD_compressBound(input.count)
    let need = offset + bound + tailroom
    if out.capacity < need {
      // Fresh storage, not zero-filled: every byte used is written before it is read.
      out = [UInt8](unsafeUninitializedCapacity: need) { _, n in n = need }
    } else if out.count < need {
      out.append(contentsOf: repeatElement(0, count: need - out.count))
    }
    let r = try pool.with { ctx in
      out.withUnsafeMutableBytes { o in
        ZSTD_compressCCtx(ctx, o.baseAddress! + offset, bound, input.baseAddress, input.count, level)
      }
    }
    if ZSTD_isError(r) != 0 { throw ZstdError(message: String(cString: ZSTD_getErrorName(r))) }
    return r
  }

  /// Compresses into a new array with `headroom` bytes before and `tailroom` bytes after the frame.
  public func compress(_ input: UnsafeRawBufferPointer, level: Int32, headroom: Int = 0, tailroom: Int = 0)
    throws -> [UInt8]
  {
    let bound = ZSTD_compressBound(input.count)
    var err = 0
    let out = try pool.with { ctx in
      [UInt8](unsafeUninitializedCapacity: headroom + bound + tailroom) { buf, n in
        let r = ZSTD_compressCCtx(ctx, buf.baseAddress! + headroom, bound, input.baseAddress, input.count, level)
        if ZSTD_isError(r) != 0 {
          err = r
          n = 0
        } else {
          n = headroom + r + tailroom
        }
      }
    }
    if err != 0 { throw ZstdError(message: String(cString: ZSTD_getErrorName(err))) }
    return out
  }
}
