// `rest:` locations: URL parsing, credentials from the URL or the environment, options, and the password kept out
// of the location that messages show.
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
}
