// Hard links and renames that must not replace an existing name.
#if canImport(Glibc)
  import Glibc
#endif

extension Sys {
  /// link(2): `b` becomes a second name of `a`; fails with EEXIST when `b` exists, so a file put in place this way
  /// never replaces another.
  public static func link(_ a: BytePath, _ b: BytePath) throws {
    _ = try check("link", b.description) { a.withCString { ca in b.withCString { Glibc.link(ca, $0) } } }
  }
}
