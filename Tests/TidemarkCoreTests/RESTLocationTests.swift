// `rest:` locations: URL parsing, credentials from the URL or the environment, options, and the password kept out
// of the location that messages show.
import Foundation
import NIOSSL
import Testing
import TidemarkBackends
import TidemarkCore

@Suite struct RESTLocationTests {
  @Test func urlsWithAndWithoutCredentials() throws {
    let a = try #require(RESTBackend.parse("rest:http://u:p%40x%3Ay@dr1:8000/a/b/"))
    #expect(a.base == "http://dr1:8000/a/b" && a.server == "dr1:8000")
    #expect(a.user == "u" && a.password == "p@x:y")
    let b = try #require(RESTBackend.parse("rest:https://dr1/"))
    #expect(b.base == "https://dr1" && b.server == "dr1:443" && b.user == nil && b.password == nil)
    let c = try #require(RESTBackend.parse("rest:http://[::1]:8000/r"))
    #expect(c.base == "http://[::1]:8000/r" && c.server == "[::1]:8000")
    #expect(RESTBackend.parse("rest:ftp://dr1/r") == nil)
    #expect(RESTBackend.parse("rest:dr1:8000/r") == nil)
  }

  @Test func optionsAndTheShownLocation() throws {
    let env = ["TIDEMARK_REST_USERNAME": "bob", "TIDEMARK_REST_PASSWORD": "pw"]
    let b = try BackendLocation.open("rest:http://alice:topsecret@dr1:8000/r", options: ["rest.connections=2"])
    #expect(!b.location.contains("topsecret") && b.location.contains("dr1:8000/r"))
    #expect(try BackendLocation.open("rest:http://dr1:8000/r", environment: env).location == "rest:http://dr1:8000/r")
    #expect(throws: TidemarkError.self) {
      try BackendLocation.open("rest:http://dr1:8000/r", options: ["rest.connections=0"])
    }
    #expect(throws: TidemarkError.self) {
      try BackendLocation.open("rest:http://dr1:8000/r", options: ["s3.region=x"])
    }
    #expect(throws: TidemarkError.self) { try BackendLocation.open("rest:nonsense") }
    let (s, t) = try BackendLocation.splitOptions(
      ["rest.connections=3", "sftp.port=2222"], source: "sftp:u@h:/r", target: "rest:http://dr1:8000/r")
    #expect(s == ["sftp.port=2222"] && t == ["rest.connections=3"])
  }

  @Test func clientsAreSharedPerUseAndTrust() throws {
    let storage = try HTTPClients.client(for: .storage)
    #expect(try HTTPClients.client(for: .storage) === storage)
    #expect(try HTTPClients.client(for: .delivery) !== storage)
    // A CA file: its own client, shared by every backend that names the same files.
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cacert-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let make = Process()
    make.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
    make.arguments = [
      "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", dir + "/ca.key",
      "-out", dir + "/ca.crt", "-days", "1", "-subj", "/CN=test CA",
    ]
    make.standardError = FileHandle.nullDevice
    try make.run()
    make.waitUntilExit()
    #expect(make.terminationStatus == 0)
    let trust = TLSTrust(caFiles: [dir + "/ca.crt"])
    let withCA = try HTTPClients.client(for: .storage, trust: trust)
    #expect(withCA !== storage)
    #expect(try HTTPClients.client(for: .storage, trust: TLSTrust(caFiles: [dir + "/ca.crt"])) === withCA)
    // Not a certificate, or no file: a usage error naming the file.
    for bad in [dir + "/ca.key", dir + "/missing.crt"] {
      let error = #expect(throws: TidemarkError.self) {
        try BackendLocation.open("rest:https://dr1:8000/r", trust: TLSTrust(caFiles: [bad]))
      }
      #expect(error?.kind == .usage && error?.message.contains("--cacert \(bad)") == true)
    }
  }

  @Test func certificateFailuresAreFinalAndSaySo() {
    let mismatch = TLSFailure.error(NIOSSLExtraError.failedToValidateHostname, host: "dr1")
    #expect(mismatch?.message == "TLS: certificate of dr1 is not trusted (it is not issued for this name)")
    #expect(mismatch?.kind == .general && mismatch?.hint?.contains("--cacert FILE") == true)
    // A handshake that failed for another reason is not called a certificate problem.
    #expect(TLSFailure.error(NIOSSLError.handshakeFailed(.sslError([])), host: "dr1") == nil)
    struct Refused: Error {}
    #expect(TLSFailure.error(Refused(), host: "dr1") == nil)
  }
}
