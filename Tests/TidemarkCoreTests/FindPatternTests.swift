// Pins `find`'s pattern matching to Go's filepath.Match and restic's filter rules (vectors from their tests).
import Testing

@testable import TidemarkOperations

struct FindPatternTests {
  /// Go's path/filepath match tests: pattern, name, match (nil: malformed pattern).
  @Test func goFilepathMatch() {
    let cases: [(String, String, Bool?)] = [
      ("abc", "abc", true), ("*", "abc", true), ("*c", "abc", true), ("a*", "a", true), ("a*", "abc", true),
      ("a*", "ab/c", false), ("a*/b", "abc/b", true), ("a*/b", "a/c/b", false),
      ("a*b*c*d*e*/f", "axbxcxdxe/f", true), ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
      ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false), ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false),
      ("a*b?c*x", "abxbbxdbxebxczzx", true), ("a*b?c*x", "abxbbxdbxebxczzy", false), ("ab[c]", "abc", true),
      ("ab[b-d]", "abc", true), ("ab[e-g]", "abc", false), ("ab[^c]", "abc", false), ("ab[^b-d]", "abc", false),
      ("ab[^e-g]", "abc", true), ("a\\*b", "a*b", true), ("a\\*b", "ab", false), ("a?b", "a☺b", true),
      ("a[^a]b", "a☺b", true), ("a???b", "a☺b", false), ("a[^a][^a][^a]b", "a☺b", false), ("[a-ζ]*", "α", true),
      ("*[a-ζ]", "A", false), ("a?b", "a/b", false), ("a*b", "a/b", false), ("[\\]a]", "]", true),
      ("[\\-]", "-", true), ("[x\\-]", "x", true), ("[x\\-]", "-", true), ("[x\\-]", "z", false),
      ("[\\-x]", "x", true), ("[\\-x]", "-", true), ("[\\-x]", "a", false), ("[]a]", "]", nil), ("[-]", "-", nil),
      ("[x-]", "x", nil), ("[x-]", "-", nil), ("[x-]", "z", nil), ("[-x]", "x", nil), ("[-x]", "-", nil),
      ("[-x]", "a", nil), ("\\", "a", nil), ("[a-b-c]", "a", nil), ("[", "a", nil), ("[^", "a", nil),
      ("[^bc", "a", nil), ("a[", "a", nil), ("a[", "ab", nil), ("a[", "x", nil), ("a/b[", "x", nil),
      ("*x", "xxx", true),
    ]
    for (p, s, want) in cases {
      #expect(goMatch(Array(p.utf8)[...], Array(s.utf8)[...]) == want, "Match(\(p), \(s))")
    }
  }

  /// restic's filter.Match and filter.ChildMatch tests (the ones with absolute paths, as `find` passes them).
  @Test func resticFilterRules() throws {
    let matches: [(String, String, Bool)] = [
      ("", "/x/y/z/foo", true), ("*.go", "/foo/bar/test.go", true), ("*.c", "/foo/bar/test.go", false),
      ("*", "/foo/bar/test.go", true), ("**", "/foo/bar/test.go", true), ("foo*", "/foo/bar/test.go", true),
      ("/bar*", "/foo/bar/test.go", false), ("bar/*", "/foo/bar/test.go", true),
      ("baz/*", "/foo/bar/test.go", false), ("ba*/*.go", "/foo/bar/test.go", true),
      ("tesT.*", "/foo/bar/test.go", false), ("/foo/bar/", "/foo/bar", true), ("/foo/bar", "/foo/baz/", false),
      ("/foo///bar", "/foo/bar", true), ("/foo/../bar", "/foo/bar", false), ("/foo/../bar", "/bar", true),
      ("/foo", "/foo/baz", true), ("/foo/*", "/foo", false), ("bar", "/foo/bar/baz", true),
      ("/foo/*test.*", "/foo/bar/test.go", false), ("/foo/*/test.*", "/foo/bar/test.go", true),
      ("/*/*/baz/test.*", "/foo/bar/baz/test.go", true), ("/*/foo/bar/test.*", "/foo/bar/baz/test.go", false),
      ("sdk", "/foo/bar/sdk/test/sdk_foo.go", true),
      ("sdk/*/cpp/*/*vars*.html", "/usr/share/doc/libreoffice/sdk/docs/cpp/ref/a00517.html", false),
      ("foo/**/bar/*.go", "/home/user/foo/work/special/project/bar/test.go", true),
      ("foo/**/bar/*.go", "/home/user/foo/bar/test.go", true), ("foo/**/bar/*.go", "/home/user/foo/test.c", false),
      ("foo/**/bar/*.go", "/foo/bar/main.go", true), ("foo/**/bar", "/home/user/foo/x/y/bar/main.go", true),
      ("foo/**/bar/**/x", "/home/user/foo/blaaa/blaz/bar/shared/work/x", true),
      ("user/**/important*", "/home/user/work/x/y/hidden/x", false),
      ("user/**/hidden*/**/c", "/home/user/work/x/y/hidden/z/a/b/c", true),
      ("!bar", "/foo/bar", true),
    ]
    for (p, path, want) in matches {
      #expect(try FindPattern(p).matches(Array(path.utf8)) == want, "Match(\(p), \(path))")
    }
    let children: [(String, String, Bool)] = [
      ("", "/foo", true), ("foo/bar", "/foo", true), ("baz", "/foo/bar", true), ("*", "/foo/bar", true),
      ("/foo/bar/baz", "/foo", true), ("/foo/bar/baz", "/foo/bar", true), ("/foo/bar/baz", "/foo/baz", false),
      ("/foo/**/baz", "/foo/bar/baz/blah", true), ("/foo/**/qux", "/foo/bar/baz/boo", true),
      ("/foo/**", "/foo/bar", true), ("/foo/*/qux", "/foo/bar", true), ("/foo/*/qux", "/foo/bar/boo", false),
      ("/foo/*/qux", "/foo/bar/boo/xx", false), ("/baz/bar", "/foo", false), ("/*", "/foo/bar", true),
      ("/**", "/foo", true), ("/*/**", "/foo/bar", true), ("/*/bar", "/foo", true), ("/bar/*", "/foo", false),
      ("/foo/*/baz", "/foo/baz", true), ("/foo/*/baz", "/bar/baz", false), ("/**/*", "/foo", true),
      ("/**/bar", "/foo/bar", true),
    ]
    for (p, path, want) in children {
      #expect(try FindPattern(p).childMayMatch(Array(path.utf8)) == want, "ChildMatch(\(p), \(path))")
    }
    #expect(throws: BadPatternError.self) { try FindPattern("a[").matches(Array("/x/y".utf8)) }
    #expect(goClean(Array("a//b/./c/../d/".utf8)) == Array("a/b/d".utf8))
    #expect(goClean(Array("/../x".utf8)) == Array("/x".utf8))
    #expect(goClean(Array("../../x/..".utf8)) == Array("../..".utf8))
  }
}
