// The Debian package of scripts/package.sh: what it holds, what lintian says of it, and that its binary runs on a
// machine without the Swift toolchain (the toolchain's directory hidden under an empty tmpfs in a mount namespace
// of its own: init, backup, restore and a FUSE mount).
import Foundation
import Testing
import TidemarkCore

/// The package under test: TIDEMARK_DEB (scripts/test.sh builds it once), else scripts/package.sh run on
/// .build/release/tidemark-static (the binary an earlier scripts/package.sh linked with the static Swift runtime),
/// or, without one, on the binary the other integration tests use.
enum BuiltPackage {
  static let result: Result<String, any Error> = Result {
    if let deb = ProcessInfo.processInfo.environment["TIDEMARK_DEB"], !deb.isEmpty { return deb }
    // One directory, replaced by every run, so repeated runs leave one package behind.
    let dist = NSTemporaryDirectory() + "tidemark-test-package"
    try? FileManager.default.removeItem(atPath: dist)
    let r = try Tools.run(
      Tools.packageRoot.appendingPathComponent("scripts/package.sh").path, [],
      env: ["TIDEMARK_BIN": staticBinary ?? Tools.tidemark, "TIDEMARK_DIST": dist])
    guard r.status == 0, let deb = r.out.split(separator: "\n").last.map(String.init), deb.hasSuffix(".deb") else {
      throw TidemarkError(.general, "scripts/package.sh failed (\(r.status)): \(r.stderr.suffix(2000))")
    }
    return deb
  }
  static func path() throws -> String { try result.get() }

  static var staticBinary: String? {
    let p = Tools.packageRoot.appendingPathComponent(".build/release/tidemark-static").path
    return FileManager.default.isExecutableFile(atPath: p) ? p : nil
  }
}

/// `dpkg-deb -x` of the package into a workspace; the packaged tidemark is `root/usr/bin/tidemark`.
func extractPackage(_ ws: Workspace) throws -> String {
  let root = ws.sub("root")
  let x = try Tools.run("/usr/bin/dpkg-deb", ["-x", try BuiltPackage.path(), root])
  if x.status != 0 { throw TidemarkError(.general, "dpkg-deb -x failed: \(x.stderr)") }
  return root
}

/// The man pages generate-manual writes for a command tree (`tidemark.1`, `tidemark.key.add.1`, …), from the
/// binary's own description of its commands.
func expectedManualPages(_ tidemark: String) throws -> [String] {
  let dump = try Tools.run(tidemark, ["--experimental-dump-help"])
  let root = try JSON.parse(dump.stdout)
  var pages: [String] = []
  func walk(_ command: JSONValue, _ path: [String]) {
    guard let name = command["commandName"]?.string else { return }
    pages.append((path + [name]).joined(separator: ".") + ".1.gz")
    for sub in command["subcommands"]?.array ?? [] { walk(sub, path + [name]) }
  }
  if let command = root["command"] { walk(command, []) }
  return pages
}

/// The lines of a unit file that say what runs and when (ExecStart, ExecReload, OnCalendar).
func unitDirectives(_ text: String) -> [String] {
  text.split(separator: "\n").map(String.init).filter {
    $0.hasPrefix("ExecStart=") || $0.hasPrefix("ExecReload=") || $0.hasPrefix("OnCalendar=")
  }
}

