import Foundation
import Testing
import VireoAPI
import VireoTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// `vireo vm update` (the command `vireo vm balloon`'s hint names) and the true cause when a probe
/// VM has no console to attach to.
@Suite(.serialized, .timeLimit(.minutes(2)), .enabled(if: VireoBinary.path != nil && VireoBinary.hasKVM))
struct HostUpdateConsoleTests {
    func vireo(_ d: TestDaemon, _ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        try ChildProcessRunner.run([VireoBinary.path ?? "vireo", "--socket", d.socket] + args)
    }

    /// Before: `vireo vm update` did not exist (exit 64, "Unexpected argument 'update'").
    @Test func updateChangesAStoppedVMAndRefusesWhatARunningOneKeeps() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        _ = try d.createProbe("u")
        let updated = try vireo(d, ["vm", "update", "u", "--memory", "128M", "--cpus", "2"])
        #expect(updated.status == 0 && updated.stdout.contains("updated u: 2 vCPUs, 128 MiB"), "\(updated)")
        let vm = try d.vm("u")
        #expect(vm.vcpus == 2 && vm.memoryMiB == 128)
        let nothing = try vireo(d, ["vm", "update", "u"])
        #expect(nothing.status == 1 && nothing.stderr.contains("nothing to change"), "\(nothing)")

        #expect(try d.action("u", "start").status == 200)
        let refused = try vireo(d, ["vm", "update", "u", "--memory", "256M"])
        #expect(refused.status == 1 && refused.stderr.contains("until it restarts") && refused.stderr.contains("`vireo vm stop u`")
                && refused.stderr.contains("[conflict]"), "\(refused)")
        #expect(try d.vm("u").memoryMiB == 128)
        // The restart policy is the daemon's own: it changes while the VM runs.
        let policy = try vireo(d, ["vm", "update", "u", "--restart", "on-failure"])
        #expect(policy.status == 0 && policy.stdout.contains("restart on-failure"), "\(policy)")
        #expect(try d.vm("u").restartPolicy == .onFailure)
        let events = try d.client.call("GET", "/v1/events?vm=u", as: EventList.self).events.filter { $0.type == "updated" }
        #expect(events.map(\.message) == ["vcpus 1 -> 2, memory 64 -> 128 MiB", "restart policy never -> on-failure"], "\(events)")

        // A probe VM without a console: attach says so, not "a VMM started by an older vireo".
        let cmd = "\(VireoBinary.path ?? "vireo") --socket \(d.socket) vm console u --attach --drain 0.2 < /dev/null"
        let attach = try ChildProcessRunner.run(["/bin/sh", "-c", cmd])
        #expect(attach.status == 1 && attach.stderr.contains("has no serial console") && attach.stderr.contains("vireo vm logs u")
                && !attach.stderr.contains("older vireo"), "\(attach)")
    }
}
