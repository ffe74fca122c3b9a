// The one error type of a failed syscall (errno, operation, path) and the helpers that retry EINTR
// and turn -1 into it, so no wrapper handles either by hand.
import Foundation
internal import SystemPackage

#if canImport(Glibc)
  import Glibc
#endif

public struct SystemError: Error, CustomStringConvertible, Sendable {
  public let errno: Int32
  public let operation: String
  public let path: String
  public init(_ errno: Int32, _ operation: String, _ path: String = "") {
    self.errno = errno
    self.operation = operation
    self.path = path
  }
  public var description: String {
    let msg = Errno(rawValue: errno).description
    return path.isEmpty ? "\(operation): \(msg)" : "\(operation) \(path): \(msg)"
  }
}

/// Retries a syscall on EINTR; throws SystemError on -1.
@inline(__always)
func check<T: BinaryInteger>(_ op: String, _ path: @autoclosure () -> String, _ body: () -> T) throws -> T {
  while true {
    let r = body()
    if r != -1 { return r }
    if errno == EINTR { continue }
    throw SystemError(errno, op, path())
  }
}

/// Retries on EINTR; throws SystemError(op, path) on -1. For syscalls without a typed wrapper.
public func check<T: BinaryInteger>(_ op: String, _ path: String, _ body: () throws -> T) throws -> T {
  while true {
    let r = try body()
    if r != -1 { return r }
    if errno == EINTR { continue }
    throw SystemError(errno, op, path)
  }
}

/// Runs a swift-system call (which retries EINTR itself) and turns its `Errno` into SystemError(op, path).
@inline(__always)
func systemCall<T>(_ op: String, _ path: @autoclosure () -> String, _ body: () throws -> T) throws -> T {
  do {
    return try body()
  } catch let e as Errno {
    throw SystemError(e.rawValue, op, path())
  }
}
