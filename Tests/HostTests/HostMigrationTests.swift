import Foundation
import Testing
import VireoTestSupport
import VireoAPI
#if canImport(Glibc)
import Glibc
#endif

/// Live migration between two daemons, as an operator runs it (`vireo vm migrate`), with
/// probe-guest VMs on this host's KVM: the VM moves and back, each daemon owns it after, and the
/// source keeps nothing; a wrong token, an unreachable destination, a name taken there and a
/// stopped VM are each refused with the VM running on where it was and nothing left at the
/// destination. (Disks copied with --storage copy are proven in the testbed's host-migrate-linux:
/// probe guests with disks cannot be moved.)
@Suite(.serialized, .timeLimit(.minutes(3)), .enabled(if: VireoBinary.path != nil && VireoBinary.hasKVM))
struct HostMigrationTests {
    static let token = "migration-test-token-0123456789"

    func pair() throws -> (TestDaemon, TestDaemon, String) {
        let tokenFile = "/tmp/vireo-mig-token-\(getpid())"
        _ = Self.token.withCString { s in
            let fd = open(tokenFile, O_WRONLY | O_CREAT | O_TRUNC, 0o600); defer { close(fd) }
            return write(fd, s, strlen(s))
        }
        let listen = ["--listen", "127.0.0.1:0", "--token-file", tokenFile]
        return (try TestDaemon(extra: listen), try TestDaemon(extra: listen), tokenFile)
    }

    func vireo(_ d: TestDaemon, _ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        try ChildProcessRunner.run([VireoBinary.path ?? "vireo", "--socket", d.socket] + args)
    }

    @Test func aRunningVMMovesToAnotherDaemonAndBack() throws {
        let (a, b, tokenFile) = try pair()
        defer { a.shutdown(); b.shutdown() }
        let aPort = try #require(a.tcpPort), bPort = try #require(b.tcpPort)
        _ = try a.createProbe("m", workload: "dirty", memory: 64)
        #expect(try a.action("m", "start").status == 200)
        let sourcePid = try #require(try a.vm("m").pid)

        let out = try vireo(a, ["vm", "migrate", "m", "--to", "127.0.0.1:\(bPort)", "--token-file", tokenFile])
        #expect(out.status == 0, "\(out.stderr)")
        #expect(out.stdout.contains("migrated m to 127.0.0.1:\(bPort): the guest paused"), "\(out.stdout)")
        // The destination owns it, running; the source has neither the VM nor its VMM.
        let moved = try b.vm("m")
        #expect(moved.state == .running && moved.pid != nil)
        #expect(try a.req("GET", "/v1/vms/m").status == 404)
        #expect(!processAlive(sourcePid))
        let events = try vireo(a, ["events", "--vm", "m"]).stdout
        #expect(events.contains("migration-started") && events.contains("migrated"), "\(events)")
        let info = try a.client.call("GET", "/v1/vms/m/migration", as: MigrationInfo.self)
        #expect(info.phase == "completed" && info.downtimeMs != nil && info.bytesSent > 0)
        #expect(try vireo(b, ["events", "--vm", "m"]).stdout.contains("migrated-in"))
        // The moved VM is controlled like any other there, and moves back.
        #expect(try b.action("m", "pause").status == 200)
        #expect(try b.action("m", "resume").status == 200)
        let back = try vireo(b, ["vm", "migrate", "m", "--to", "127.0.0.1:\(aPort)", "--token-file", tokenFile, "--max-downtime", "200ms"])
        #expect(back.status == 0, "\(back.stderr)")
        #expect(try a.vm("m").state == .running)
        #expect(try b.req("GET", "/v1/vms/m").status == 404)
    }

