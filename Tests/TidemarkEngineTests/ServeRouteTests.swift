// How `tidemark serve` reads request paths, ranges, credentials, htpasswd files and --listen, without a server.
import Foundation
import HummingbirdBcrypt
import Testing
import TidemarkCore

@testable import TidemarkServe

struct ServeRouteTests {
  let id = String(repeating: "0a", count: 32)

  @Test func pathsNameRepositoriesAtAnyDepth() {
    #expect(RESTRoute(path: "/") == .repository(repo: []))
    #expect(RESTRoute(path: "/config") == .config(repo: []))
    #expect(RESTRoute(path: "/alice/laptop/config") == .config(repo: ["alice", "laptop"]))
    #expect(RESTRoute(path: "/repo/data/") == .list(repo: ["repo"], type: .data))
    #expect(RESTRoute(path: "/repo/keys") == .list(repo: ["repo"], type: .keys))
    #expect(RESTRoute(path: "/repo/snapshots/\(id)") == .file(repo: ["repo"], type: .snapshots, name: id))
    #expect(RESTRoute(path: "/a%20b/index/\(id)") == .file(repo: ["a b"], type: .index, name: id))
    #expect(RESTRoute(path: "/repo/tidemark/") == .list(repo: ["repo"], type: .tidemark))
  }

  @Test func pathsThatReachOutsideOrAreAmbiguousAreRefused() {
    #expect(RESTRoute(path: "/../etc/config") == nil)
    #expect(RESTRoute(path: "/.htpasswd") == nil)
    #expect(RESTRoute(path: "/repo/data/.\(id).tmp-1") == nil)
    #expect(RESTRoute(path: "/a%2F..%2Fb/config") == nil)
    // Not a name: upper case, short, or a data subdirectory in the URL.
    #expect(RESTRoute(path: "/repo/data/\(id.uppercased())") == nil)
    #expect(RESTRoute(path: "/repo/data/abc") == nil)
    #expect(RESTRoute(path: "/repo/data/0a/\(id)") == nil)
    // A repository named like a file type.
    #expect(RESTRoute(path: "/data/locks/") == nil)
    #expect(RESTRoute(path: "relative/config") == nil)
  }

  @Test func rangesAreClampedOrRefused() {
    #expect(RESTHandler.parseRange("bytes=2-9", size: 100) ?? (0, 0) == (2, 9))
    #expect(RESTHandler.parseRange("bytes=90-200", size: 100) ?? (0, 0) == (90, 99))
    #expect(RESTHandler.parseRange("bytes=10-", size: 100) ?? (0, 0) == (10, 99))
    #expect(RESTHandler.parseRange("bytes=-5", size: 100) ?? (0, 0) == (95, 99))
    #expect(RESTHandler.parseRange("bytes=100-", size: 100) == nil)
    #expect(RESTHandler.parseRange("bytes=9-2", size: 100) == nil)
    #expect(RESTHandler.parseRange("bytes=0-1,4-5", size: 100) == nil)
    #expect(RESTHandler.parseRange("items=0-1", size: 100) == nil)
  }

  @Test func basicCredentials() {
    let header = "Basic " + Base64.encode(Array("bob:pw:with:colons".utf8))
    #expect(RESTHandler.basicCredentials(header).map { [$0.0, $0.1] } == ["bob", "pw:with:colons"])
    #expect(RESTHandler.basicCredentials("Bearer abc") == nil)
    #expect(RESTHandler.basicCredentials("Basic !!!") == nil)
    #expect(RESTHandler.basicCredentials(nil) == nil)
  }

  @Test func htpasswdTakesBcryptOnly() async throws {
    // As htpasswd -B writes it: $2y$, the same algorithm as $2b$.
    let hash = "$2y$" + Bcrypt.hash("secret", cost: 4).dropFirst(4)
    let users = try Htpasswd(text: "# users\n\nalice:\(hash)\n", file: "f")
    #expect(!users.isEmpty)
    let ok = await users.verify(user: "alice", password: "secret")
    let wrong = await users.verify(user: "alice", password: "Secret")
    let nobody = await users.verify(user: "bob", password: "secret")
    #expect(ok && !wrong && !nobody)
    #expect(throws: TidemarkError.self) { try Htpasswd(text: "carol:{SHA}abc=\n", file: "f") }
    #expect(throws: TidemarkError.self) { try Htpasswd(text: "no colon here\n", file: "f") }
  }

  @Test func listenAddresses() throws {
    #expect(try ServeConfiguration.parseListen(":8000") == ("", 8000))
    #expect(try ServeConfiguration.parseListen("127.0.0.1:80") == ("127.0.0.1", 80))
    #expect(try ServeConfiguration.parseListen("[::1]:8000") == ("::1", 8000))
    #expect(try ServeConfiguration.parseListen("localhost:1") == ("127.0.0.1", 1))
    for bad in ["8000", "::1:8000", "[::1]8000", "host:", "host:70000", "host:-1"] {
      #expect(throws: TidemarkError.self, "\(bad)") { try ServeConfiguration.parseListen(bad) }
    }
  }

  @Test func tlsFilesDefaultToRestServersPlaces() {
    let d = ServeTLS.files(certificate: nil, key: nil, root: "/srv/tidemark")
    #expect(d.certificate == "/srv/tidemark/public_key" && d.key == "/srv/tidemark/private_key")
    let g = ServeTLS.files(certificate: "/etc/c.pem", key: nil, root: "/srv/tidemark/")
    #expect(g.certificate == "/etc/c.pem" && g.key == "/srv/tidemark/private_key")
  }

  @Test func metricsCountFilesByOperation() {
    let file = RESTRoute.file(repo: ["alice", "laptop"], type: .data, name: id)
    #expect(RESTHandler.operation(file, .get, .partialContent).map { [$0.0.name, $0.1] } == ["read", "data"])
    #expect(RESTHandler.operation(file, .post, .ok).map { [$0.0.name, $0.1] } == ["write", "data"])
    #expect(RESTHandler.operation(.config(repo: []), .delete, .ok).map { [$0.0.name, $0.1] } == ["delete", "config"])
    // Refused, listed or only looked at: no file moved.
    #expect(RESTHandler.operation(file, .post, .badRequest) == nil)
    #expect(RESTHandler.operation(file, .head, .ok) == nil)
    #expect(RESTHandler.operation(.list(repo: [], type: .keys), .get, .ok) == nil)

    let metrics = ServeMetrics(access: .authenticated, quota: Quota(limit: 1000, used: 250))
    metrics.blob(.write, user: "alice", repo: "alice/laptop", type: "data", bytes: 600)
    metrics.blob(.write, user: "alice", repo: "alice/laptop", type: "data", bytes: 400)
    metrics.request(repo: ".", method: "GET", status: 401)
    let text = String(decoding: metrics.render(), as: UTF8.self)
    #expect(text.contains("# TYPE rest_server_blob_write_total counter"), "\(text)")
    #expect(
      text.contains("rest_server_blob_write_total{user=\"alice\",repo=\"alice/laptop\",type=\"data\"} 2"), "\(text)")
    #expect(
      text.contains("rest_server_blob_write_bytes_total{user=\"alice\",repo=\"alice/laptop\",type=\"data\"} 1000"),
      "\(text)")
    #expect(text.contains("tidemark_serve_requests_total{repo=\".\",method=\"GET\",code=\"401\"} 1"), "\(text)")
    #expect(text.contains("tidemark_serve_used_bytes 250"), "\(text)")
    #expect(text.contains("tidemark_serve_max_size_bytes 1000"), "\(text)")
  }
}
