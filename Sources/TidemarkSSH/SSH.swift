// TidemarkSSH: thin Swift over libssh2 (SFTP backend). The only module that imports CSSH2.
// Today it reports the library version; the SFTP backend is built on it.
internal import CSSH2

public enum SSHLibrary {
  /// The libssh2 version string (libssh2_version).
  public static var version: String {
    guard let v = libssh2_version(0) else { return "unknown" }
    return String(cString: v)
  }
}
