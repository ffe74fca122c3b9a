// TidemarkFUSE: thin Swift over libfuse3's low-level API. The only module that imports CFuse3.
// Today it reports the library version; the read-only snapshot filesystem adapter (`tidemark mount`)
// is built on it. Never: global mutable state other than the callback trampolines (context via userdata).
internal import CFuse3

public enum FUSELibrary {
  /// The libfuse3 version string (fuse_pkgversion).
  public static var version: String { String(cString: fuse_pkgversion()) }
}