@Suite(.serialized) struct PackageTests {
  @Test func packageHoldsTheBinaryUnitsManualsCompletionsAndConfiguration() throws {
    let deb = try BuiltPackage.path()
    let listing = try Tools.run("/usr/bin/dpkg-deb", ["-c", deb])
    #expect(listing.status == 0, "\(listing.stderr)")
    let files = Set(
      listing.out.split(separator: "\n").compactMap { line -> String? in
        guard let p = line.split(separator: " ").last, p.hasPrefix("./") else { return nil }
        return String(p.dropFirst(2))
      })

    let ws = try Workspace("package-contents")
    let root = try extractPackage(ws)
    let tidemark = root + "/usr/bin/tidemark"
    let manuals = try expectedManualPages(tidemark)
    #expect(manuals.count > 30, "the binary describes only \(manuals.count) commands")
    #expect(manuals.contains("tidemark.1.gz") && manuals.contains("tidemark.key.add.1.gz"))
    var wanted = manuals.map { "usr/share/man/man1/" + $0 }
    wanted += [
      "usr/bin/tidemark", "usr/sbin/mount.tidemark", "etc/tidemark/tidemark.yaml",
      "usr/share/bash-completion/completions/tidemark", "usr/share/zsh/vendor-completions/_tidemark",
      "usr/share/fish/vendor_completions.d/tidemark.fish", "usr/share/doc/tidemark/copyright",
      "usr/share/doc/tidemark/changelog.Debian.gz",
    ]
    wanted += [
      "tidemark.service", "tidemark-replicate.service", "tidemark-replicate.timer", "tidemark-serve.service",
      "tidemark-mount@.service",
    ].map { "lib/systemd/system/" + $0 }
    let missing = wanted.filter { !files.contains($0) }
    #expect(missing.isEmpty, "the package lacks \(missing)")
    let extraManuals = files.filter {
      $0.hasPrefix("usr/share/man/man1/") && !$0.hasSuffix("/") && !manuals.contains(String($0.dropFirst(19)))
    }
    #expect(extraManuals.isEmpty, "man pages for no command: \(extraManuals)")

    // The example configuration is a conffile (dpkg keeps the administrator's edits on upgrade).
    let control = ws.sub("control")
    #expect(try Tools.run("/usr/bin/dpkg-deb", ["-e", deb, control]).status == 0)
    let conffiles = try String(contentsOfFile: control + "/conffiles", encoding: .utf8)
    #expect(conffiles.split(separator: "\n").contains("/etc/tidemark/tidemark.yaml"))

    // Depends names Debian's libraries the binary links, and nothing of the toolchain.
    let depends = try Tools.run("/usr/bin/dpkg-deb", ["-f", deb, "Depends"]).out
    let names = Set(
      depends.split(separator: ",").map { $0.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: " ")[0] }
        .map(
          String.init))
    for lib in ["libc6", "libfuse3-3", "fuse3", "libssh2-1", "libssl3", "libzstd1"] {
      #expect(names.contains(lib), "Depends lacks \(lib): \(depends)")
    }
    #expect(!depends.contains("swift"), "\(depends)")
    let version = try Tools.run(tidemark, ["version", "--json"]).out
    let reported = try JSON.parse(Array(version.utf8))["version"]?.string ?? ""
    #expect(try Tools.run("/usr/bin/dpkg-deb", ["-f", deb, "Version"]).out.hasPrefix(reported + "-"))

    // Each completion script is for its own shell.
    let completions = try [
      "usr/share/bash-completion/completions/tidemark", "usr/share/zsh/vendor-completions/_tidemark",
      "usr/share/fish/vendor_completions.d/tidemark.fish",
    ].map { try String(contentsOfFile: root + "/" + $0, encoding: .utf8) }
    #expect(
      completions[0].contains("complete -") && completions[0].contains("-F "), "bash: \(completions[0].prefix(200))")
    #expect(completions[1].hasPrefix("#compdef tidemark"), "zsh: \(completions[1].prefix(200))")
    #expect(completions[2].contains("complete -c 'tidemark'"), "fish: \(completions[2].prefix(200))")

    // The example configuration parses (strictly), and the packaged units run what `tidemark schedule install`
    // writes for it.
    let config = root + "/etc/tidemark/tidemark.yaml"
    for timer in [false, true] {
      let units = ws.sub(timer ? "units-timer" : "units")
      let r = try Tools.run(
        tidemark,
        ["schedule", "install", "--no-enable", "--unit-dir", units, "--config", config] + (timer ? ["--timer"] : []))
      #expect(r.status == 0, "the example configuration: \(r.stderr)")
      for name in (try? FileManager.default.contentsOfDirectory(atPath: units)) ?? [] {
        let generated = try String(contentsOfFile: units + "/" + name, encoding: .utf8)
          .replacingOccurrences(of: tidemark, with: "/usr/bin/tidemark")
          .replacingOccurrences(of: config, with: "/etc/tidemark/tidemark.yaml")
        let packaged = try String(contentsOfFile: root + "/lib/systemd/system/" + name, encoding: .utf8)
        #expect(unitDirectives(packaged) == unitDirectives(generated), "\(name) differs from schedule install's")
      }
    }
    let broken = ws.sub("broken.yaml")
    try (try String(contentsOfFile: config, encoding: .utf8) + "no-such-key: 1\n").write(
      toFile: broken, atomically: true, encoding: .utf8)
    let refused = try Tools.run(
      tidemark, ["schedule", "install", "--no-enable", "--unit-dir", ws.sub("units-broken"), "--config", broken])
    #expect(refused.status != 0 && refused.stderr.contains("no-such-key"), "\(refused.stderr)")
  }

  @Test func lintianReportsNoErrors() throws {
    let deb = try BuiltPackage.path()
    let r = try Tools.run("/usr/bin/lintian", ["--no-tag-display-limit", deb])
    let errors = r.out.split(separator: "\n").filter { $0.hasPrefix("E:") }
    #expect(errors.isEmpty, "lintian: \(errors.joined(separator: "\n"))")
    #expect(!r.stderr.contains("error"), "lintian did not run: \(r.stderr)")
  }

  @Test func packagedBinaryRunsWithTheToolchainHidden() throws {
    let ws = try Workspace("package-run")
    let root = try extractPackage(ws)
    try makePackageSource(in: ws)
    // The toolchain's directory: /opt/swift for /opt/swift/usr/bin/swift.
    let swift = try Tools.run("/bin/sh", ["-c", "realpath \"$(command -v swift)\""]).out
      .trimmingCharacters(in: .whitespacesAndNewlines)
    try #require(swift.hasSuffix("/usr/bin/swift") || swift.hasSuffix("/usr/bin/swift-driver"), "swift is \(swift)")
    let toolchain = URL(fileURLWithPath: swift).deletingLastPathComponent().deletingLastPathComponent()
      .deletingLastPathComponent().path

    let r = try Tools.run(
      "/usr/bin/unshare", ["-m", "--propagation", "private", "/bin/bash", "-c", hiddenToolchainScript, "bash"],
      env: [
        "TOOLCHAIN": toolchain, "TIDEMARK": root + "/usr/bin/tidemark", "HELPER": root + "/usr/sbin/mount.tidemark",
        "TIDEMARK_PASSWORD": "package-pw",
        "LD_LIBRARY_PATH": "",
      ], cwd: ws.path)
    #expect(r.status == 0, "in the namespace without the toolchain:\n\(r.out)\n\(r.stderr)")
    #expect(r.out.contains("toolchain hidden"), "\(r.out)")
    #expect(r.out.contains("tidemark ") && r.out.contains("OpenSSL ") && r.out.contains("zstd "), "\(r.out)")
    #expect(r.out.contains("\nmounted: hello from the package test"), "\(r.out)")
    #expect(r.out.contains("helper mounted: hello from the package test"), "\(r.out)")
    let d = differences(try describeTree(ws.sub("src")), try describeTree(ws.sub("restored/src")))
    #expect(d.isEmpty, "restored tree differs: \(d.prefix(10))")
  }
}

