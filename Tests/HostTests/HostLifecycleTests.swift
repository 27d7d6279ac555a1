import Foundation
import Testing
import VireoAPI
import VireoSupport
import VireoTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// The daemon driving real probe-guest VMs on this host's KVM: every VM is a real `vireo run`
/// process with a real KVM VM; nothing is mocked.
@Suite(.serialized, .timeLimit(.minutes(2)), .enabled(if: VireoBinary.path != nil && VireoBinary.hasKVM))
struct HostLifecycleTests {
    @Test func createListStartConsolePauseResumeStopDelete() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        let created = try d.createProbe("web-1")
        #expect(created.state == .stopped)
        #expect(created.pid == nil)

        let list = try d.client.call("GET", "/v1/vms", as: VMList.self)
        #expect(list.vms.map(\.name) == ["web-1"])

        let started = try d.action("web-1", "start")
        #expect(started.status == 200, "\(started.text)")
        let vm = try d.vm("web-1")
        #expect(vm.state == .running)
        let pid = try #require(vm.pid)
        #expect(processAlive(pid))
        // The VMM runs in its own session, so the daemon's death cannot take it down.
        #expect(getsid(pid_t(pid)) == pid_t(pid))

        // Console: the probe guest's pass markers reach console.log through the VMM.
        var console = ""
        for _ in 0..<50 {
            console = try d.req("GET", "/v1/vms/web-1/console").text
            if console.contains("probe: dirty pass 1 done") { break }
            usleep(100_000)
        }
        #expect(console.contains("probe: dirty pass 1 done"))
        let tail = try d.req("GET", "/v1/vms/web-1/console?offset=\(console.utf8.count)")
        #expect(tail.headers["x-vireo-next-offset"].flatMap(Int.init) ?? -1 >= console.utf8.count)

        // Pause parks the vCPU: its CPU time stops advancing. Resume lets it run again.
        #expect(try d.action("web-1", "pause").status == 200)
        #expect(try d.vm("web-1").state == .paused)
        let cpuKey = #"vireo_vm_vcpu_cpu_seconds_total{vm="web-1",vcpu="0"}"#
        let p0 = try #require(try d.metric(cpuKey))
        usleep(500_000)
        let p1 = try #require(try d.metric(cpuKey))
        #expect(p1 - p0 < 0.05, "a paused vCPU used \(p1 - p0) s of CPU in 0.5 s")
        #expect(try d.action("web-1", "pause").status == 409)   // already paused
        #expect(try d.action("web-1", "resume").status == 200)
        var p2 = p1
        for _ in 0..<30 where p2 - p1 <= 0.05 {   // a loaded machine may give it little CPU at first
            usleep(100_000)
            p2 = try #require(try d.metric(cpuKey))
        }
        #expect(p2 - p1 > 0.05, "a resumed vCPU used only \(p2 - p1) s of CPU in 3 s")

        // Metrics in the seeds' vocabulary, per VM and per host.
        let metrics = try d.req("GET", "/metrics").text
        for name in ["vireo_vm_memory_provisioned_bytes{vm=\"web-1\"} 67108864", "vireo_vm_memory_consumed_bytes{vm=\"web-1\"}",
                     "vireo_vm_vcpu_ready_seconds_total{vm=\"web-1\",vcpu=\"0\"}", "vireo_host_pcpus", "vireo_host_vcpu_overcommit_ratio",
                     "vireo_host_memory_provisioned_bytes 67108864", "vireo_host_memory_physical_bytes"] {
            #expect(metrics.contains(name), "metrics lack \(name)")
        }
        let host = try d.client.call("GET", "/v1/host", as: HostInfo.self)
        #expect(host.vmsRunning == 1 && host.vcpusProvisioned == 1 && host.memoryProvisionedBytes == 64 << 20)

        // Conflicts: start a running VM, delete a running VM.
        let again = try d.action("web-1", "start")
        #expect(again.status == 409)
        #expect(try d.req("DELETE", "/v1/vms/web-1").status == 409)

        // The probe guest has no ACPI, so stop does not wait for a guest shutdown: its VMM ends it.
        let t0 = (Double(monotonicNanos()) / 1e9)
        let stopped = try d.action("web-1", "stop")
        #expect(stopped.status == 200)
        #expect((Double(monotonicNanos()) / 1e9) - t0 < 10, "stop waited \((Double(monotonicNanos()) / 1e9) - t0) s for a guest that has no ACPI")
        let after = try d.vm("web-1")
        #expect(after.state == .stopped)
        #expect(after.reason?.hasPrefix("stopped by request") == true, "\(after.reason ?? "nil")")
        #expect(after.pid == nil)
        #expect(!processAlive(pid))
        #expect(try d.action("web-1", "stop").status == 409)

