import Foundation
import Testing
import VireoTestSupport
import VireoAPI
#if canImport(Glibc)
import Glibc
#endif

/// Snapshots through the daemon and the CLI, with probe-guest VMs on this host's KVM: create
/// while running (the VM goes on), list, revert (a new VMM restored from it), delete; suspend
/// ends the VMM and start resumes it; a VM whose devices cannot be saved yet is refused and
/// nothing is left behind.
@Suite(.serialized, .timeLimit(.minutes(2)), .enabled(if: VireoBinary.path != nil && VireoBinary.hasKVM))
struct HostSnapshotTests {
    func vireo(_ d: TestDaemon, _ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        try ChildProcessRunner.run([VireoBinary.path ?? "vireo", "--socket", d.socket] + args)
    }

    @Test func createListRevertDeleteThroughTheCLI() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        _ = try d.createProbe("s", workload: "dirty", memory: 32)
        #expect(try d.action("s", "start").status == 200)
        let pid = try #require(try d.vm("s").pid)
        let created = try vireo(d, ["vm", "snapshot", "create", "s", "first"])
        #expect(created.status == 0 && created.stdout.contains("snapshot first of s"), "\(created.stderr)")
        #expect(try d.vm("s").state == .running && d.vm("s").pid == pid, "the VM did not go on after the snapshot")
        let dup = try vireo(d, ["vm", "snapshot", "create", "s", "first"])
        #expect(dup.status == 1 && dup.stderr.contains("already has a snapshot"))
        let list = try vireo(d, ["vm", "snapshot", "list", "s"])
        #expect(list.stdout.contains("first") && list.stdout.contains("running"), "\(list.stdout)")

        let reverted = try vireo(d, ["vm", "snapshot", "revert", "s", "first"])
        #expect(reverted.status == 0 && reverted.stdout.contains("s: running"), "\(reverted.stderr)")
        let after = try d.vm("s")
        #expect(after.state == .running && after.pid != nil && after.pid != pid)
        // The new VMM is a restore of the snapshot, and it is controlled like any other.
        #expect(try d.action("s", "pause").status == 200)
        #expect(try d.action("s", "resume").status == 200)
        #expect(try vireo(d, ["vm", "snapshot", "delete", "s", "first"]).status == 0)
        #expect(try d.client.call("GET", "/v1/vms/s/snapshots", as: SnapshotList.self).snapshots.isEmpty)
        #expect(try d.req("DELETE", "/v1/vms/s/snapshots/first").status == 404)
        let events = try d.client.call("GET", "/v1/events?vm=s", as: EventList.self).events.map(\.type)
        #expect(events.contains("snapshot-created") && events.contains("snapshot-reverted") && events.contains("snapshot-deleted"))
    }

    @Test func aPausedSnapshotRevertsPausedAndAStoppedVMCanRevert() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        _ = try d.createProbe("p", workload: "dirty", memory: 32)
        #expect(try d.action("p", "start").status == 200)
        #expect(try d.action("p", "pause").status == 200)
        #expect(try d.req("POST", "/v1/vms/p/snapshots", json: #"{"name":"held"}"#).status == 201)
        #expect(try d.vm("p").state == .paused)
        #expect(try d.action("p", "stop").status == 200)
        let r = try d.req("POST", "/v1/vms/p/snapshots/held/revert")
        #expect(r.status == 200, "\(r.text)")
        #expect(try d.vm("p").state == .paused)
    }

    @Test func suspendEndsTheVMMAndStartResumesIt() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        _ = try d.createProbe("z", workload: "dirty", memory: 32)
        #expect(try d.action("z", "start").status == 200)
        let pid = try #require(try d.vm("z").pid)
        let s = try vireo(d, ["vm", "suspend", "z"])
        #expect(s.status == 0 && s.stdout.contains("z: stopped") && s.stdout.contains("suspended"), "\(s.stdout) \(s.stderr)")
        #expect(!processAlive(pid))
        #expect(FileManager.default.fileExists(atPath: d.dataDir + "/vms/z/suspended/state.vsnap"))
        // Across a daemon restart too.
        d.kill9()
        try d.start()
        let started = try d.action("z", "start")
        #expect(started.status == 200, "\(started.text)")
        #expect(try d.vm("z").state == .running)
        #expect(!FileManager.default.fileExists(atPath: d.dataDir + "/vms/z/suspended"))
        let events = try d.client.call("GET", "/v1/events?vm=z", as: EventList.self).events.map(\.type)
        #expect(events.contains("suspended") && events.contains("resumed-from-suspend"))
    }

    @Test func devicesWhoseStateIsNotSavedYetAreRefused() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        #expect(try d.req("POST", "/v1/images", json: #"{"name":"disk","size_bytes":1048576}"#).status == 201)
        _ = try d.createProbe("withdisk", workload: "dirty", memory: 32, extra: #","disks":[{"image":"disk"}]"#)
        #expect(try d.action("withdisk", "start").status == 200)
        let r = try d.req("POST", "/v1/vms/withdisk/snapshots", json: #"{"name":"x"}"#)
        #expect(r.status == 409 && r.text.contains("virtio devices"), "\(r.text)")
        #expect(try d.client.call("GET", "/v1/vms/withdisk/snapshots", as: SnapshotList.self).snapshots.isEmpty)
        #expect(!FileManager.default.fileExists(atPath: d.dataDir + "/vms/withdisk/snapshots/x"))
        #expect(try d.vm("withdisk").state == .running)
        #expect(try d.req("POST", "/v1/vms/withdisk/snapshots", json: #"{"name":"Bad Name"}"#).status == 400)
        let stopped = try d.createProbe("idle")
        _ = stopped
        #expect(try d.req("POST", "/v1/vms/idle/snapshots", json: #"{"name":"x"}"#).status == 409)
        #expect(try d.req("POST", "/v1/vms/idle/suspend").status == 409)
    }
}
