// The S3 backend (not wired into the CLI yet): its request signing against AWS's known-answer example.
import Foundation
import Testing
import TidemarkBackends
import TidemarkCore
import TidemarkSystem

@Suite(.serialized) struct S3Tests {
  /// AWS's published example (GET Object, single chunk): our canonical request and signing give its signature.
  @Test func signatureV4MatchesAWSExample() throws {
    let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    let creds = S3Credentials(
      accessKey: "AKIAIOSFODNN7EXAMPLE", secretKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", sessionToken: nil,
      region: "us-east-1")
    let auth = S3Backend.authorization(
      method: "GET", path: "/test.txt", query: "",
      headers: [
        "host": "examplebucket.s3.amazonaws.com", "range": "bytes=0-9", "x-amz-content-sha256": empty,
        "x-amz-date": "20130524T000000Z",
      ], payloadHash: empty, date: Date(timeIntervalSince1970: 1_369_353_600), credentials: creds)
    #expect(
      auth
        == "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )
  }
}
