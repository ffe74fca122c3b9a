// `tidemark serve`: flags only; the server is TidemarkServe's.
import ArgumentParser
import Foundation
import TidemarkCore
import TidemarkEngine
import TidemarkServe

struct ServeCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "serve",
    abstract: "Serve repositories over restic's REST protocol (v1 and v2).",
    discussion: """
      Serves the repositories below --path to restic (`-r rest:http://host:port/REPO`, or rest:https:// with \
      --tls) and tidemark. The served directory is an ordinary local repository (or a tree of them): restic and \
      tidemark can open it directly too. Every upload but config is checked against its name (the SHA-256 of its \
      content) and put in place only when complete and fsynced. With --append-only nothing that exists is deleted \
      or replaced (403), except lock files: a client that is compromised cannot destroy what the server holds. \
      Authentication: Basic, with bcrypt entries of an htpasswd file (`htpasswd -B`), --htpasswd-file or \
      PATH/.htpasswd; --no-auth serves without. --tls serves HTTPS with --tls-cert and --tls-key (PEM; default \
      PATH/public_key and PATH/private_key, as rest-server); clients of a private CA pass --cacert FILE. A full \
      disk answers 507 and keeps nothing of the upload. --prometheus serves GET /metrics (rest-server's \
      rest_server_blob_* counters and requests by repository, method and status), for the same users as the \
      repositories unless --prometheus-no-auth. SIGTERM/SIGINT: stop after the requests under way.
      """)

  @Option(help: "Listen address: HOST:PORT, [IPV6]:PORT or :PORT (all interfaces).") var listen = ":8000"
  @Option(help: "The directory that holds the repositories.") var path = "/tmp/restic"
  @Flag(help: "Refuse to delete or replace anything but lock files.") var appendOnly = false
  @Flag(help: "Users may only reach repositories below /USER/.") var privateRepos = false
  @Flag(help: "Serve without authentication.") var noAuth = false
  @Option(help: "The htpasswd file (bcrypt entries); default PATH/.htpasswd.") var htpasswdFile: String?
  @Option(help: "The most bytes all repositories may hold together; uploads over it get 413.") var maxSize: Int64?
  @Flag(help: "Serve HTTPS (TLS 1.2 or later) instead of HTTP.") var tls = false
  @Option(help: ArgumentHelp("The certificate (chain), PEM; default PATH/public_key.", valueName: "file"))
  var tlsCert: String?
  @Option(help: ArgumentHelp("The certificate's private key, PEM; default PATH/private_key.", valueName: "file"))
  var tlsKey: String?
  @Flag(help: "Serve Prometheus metrics on GET /metrics (for authenticated users).") var prometheus = false
  @Flag(help: "With --prometheus: /metrics needs no authentication.") var prometheusNoAuth = false

  func run() async throws {
    let (host, port) = try ServeConfiguration.parseListen(listen)
    var users: Htpasswd? = nil
    if noAuth {
      if privateRepos { throw TidemarkError(.usage, "--private-repos needs authentication; drop --no-auth") }
    } else {
      let file = htpasswdFile ?? (path.hasSuffix("/") ? path : path + "/") + ".htpasswd"
      if htpasswdFile == nil && !FileManager.default.fileExists(atPath: file) {
        throw TidemarkError(
          .usage,
          "no htpasswd file: \(file) does not exist; give --htpasswd-file FILE, or --no-auth to serve without authentication"
        )
      }
      users = try await Htpasswd.load(file)
    }
    if let maxSize, maxSize <= 0 { throw TidemarkError(.usage, "--max-size must be a positive number of bytes") }
    if !tls && (tlsCert != nil || tlsKey != nil) {
      throw TidemarkError(.usage, "--tls-cert and --tls-key need --tls")
    }
    if prometheusNoAuth && !prometheus {
      throw TidemarkError(.usage, "--prometheus-no-auth needs --prometheus")
    }
    let server = try await RESTServer(
      configuration: ServeConfiguration(
        host: host, port: port, root: path, appendOnly: appendOnly, privateRepos: privateRepos, users: users,
        maxSize: maxSize, tls: tls ? ServeTLS.files(certificate: tlsCert, key: tlsKey, root: path) : nil,
        metrics: prometheus ? (prometheusNoAuth ? .open : .authenticated) : nil),
      logger: EngineLog.journal())
    try await server.runUntilSignalled()
  }
}
