import Foundation
import Testing
import VireoAPI
#if canImport(Glibc)
import Glibc
#endif

/// The `vireo vm` / `vireo host info` CLI against a real daemon: tables by default, JSON with
/// --json, the daemon's errors as one line with what to do.
@Suite(.serialized, .timeLimit(.minutes(2)), .enabled(if: VireoBinary.path != nil))
struct HostCLITests {
    func vireo(_ d: TestDaemon, _ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        try ChildProcessRunner.run([VireoBinary.path ?? "vireo", "--socket", d.socket] + args)
    }

    @Test func createListShowJSONAndErrors() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        let created = try vireo(d, ["vm", "create", "cli-1", "--probe", "dirty", "--memory", "64M", "--cpus", "2", "--restart", "on-failure"])
        #expect(created.status == 0, "\(created.stderr)")
        #expect(created.stdout.contains("created cli-1: 2 vCPUs, 64 MiB"))

        let list = try vireo(d, ["vm", "list"])
        #expect(list.stdout.split(separator: "\n").first?.hasPrefix("NAME") == true)
        #expect(list.stdout.contains("cli-1") && list.stdout.contains("stopped"))

        let json = try vireo(d, ["vm", "list", "--json"])
        let parsed = try JSONDecoder().decode(VMList.self, from: Data(json.stdout.utf8))
        #expect(parsed.vms.first?.restartPolicy == .onFailure && parsed.vms.first?.vcpus == 2)

        let show = try vireo(d, ["vm", "show", "cli-1"])
        #expect(show.stdout.contains("restart policy:") && show.stdout.contains("on-failure"))

        let dup = try vireo(d, ["vm", "create", "cli-1", "--probe", "dirty"])
        #expect(dup.status == 1)
        #expect(dup.stderr.contains("already exists") && dup.stderr.contains("[conflict]"))

        let bad = try vireo(d, ["vm", "create", "Bad!", "--probe", "dirty"])
        #expect(bad.status == 1 && bad.stderr.contains("not a valid VM name"))

        let missing = try vireo(d, ["vm", "start", "nope"])
        #expect(missing.status == 1 && missing.stderr.contains("vireo vm list"))

        let relative = try vireo(d, ["vm", "create", "k1", "--kernel", "no-such-vmlinuz"])
        #expect(relative.status == 1 && relative.stderr.contains("does not exist"))

        let info = try vireo(d, ["host", "info"])
        #expect(info.status == 0 && info.stdout.contains("pCPUs:") && info.stdout.contains("vCPU:pCPU overcommit"))
    }

    @Test(.enabled(if: VireoBinary.hasKVM)) func startLogsStopDeleteThroughTheCLI() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        #expect(try vireo(d, ["vm", "create", "cli-2", "--probe", "dirty", "--memory", "32M"]).status == 0)
        let start = try vireo(d, ["vm", "start", "cli-2"])
        #expect(start.status == 0 && start.stdout.contains("cli-2: running (pid "))
        var logs = ""
        for _ in 0..<50 {
            logs = try vireo(d, ["vm", "logs", "cli-2"]).stdout
            if logs.contains("pass 1 done") { break }
            usleep(100_000)
        }
        #expect(logs.contains("probe: dirty pass 1 done"))
        let running = try vireo(d, ["vm", "delete", "cli-2"])
        #expect(running.status == 1 && running.stderr.contains("vireo vm stop cli-2"))
        #expect(try vireo(d, ["vm", "pause", "cli-2"]).stdout.contains("paused"))
        #expect(try vireo(d, ["vm", "stop", "cli-2"]).stdout.contains("stopped"))
        #expect(try vireo(d, ["vm", "delete", "cli-2"]).stdout.contains("deleted cli-2"))
        #expect(try vireo(d, ["vm", "list", "--json"]).stdout.contains(#""vms":[]"#))
    }
}