/// A small tree with a few kinds of entries for the backup in the hidden-toolchain run.
func makePackageSource(in ws: Workspace) throws {
  let r = try Tools.sh(
    """
    mkdir -p src/sub
    printf 'hello from the package test\\n' > src/hello.txt
    head -c 2000000 /dev/urandom > src/sub/random.bin
    ln -s hello.txt src/link
    chmod 0640 src/sub/random.bin
    """, cwd: ws.path)
  if r.status != 0 { throw TidemarkError(.general, "building the source tree failed: \(r.stderr)") }
}

/// Run by `unshare -m` in the workspace: hides $TOOLCHAIN under an empty tmpfs, proves it is gone, then runs
/// $TIDEMARK version, init, backup, restore and a FUSE mount there, by hand and through $HELPER (mount.tidemark).
/// Every step is bounded by `timeout`.
let hiddenToolchainScript = """
  set -euo pipefail
  mount -t tmpfs -o size=1m,mode=0755 tidemark-no-toolchain "$TOOLCHAIN"
  if [ -n "$(ls -A "$TOOLCHAIN")" ] || "$TOOLCHAIN/usr/bin/swift" --version >/dev/null 2>&1; then
    echo "the toolchain is still visible at $TOOLCHAIN" >&2
    exit 1
  fi
  echo "toolchain hidden: $TOOLCHAIN"
  if ldd "$TIDEMARK" | grep -F 'not found' >&2; then exit 1; fi
  timeout 60 "$TIDEMARK" version
  timeout 60 "$TIDEMARK" version --json
  timeout 120 "$TIDEMARK" init -r repo
  timeout 120 "$TIDEMARK" -r repo backup src
  timeout 120 "$TIDEMARK" -r repo restore latest --target restored
  mkdir mnt
  timeout 120 "$TIDEMARK" -r repo mount mnt >mount.log 2>&1 &
  pid=$!
  for _ in $(seq 1 300); do
    [ -e mnt/snapshots/latest/src/hello.txt ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  ls -l mnt/snapshots/latest/src || { cat mount.log >&2; exit 1; }
  echo "mounted: $(timeout 30 cat mnt/snapshots/latest/src/hello.txt)"
  fusermount3 -u mnt
  wait "$pid"
  # mount(8)'s way: the packaged helper, as /etc/fstab would run it.
  printf '%s\n' "$TIDEMARK_PASSWORD" >pw
  TIDEMARK_BIN="$TIDEMARK" timeout 120 "$HELPER" repo mnt -o ro,password-file=pw,log=helper.log,timeout=60
  echo "helper mounted: $(timeout 30 cat mnt/snapshots/latest/src/hello.txt)"
  umount mnt
  """
