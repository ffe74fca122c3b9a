// The README's first command: scripts/demo.sh runs the main job end to end and ends with SUCCESS.
import Foundation
import Testing

@Suite struct DemoTests {
  /// The demo (without its setup step: the binary under test stands in for the build) backs up, restores,
  /// browses the snapshots through a real mount (by host and time, and one file's versions), restores a deleted file from its path there, replicates to a
  /// DR replica and drills. It runs from a copy of scripts/ so its ./demo lands in the test's workspace.
  @Test func demoRunsTheMainJobEndToEnd() throws {
    let ws = try Workspace("demo")
    let root = Tools.packageRoot.path
    _ = try Tools.sh("cp -r '\(root)/scripts' scripts", cwd: ws.path)
    let r = try Tools.run(
      "/bin/bash", [ws.sub("scripts/demo.sh")],
      env: ["TIDEMARK_DEMO_SKIP_SETUP": "1", "TIDEMARK_BIN": Tools.tidemark], cwd: ws.path)
    let out = r.out + r.stderr
    #expect(r.status == 0, "\(out.suffix(3000))")
    #expect(out.contains("==> SUCCESS"), "\(out.suffix(3000))")
    // The mount was browsed: both snapshots by time, grep found the changed line in one of them only.
    #expect(out.contains("$ ls -l demo/mnt/hosts/"))
    #expect(out.contains("docs/report.txt:20001:line 20001: changed after the first backup"))
    #expect(out.contains("> line 20001: changed after the first backup"))
    #expect(out.contains("$ ls -l demo/mnt/versions/"))
    // The deleted file came back through the mount, and the mount is gone afterwards.
    #expect(FileManager.default.fileExists(atPath: ws.sub("demo/data/docs/notes/todo.txt")))
    let mounts = try String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)
    #expect(!mounts.contains(ws.sub("demo/mnt")))
  }
}
