import Foundation
import Testing
import VireoTestSupport
import VireoAPI
#if canImport(Glibc)
import Glibc
#endif

/// No VM runs twice: a VM's VMM holds the VM's lock from before it is spawned, so a start that
/// the inventory does not know about (a daemon killed between recording and spawning, a lost
/// or restored record) finds the running VMM and adopts it instead of starting a second one.
@Suite(.serialized, .timeLimit(.minutes(2)), .enabled(if: VireoBinary.path != nil && VireoBinary.hasKVM))
struct HostOneVMMTests {
    /// VMM processes whose command line names this VM's configuration file.
    static func vmms(_ d: TestDaemon, _ name: String) -> [Int32] {
        let config = d.dataDir + "/vms/\(name)/config.json"
        var out: [Int32] = []
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry), let raw = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { continue }
            let args = raw.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            if args.contains(config), args.contains("run") { out.append(pid) }
        }
        return out
    }

    static func sql(_ d: TestDaemon, _ statement: String) -> Int32 {
        system("sqlite3 \(d.dataDir)/inventory.db \"\(statement)\"")
    }

    @Test func aStartTheInventoryLostAdoptsTheRunningVMM() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        _ = try d.createProbe("once")
        #expect(try d.action("once", "start").status == 200)
        let pid = try #require(try d.vm("once").pid)
        // The daemon dies and its record of the VMM is lost (as if it died between spawning
        // and recording, or the inventory came back from a backup).
        d.kill9()
        #expect(Self.sql(d, "UPDATE vms SET state='stopped', pid=NULL, pid_start_time=NULL WHERE name='once'") == 0)
        try d.start()
        #expect(try d.vm("once").state == .stopped)
        let r = try d.action("once", "start")
        #expect(r.status == 200, "\(r.text)")
        let vm = try d.vm("once")
        #expect(vm.state == .running && vm.pid == pid, "a second VMM was started: \(vm)")
        #expect(Self.vmms(d, "once") == [Int32(pid)])
        let events = try d.client.call("GET", "/v1/events?vm=once", as: EventList.self).events
        #expect(events.contains { $0.type == "adopted" && $0.message.contains("lock") })
        // Adopted, it is controlled as before.
        #expect(try d.action("once", "stop").status == 200)
        #expect(Self.vmms(d, "once").isEmpty)
    }

    @Test func aDaemonKilledWhileStartingComesBackToTheTruth() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        _ = try d.createProbe("mid")
        _ = try d.createProbe("never")
        #expect(try d.action("mid", "start").status == 200)
        let pid = try #require(try d.vm("mid").pid)
        d.kill9()
        // Both recorded as "starting" without a pid: the state written before the spawn. One has
        // a VMM (its lock is held), the other's was never spawned.
        #expect(Self.sql(d, "UPDATE vms SET state='starting', pid=NULL, pid_start_time=NULL") == 0)
        try d.start()
        let mid = try d.vm("mid")
        #expect(mid.state == .running && mid.pid == pid)
        let never = try d.vm("never")
        #expect(never.state == .stopped && never.reason?.contains("no VMM was started") == true, "\(never)")
        #expect(try d.action("never", "start").status == 200)
        #expect(Self.vmms(d, "mid").count == 1 && Self.vmms(d, "never").count == 1)
    }
}