        #expect(try d.req("DELETE", "/v1/vms/web-1").status == 204)
        #expect(try d.req("GET", "/v1/vms/web-1").status == 404)
        #expect(access(d.dataDir + "/vms/web-1", F_OK) != 0)
    }

    @Test func killingTheDaemonLeavesVMsRunningAndARestartReadoptsThem() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        _ = try d.createProbe("survivor")
        _ = try d.createProbe("paused-one")
        #expect(try d.action("survivor", "start").status == 200)
        #expect(try d.action("paused-one", "start").status == 200)
        #expect(try d.action("paused-one", "pause").status == 200)
        let pid = try #require(try d.vm("survivor").pid)
        let pausedPid = try #require(try d.vm("paused-one").pid)

        d.kill9()
        usleep(300_000)
        #expect(processAlive(pid), "killing the daemon stopped a VM")
        #expect(processAlive(pausedPid))

        try d.start()
        let vm = try d.vm("survivor")
        #expect(vm.state == .running)
        #expect(vm.pid == pid)
        #expect(try d.vm("paused-one").state == .paused)
        // The re-adopted VMM is still controllable and its end is still noticed.
        #expect(try d.action("paused-one", "resume").status == 200)
        #expect(try d.action("survivor", "stop").status == 200)
        #expect(!processAlive(pid))
        #expect(try d.vm("survivor").state == .stopped)

        // A re-adopted VMM that dies on its own is noticed through /proc (it is not our child).
        kill(pid_t(pausedPid), SIGKILL)
        let failed = try d.waitFor("paused-one") { $0.state == .failed }
        #expect(failed.state == .failed)
        #expect(failed.reason != nil)
        let events = try d.client.call("GET", "/v1/events?vm=survivor", as: EventList.self)
        #expect(events.events.contains { $0.type == "adopted" })
    }

    @Test func aVMMThatDiesIsMarkedFailedOrRestartedPerPolicy() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        _ = try d.createProbe("fragile")
        _ = try d.createProbe("phoenix", extra: #","restart_policy":"on-failure""#)
        #expect(try d.action("fragile", "start").status == 200)
        #expect(try d.action("phoenix", "start").status == 200)
        let fragilePid = try #require(try d.vm("fragile").pid)
        let phoenixPid = try #require(try d.vm("phoenix").pid)

        kill(pid_t(fragilePid), SIGKILL)
        let fragile = try d.waitFor("fragile") { $0.state == .failed }
        #expect(fragile.state == .failed)
        #expect(fragile.reason?.contains("signal 9") == true, "\(fragile.reason ?? "")")
        #expect(fragile.exitStatus == 137)

        kill(pid_t(phoenixPid), SIGKILL)
        let phoenix = try d.waitFor("phoenix") { $0.restartCount == 1 && $0.state == .running }
        #expect(phoenix.state == .running)
        #expect(phoenix.restartCount == 1)
        #expect(phoenix.pid != nil && phoenix.pid != phoenixPid)

        // A workload that finishes is a clean exit: stopped, status 0, no restart under on-failure.
        _ = try d.createProbe("batch", workload: "compute:1000", extra: #","restart_policy":"on-failure""#)
        _ = try d.action("batch", "start")
        let batch = try d.waitFor("batch") { $0.state == .stopped }
        #expect(batch.state == .stopped)
        #expect(batch.exitStatus == 0)
        #expect(batch.restartCount == 0)
    }

    @Test func racingClientsOnOneVMAreSerialised() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        _ = try d.createProbe("contended")
        let statuses = Mutex<[Int]>([])
        DispatchQueue.concurrentPerform(iterations: 4) { _ in
            let s = (try? d.action("contended", "start").status) ?? -1
            statuses.withLock { $0.append(s) }
        }
        let s = statuses.withLock { $0 }.sorted()
        #expect(s == [200, 409, 409, 409], "\(s)")
        let vm = try d.vm("contended")
        #expect(vm.state == .running)
        // Exactly one VMM process runs for it.
        let vmms = try String(contentsOfFile: "/proc/\(vm.pid ?? 0)/cmdline", encoding: .utf8)
        #expect(vmms.contains("contended"))
    }
}

import Synchronization
