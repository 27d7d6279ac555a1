import Foundation
import Testing
import VireoAPI
import VireoSupport
import VireoTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Page sharing by policy and the host memory states (docs/memory.md), on real KSM and a real
/// memory cgroup around a real daemon and its probe VMs.
@Suite(.serialized, .timeLimit(.minutes(3)), .enabled(if: VireoBinary.path != nil && VireoBinary.hasKVM))
struct HostMemoryLadderTests {
    static func read(_ path: String) -> String {
        ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
    }

    static func mergingPages(_ pid: Int) -> Int {
        if let v = Int(read("/proc/\(pid)/ksm_merging_pages")) { return v }
        for line in read("/proc/\(pid)/ksm_stat").split(separator: "\n") where line.hasPrefix("ksm_merging_pages ") {
            return Int(line.split(separator: " ").last ?? "") ?? 0
        }
        return 0
    }

    /// The process has MADV_MERGEABLE memory (ksm_stat's `ksm_mergeable`, Linux 6.x).
    static func mergeable(_ pid: Int) -> Bool {
        read("/proc/\(pid)/ksm_stat").split(separator: "\n").contains { $0.hasPrefix("ksm_mergeable: yes") }
    }

    /// Only shareable VMs' RAM is mergeable; the daemon turns KSM on while one runs and off after;
    /// the pages probe guests have in common (their page tables, GDT, TSS, code are the same) are
    /// merged, and stats and /metrics show it per VM.
    @Test(.enabled(if: FileManager.default.isWritableFile(atPath: "/sys/kernel/mm/ksm/run")))
    func shareableVMsAreMergedAndOthersAreNot() throws {
        let runBefore = Self.read("/sys/kernel/mm/ksm/run")
        defer { _ = HostResourceTests.writeFile("/sys/kernel/mm/ksm/run", runBefore) }
        _ = HostResourceTests.writeFile("/sys/kernel/mm/ksm/run", "0")
        let d = try TestDaemon()
        defer { d.shutdown() }
        for (name, shareable) in [("s1", true), ("s2", true), ("n1", false)] {
            _ = try d.createProbe(name, workload: "echo", memory: 32, extra: shareable ? #","shareable":true"#: "")
        }
        #expect(try d.action("n1", "start").status == 200)
        sleep(2)
        #expect(Self.read("/sys/kernel/mm/ksm/run") == "0", "KSM turned on though no VM is shareable")
        #expect(try d.action("s1", "start").status == 200)
        #expect(try d.action("s2", "start").status == 200)
        let pids = try ["s1", "s2", "n1"].map { try #require(try d.vm($0).pid) }
        #expect(Self.mergeable(pids[0]) && Self.mergeable(pids[1]) && !Self.mergeable(pids[2]), "MADV_MERGEABLE only on shareable VMs' RAM")
        var merged = (0, 0)
        for _ in 0..<100 {
            merged = (Self.mergingPages(pids[0]), Self.mergingPages(pids[1]))
            if merged.0 > 0 && merged.1 > 0 { break }
            usleep(200_000)
        }
        #expect(Self.read("/sys/kernel/mm/ksm/run") == "1")
        #expect(merged.0 > 0 && merged.1 > 0, "KSM merged \(merged) pages of the shareable VMs")
        #expect(Self.mergingPages(pids[2]) == 0)
        let stats = try d.client.call("GET", "/v1/vms/s1/stats", as: VMStats.self)
        #expect((stats.memory.sharedBytes ?? 0) >= UInt64(merged.0) * 4096, "\(String(describing: stats.memory.sharedBytes))")
        #expect(try d.client.call("GET", "/v1/vms/n1/stats", as: VMStats.self).memory.sharedBytes == 0)
        #expect((try d.metric(#"vireo_vm_memory_shared_bytes{vm="s2"}"#) ?? 0) > 0)
        #expect(try d.metric("vireo_host_ksm_run") == 1)
        let info = try d.client.call("GET", "/v1/host", as: HostInfo.self)
        #expect((info.memoryLadder?.ksmSavedBytes ?? 0) > 0)
        print("KSM merged \(merged.0) + \(merged.1) pages of two 32 MiB echo probe VMs; host saves \(info.memoryLadder?.ksmSavedBytes ?? 0) bytes")
        let events = try d.req("GET", "/v1/events?subject_kind=host").text
        #expect(events.contains("ksm-on"), "\(events)")
        // Both shareable VMs stop: KSM goes off again (the daemon turned it on).
        #expect(try d.req("POST", "/v1/vms/s1/stop?force=true").status == 200)
        #expect(try d.req("POST", "/v1/vms/s2/stop?force=true").status == 200)
        var off = false
        for _ in 0..<30 where !off { off = Self.read("/sys/kernel/mm/ksm/run") == "0"; if !off { usleep(200_000) } }
        let hostEvents = try d.req("GET", "/v1/events?subject_kind=host").text
        #expect(off && hostEvents.contains("ksm-off"), "\(hostEvents)")
    }

    /// The states follow real pressure: the daemon runs in a memory cgroup whose limit the test
    /// moves so the free memory lands in each state's band; each change is an event and a metric,
    /// `vireo host info` names it, probe VMs (no balloon) are reported, at hard the VMMs are
    /// asked to `reclaim` and compress their guests' cold pages (the guests fill their RAM with
    /// a compressible pattern and keep 4 MiB of it hot), and at low a start is refused with the
    /// reason.
    @Test(.enabled(if: FileManager.default.fileExists(atPath: "/sys/fs/cgroup/memory/memory.limit_in_bytes")))
    func statesFollowTheDaemonsMemoryCgroup() throws {
        let own = try #require(Self.read("/proc/self/cgroup").split(separator: "\n").first { $0.split(separator: ":").dropFirst().first?.split(separator: ",").contains("memory") == true })
        let path = String(own.split(separator: ":", maxSplits: 2)[2])
        let cg = "/sys/fs/cgroup/memory" + (path == "/" ? "" : path) + "/vireo-ladder-\(getpid())"
        #expect(mkdir(cg, 0o755) == 0 || errno == EEXIST)
        defer { rmdir(cg) }
        let minFree = 100 << 20
        // One-second windows over every page: the VMMs know which pages are cold by the time
        // the test reaches hard (their reclaim takes pages not written for a window or more).
        let d = try TestDaemon(extra: ["--memory-min-free", "100M", "--active-memory-window", "1", "--active-memory-sample", "1"])
        defer { d.shutdown() }
        let daemonPID = try #require(d.child?.pid)
        #expect(HostResourceTests.writeFile(cg + "/cgroup.procs", String(daemonPID)))
        _ = try d.createProbe("a", workload: "pattern:compressible:4", memory: 96)
        _ = try d.createProbe("b", workload: "pattern:compressible:4", memory: 96)
        _ = try d.createProbe("late", workload: "echo", memory: 16)
        #expect(try d.action("a", "start").status == 200)
        #expect(try d.action("b", "start").status == 200)
        // The guests write all their pages once: wait until the group's usage settles.
        var usage = 0, last = -1, steady = 0
        for _ in 0..<100 {
            usage = Int(Self.read(cg + "/memory.usage_in_bytes")) ?? 0
            steady = usage > 120 << 20 && abs(usage - last) < 1 << 20 ? steady + 1 : 0
            if steady >= 5 { break }
            last = usage
            usleep(200_000)
        }
        print("daemon cgroup usage with two 96 MiB pattern VMs: \(usage >> 20) MiB")
        #expect(usage > 120 << 20, "the VMs' memory is not charged to the daemon's cgroup: \(usage)")

        func landIn(_ state: HostMemoryState, freeFraction: Double) throws -> HostInfo {
            let used = (Int(Self.read(cg + "/memory.usage_in_bytes")) ?? 0)
            let limit = used + Int(Double(minFree) * freeFraction)
            #expect(HostResourceTests.writeFile(cg + "/memory.limit_in_bytes", String(limit)), "limit \(limit)")
            var info = try d.client.call("GET", "/v1/host", as: HostInfo.self)
            let ours = "/vireo-ladder-\(getpid())"
            for _ in 0..<40 where info.memoryState != state || info.memoryLadder?.source.hasSuffix(ours) != true {
                usleep(250_000)
                info = try d.client.call("GET", "/v1/host", as: HostInfo.self)
            }
            #expect(info.memoryState == state, "free \(info.memoryLadder?.freeBytes ?? 0) of \(info.memoryLadder?.totalBytes ?? 0) (\(info.memoryLadder?.source ?? "")): \(String(describing: info.memoryState)), wanted \(state)")
            return info
        }
        let high = try landIn(.high, freeFraction: 6)
        #expect(high.memoryLadder?.source.hasSuffix("/vireo-ladder-\(getpid())") == true && high.memoryLadder?.minFreeBytes == UInt64(minFree))
        _ = try landIn(.clear, freeFraction: 2)
        let soft = try landIn(.soft, freeFraction: 0.8)
        #expect(soft.memoryLadder?.vmsWithoutBalloon.sorted() == ["a", "b"], "\(String(describing: soft.memoryLadder?.vmsWithoutBalloon))")
        _ = try landIn(.hard, freeFraction: 0.45)
        // At hard the daemon asks the VMMs to compress cold pages; what they release brings
        // the host back towards clear, so the state moves on by itself after it.
        var compressed: [Double] = [0, 0], vmEvents = ""
        for _ in 0..<40 {
            compressed = try ["a", "b"].map { try d.metric("vireo_vm_memory_compressed_bytes{vm=\"\($0)\"}") ?? 0 }
            vmEvents = try d.req("GET", "/v1/events?subject=a").text + d.req("GET", "/v1/events?subject=b").text
            if compressed.contains(where: { $0 > 0 }) && vmEvents.contains("asked the VMM to compress or swap") { break }
            usleep(250_000)
        }
        #expect(compressed.contains(where: { $0 > 0 }), "no VMM compressed pages at hard: \(compressed)")
        #expect(vmEvents.contains("asked the VMM to compress or swap") && !vmEvents.contains("reclaim-failed") && !vmEvents.contains("reclaim-unsupported"), "\(vmEvents)")
        let after = Int(Self.read(cg + "/memory.usage_in_bytes")) ?? 0
        print("at hard the daemon's VMMs compressed \(compressed.map { Int($0) >> 20 }) MiB; cgroup usage \(usage >> 20) -> \(after >> 20) MiB")
        #expect(after < usage, "the cgroup's usage did not go down after reclaim: \(usage) -> \(after)")
        let cli = try ChildProcessRunner.run([VireoBinary.path ?? "vireo", "--socket", d.socket, "host", "info"])
        #expect(cli.stdout.contains("memory state:") && cli.stdout.contains("hard:") && cli.stdout.contains("no balloon driver:"), "\(cli.stdout)")
        let states = try ["high", "clear", "soft", "hard", "low"].map { try d.metric("vireo_host_memory_state{state=\"\($0)\"}") ?? 0 }
        #expect(states.reduce(0, +) == 1, "one state at a time: \(states)")
        _ = try landIn(.low, freeFraction: 0.2)
        let refused = try d.action("late", "start")
        #expect(refused.status == 422 && refused.text.contains("host-memory-low") && refused.text.contains("low state"), "\(refused.text)")
        #expect(try d.vm("late").state == .stopped)
        // Room again: back to high, and the start goes through.
        _ = try landIn(.high, freeFraction: 8)
        #expect(try d.action("late", "start").status == 200)
        let events = try d.req("GET", "/v1/events?subject_kind=host").text
        for change in ["high -> clear", "clear -> soft", "soft -> hard", "hard -> low", "low -> high"] {
            #expect(events.contains(change), "no memory-state event \(change): \(events)")
        }
        #expect((try d.metric("vireo_host_memory_state_changes_total") ?? 0) >= 5)
        vmEvents = try d.req("GET", "/v1/events?subject=a").text
        #expect(vmEvents.contains("no-balloon"), "\(vmEvents)")
        // Every VM lived through it (none was OOM-killed).
        for vm in ["a", "b"] { let state = try d.vm(vm).state; #expect(state == .running, "\(vm) is \(state)") }
        #expect(HostResourceTests.writeFile(cg + "/memory.limit_in_bytes", "-1"))
    }
}
