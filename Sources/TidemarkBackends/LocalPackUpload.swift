// A pack written into a local repository as it fills: an unnamed file (O_TMPFILE) in data/, named once it is
// complete and durable (fsync, link as data/XX/<id>, fsync of data/XX). Until then nobody sees it, and an
// interrupted process leaves nothing behind. Where the filesystem has no unnamed files, a temp file in data/
// itself (restic and tidemark list packs only inside data/XX), renamed into place. The pack's bytes go straight to
// the disk (`DirectWriter`), not through the page cache, where the filesystem allows it.
import Foundation
import TidemarkCore
import TidemarkSystem

extension LocalBackend {
  public func makePackUpload() -> (any PackUpload)? { LocalPackUpload(self) }
}

final class LocalPackUpload: PackUpload, @unchecked Sendable {
  let backend: LocalBackend
  // Touched by `append` (one thread at a time, in order, per the contract), then by `commit` or `discard`,
  // each of which starts after the last `append` returned.
  private var fd: Int32 = -1
  /// The named temp file, where the filesystem has no unnamed files.
  private var temp: BytePath?
  private var written: Int64 = 0
  /// Writes the pack with O_DIRECT; nil where the filesystem refuses it (then every append is an ordinary write).
  private var direct: DirectWriter?

  init(_ backend: LocalBackend) { self.backend = backend }

  deinit {
    guard fd >= 0 else { return }
    direct?.abandon()
    Sys.close(fd)
  }

  func append(_ bytes: UnsafeRawBufferPointer) throws {
    if fd < 0 { try open() }
    if let direct {
      try direct.write(bytes)
    } else {
      try Sys.pwrite(fd, bytes, offset: written)
    }
    written += Int64(bytes.count)
  }

  private func open() throws {
    let data = backend.dir(.pack)
    do {
      fd = try Sys.openUnnamed(in: data, mode: 0o600)
    } catch let e as SystemError where [EOPNOTSUPP, EISDIR, EINVAL].contains(e.errno) {
      let t = data.appending("tidemark-pack-\(UInt64.random(in: 0...UInt64.max))-tmp")
      fd = try Sys.open(t, O_WRONLY | O_CREAT | O_EXCL, 0o600)
      temp = t
    }
    direct = DirectWriter(fd: fd, buffers: backend.directWrites)
  }

  func commit(as h: Handle) async throws {
    let final = backend.path(h)
    let dir = backend.dir(.pack).appending(String(h.name.prefix(2)))
    let (fd, temp, size, direct) = (self.fd, self.temp, written, self.direct)
    self.fd = -1
    self.direct = nil
    guard fd >= 0 else { throw SystemError(EBADF, "commit", final.description) }
    try await Blocking.run {
      defer { Sys.close(fd) }
      do {
        // The writes under way end before the descriptor closes, failed or not.
        try direct?.finish()
        try Sys.fsync(fd)
        // As `Sys.writeAtomically`: a pack is not read back soon, so its pages leave the page cache once durable.
        if direct == nil && size >= 1 << 20 { _ = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) }
        _ = fchmod(fd, 0o400)
        try Self.publish(fd, temp, as: final, dir: dir)
      } catch {
        if let temp { try? Sys.unlink(temp) }
        throw error
      }
      try Sys.fsyncDirectory(dir)
    }
  }

  /// Gives the pack its name. A pack of that name is already there: the same bytes (the name is their hash), so
  /// it stays. A repository made by an older tool may lack the data/XX directory: it is made.
  private static func publish(_ fd: Int32, _ temp: BytePath?, as final: BytePath, dir: BytePath) throws {
    func once() throws {
      if let temp {
        try Sys.rename(temp, final)
      } else {
        do {
          try Sys.linkUnnamed(fd, to: final)
        } catch let e as SystemError where e.errno == EEXIST {}
      }
    }
    do {
      try once()
    } catch let e as SystemError where e.errno == ENOENT {
      try Sys.mkdir(dir, 0o700)
      try once()
    }
  }

  func discard() async {
    let (fd, temp, direct) = (self.fd, self.temp, self.direct)
    self.fd = -1
    self.direct = nil
    guard fd >= 0 else { return }
    try? await Blocking.run {
      direct?.abandon()
      Sys.close(fd)
      if let temp { try Sys.unlink(temp) }
    }
  }
}