    @Test func refusalsLeaveTheVMRunningWhereItWasAndNothingAtTheDestination() throws {
        let (a, b, tokenFile) = try pair()
        defer { a.shutdown(); b.shutdown() }
        let bPort = try #require(b.tcpPort)
        _ = try a.createProbe("r", workload: "dirty", memory: 32)
        #expect(try a.action("r", "start").status == 200)
        let pid = try #require(try a.vm("r").pid)

        // The destination's token is wrong: its API refuses, nothing is made there.
        let badToken = "/tmp/vireo-mig-bad-\(getpid())"
        _ = system("echo not-the-token-at-all-xxxx > \(badToken)")
        let wrong = try vireo(a, ["vm", "migrate", "r", "--to", "127.0.0.1:\(bPort)", "--token-file", badToken])
        #expect(wrong.status == 1 && wrong.stderr.contains("did not take VM 'r' in") && wrong.stderr.contains("bearer token"), "\(wrong.stderr)")
        // Nobody listens there.
        let nobody = try vireo(a, ["vm", "migrate", "r", "--to", "127.0.0.1:1", "--token-file", tokenFile])
        #expect(nobody.status == 1 && nobody.stderr.contains("runs on here"), "\(nobody.stderr)")
        // The name is taken at the destination.
        _ = try b.createProbe("r", workload: "dirty", memory: 32)
        let taken = try vireo(a, ["vm", "migrate", "r", "--to", "127.0.0.1:\(bPort)", "--token-file", tokenFile])
        #expect(taken.status == 1 && taken.stderr.contains("already exists on the destination"), "\(taken.stderr)")
        #expect(try b.vm("r").state == .stopped, "the destination's own VM r was touched")
        #expect(try b.req("DELETE", "/v1/vms/r").status == 204)
        // Stopped VMs do not migrate.
        _ = try a.createProbe("s", workload: "dirty", memory: 32)
        let stopped = try vireo(a, ["vm", "migrate", "s", "--to", "127.0.0.1:\(bPort)", "--token-file", tokenFile])
        #expect(stopped.status == 1 && stopped.stderr.contains("only a running or paused VM migrates"), "\(stopped.stderr)")

        let vm = try a.vm("r")
        #expect(vm.state == .running && vm.pid == pid, "the source VM did not run on as it was")
        #expect(try b.client.call("GET", "/v1/vms", as: VMList.self).vms.isEmpty, "the destination kept something")
    }

    @Test func aMigrationGivenUpLeavesTheDestinationClean() throws {
        let (a, b, tokenFile) = try pair()
        defer { a.shutdown(); b.shutdown() }
        let bPort = try #require(b.tcpPort)
        // 1 MiB/s for 64 MiB of RAM that the guest keeps rewriting: it cannot converge; cancel it.
        _ = try a.createProbe("c", workload: "dirty", memory: 64)
        #expect(try a.action("c", "start").status == 200)
        let pid = try #require(try a.vm("c").pid)
        let started = try vireo(a, ["vm", "migrate", "c", "--to", "127.0.0.1:\(bPort)", "--token-file", tokenFile, "--max-bandwidth", "1", "--detach"])
        #expect(started.status == 0, "\(started.stderr)")
        usleep(500_000)
        #expect(try b.vm("c").state == .starting, "the destination does not show the incoming VM")
        let cancelled = try vireo(a, ["vm", "migrate", "c", "--cancel"])
        #expect(cancelled.status == 0, "\(cancelled.stderr)")
        var info = try a.client.call("GET", "/v1/vms/c/migration", as: MigrationInfo.self)
        for _ in 0..<100 where !info.isFinished {
            usleep(100_000)
            info = try a.client.call("GET", "/v1/vms/c/migration", as: MigrationInfo.self)
        }
        #expect(info.phase == "cancelled", "\(info)")
        #expect(try a.vm("c").state == .running && a.vm("c").pid == pid)
        // The destination removes what it had made for the VM.
        var gone = false
        for _ in 0..<50 where !gone {
            gone = try b.req("GET", "/v1/vms/c").status == 404
            if !gone { usleep(100_000) }
        }
        #expect(gone, "the destination kept the abandoned incoming VM")
        #expect(try vireo(b, ["events", "--vm", "c"]).stdout.contains("migration-in-failed"))
    }
}
