import Foundation
import Host
import Testing
import VireoTestSupport
import VireoAPI
#if canImport(Glibc)
import Glibc
#endif

/// GET /v1/vms/{name}/stats, the new /metrics families and `vireo vm stats`, against a real
/// daemon running a real probe-guest VMM (the dirty workload writes every page above 2 MiB
/// over and over, so its active memory is known).
@Suite(.serialized, .timeLimit(.minutes(2)), .enabled(if: VireoBinary.path != nil && VireoBinary.hasKVM))
struct HostStatsTests {
    /// 64 MiB guest: the workload writes 62 MiB; the probe's own page tables and stack add a few pages.
    static let written: UInt64 = (64 - 2) << 20
    static let slack: UInt64 = 8 * 4096

    @Test func runningProbeVMHasStatsAndMetricsStoppedAndUnknownAreErrors() throws {
        let d = try TestDaemon(extra: ["--active-memory-window", "1", "--active-memory-sample", "1"])   // exact count
        defer { d.shutdown() }
        _ = try d.createProbe("st-1", workload: "dirty", memory: 64)

        // Not running: 409 with a JSON error that says what to do; unknown: 404.
        let stopped = try d.req("GET", "/v1/vms/st-1/stats")
        #expect(stopped.status == 409)
        let err = try JSONDecoder().decode(APIErrorBody.self, from: Data(stopped.body))
        #expect(err.code == "conflict" && err.message.contains("vireo vm start st-1"))
        let unknown = try d.req("GET", "/v1/vms/nope/stats")
        #expect(unknown.status == 404)
        #expect((try? JSONDecoder().decode(APIErrorBody.self, from: Data(unknown.body))) != nil)
        #expect(try d.req("POST", "/v1/vms/st-1/stats").status == 405)

        #expect(try d.action("st-1", "start").status == 200)
        var stats: VMStats?
        for _ in 0..<80 {
            let r = try d.req("GET", "/v1/vms/st-1/stats")
            #expect(r.status == 200, "\(r.text)")
            stats = try JSONDecoder().decode(VMStats.self, from: Data(r.body))
            if stats?.memory.activeBytes != nil { break }
            usleep(100_000)
        }
        let s = try #require(stats)
        let m = s.memory
        print("stats of a probe VM: active \(m.activeBytes ?? 0) consumed \(m.consumedBytes ?? 0) status \(m.activeStatus)")
        #expect(s.name == "st-1" && s.state == .running)
        #expect(m.provisionedBytes == 64 << 20)
        #expect(m.activeStatus == "ok" && m.activeWindowSeconds == 1 && m.activeSampleOneIn == 1)
        let active = try #require(m.activeBytes)
        #expect(active >= Self.written && active <= Self.written + Self.slack, "active \(active)")
        // The guest touched all of its region, so the host holds at least that much for it.
        #expect((m.consumedBytes ?? 0) >= Self.written)
        #expect(m.guestReported == nil && m.balloonBytes == nil)
        #expect(s.vcpus.count == 1 && s.vcpus[0].index == 0 && s.vcpus[0].cpuSeconds > 0 && s.vcpus[0].readySeconds >= 0)
        #expect((s.vcpus[0].pioExits ?? 0) >= 1)
        #expect(s.disks.isEmpty && s.nics.isEmpty)

        let metrics = try d.req("GET", "/metrics").text
        let activeLine = try #require(metrics.split(separator: "\n").first { $0.hasPrefix(#"vireo_vm_memory_active_bytes{vm="st-1"} "#) })
        let activeMetric = UInt64(activeLine.split(separator: " ").last ?? "") ?? 0
        #expect(activeMetric >= Self.written && activeMetric <= Self.written + Self.slack)
        #expect(metrics.contains(#"vireo_vm_memory_active_window_seconds{vm="st-1"} 1"#))
        #expect(metrics.contains("lower bound"))   // the HELP says what the estimate is
        for family in ["vireo_vm_disk_read_bytes_total", "vireo_vm_disk_write_bytes_total", "vireo_vm_disk_requests_total",
                       "vireo_vm_disk_errors_total", "vireo_vm_net_rx_bytes_total", "vireo_vm_net_tx_bytes_total",
                       "vireo_vm_net_rx_frames_total", "vireo_vm_net_tx_frames_total", "vireo_vm_net_drops_total"] {
            #expect(metrics.contains("# TYPE \(family) counter"), "no \(family)")
        }
        #expect(metrics.contains(#"vireo_vm_vcpu_exits_total{vm="st-1",vcpu="0",kind="pio"}"#))

        // The CLI: a table by default, the API's JSON with --json.
        let table = try ChildProcessRunner.run([VireoBinary.path ?? "vireo", "vm", "stats", "st-1", "--socket", d.socket])
        #expect(table.status == 0, "\(table.stderr)")
        #expect(table.stdout.contains("provisioned") && table.stdout.contains("64.0 MiB") && table.stdout.contains("active"))
        #expect(table.stdout.contains("VCPU") && table.stdout.contains("READY S"))
        let json = try ChildProcessRunner.run([VireoBinary.path ?? "vireo", "vm", "stats", "st-1", "--json", "--socket", d.socket])
        #expect((try? JSONDecoder().decode(VMStats.self, from: Data(json.stdout.utf8)))?.name == "st-1")

        #expect(try d.action("st-1", "stop").status == 200)
        #expect(try d.req("GET", "/v1/vms/st-1/stats").status == 409)
        let cliStopped = try ChildProcessRunner.run([VireoBinary.path ?? "vireo", "vm", "stats", "st-1", "--socket", d.socket])
        #expect(cliStopped.status == 1 && cliStopped.stderr.contains("stats exist only while its VMM runs"))
    }

    /// `vireo host --active-memory-sample 8`: the VMMs track a random 1/8 of the pages; the
    /// estimate of the 62 MiB the probe rewrites is within 10% (its standard error is ~1%).
    @Test func sampledActiveMemoryThroughTheDaemon() throws {
        let d = try TestDaemon(extra: ["--active-memory-window", "1", "--active-memory-sample", "8"])
        defer { d.shutdown() }
        _ = try d.createProbe("st-2", workload: "dirty", memory: 64)
        #expect(try d.action("st-2", "start").status == 200)
        var stats: VMStats?
        for _ in 0..<80 {
            stats = try? d.client.call("GET", "/v1/vms/st-2/stats", as: VMStats.self)
            if stats?.memory.activeBytes != nil { break }
            usleep(100_000)
        }
        let m = try #require(stats?.memory)
        print("sampled 1/8 through the daemon: active \(m.activeBytes ?? 0) status \(m.activeStatus)")
        #expect(m.activeSampleOneIn == 8 && m.activeStatus == "ok")
        let active = Double(m.activeBytes ?? 0)
        #expect(abs(active - Double(Self.written)) <= Double(Self.written) / 10)
        let table = try ChildProcessRunner.run([VireoBinary.path ?? "vireo", "vm", "stats", "st-2", "--socket", d.socket])
        #expect(table.stdout.contains("sampled 1/8 of pages"))
        let bad = try ChildProcessRunner.run([VireoBinary.path ?? "vireo", "host", "--socket", d.dir + "/x.sock", "--data-dir", d.dir + "/x", "--active-memory-sample", "3"])
        #expect(bad.status != 0 && bad.stderr.contains("not a power of two"))
    }

    /// The daemon decodes the VMM's status line as JSON: an older VMM's line (no memory, disks,
    /// nics) still gives its exits; anything that is not a status object is refused.
    @Test func olderAndMalformedStatusLines() {
        let old = #"{"ok":true,"state":"running","pid":7,"vcpus":[{"index":0,"tid":9,"pio_exits":3,"mmio_exits":4,"other_exits":0}]}"#
        let s = VMMStatus.parse(old)
        #expect(s?.vcpus?.first?.pioExits == 3 && s?.vcpus?.first?.mmioExits == 4)
        #expect(s?.memory == nil && s?.diskStats == [] && s?.nicStats == [] && s?.guestReport == nil)
        let new = #"{"ok":true,"state":"paused","pid":7,"vcpus":[],"memory":{"provisioned_bytes":1024,"active_window_seconds":10,"active_status":"sampling","guest":{"free_bytes":5}},"disks":[{"name":"d\"0","path":"/x","read_requests":1,"write_requests":2,"flush_requests":3,"other_requests":4,"read_bytes":5,"write_bytes":6,"errors":7}],"nics":[{"name":"tap0","rx_frames":1,"rx_bytes":2,"rx_drops":3,"tx_frames":4,"tx_bytes":5,"tx_drops":6}]}"#
        let n = VMMStatus.parse(new)
        #expect(n?.memory?.activeStatus == "sampling" && n?.memory?.activeBytes == nil)
        #expect(n?.diskStats == [DiskStat(name: "d\"0", path: "/x", readRequests: 1, writeRequests: 2, flushRequests: 3, otherRequests: 4, readBytes: 5, writeBytes: 6, errors: 7)])
        #expect(n?.nicStats.first?.txDrops == 6 && n?.guestReport?.freeBytes == 5)
        for bad in ["", "garbage", #"{"ok":false,"error":"unknown command"}"#, #"{"ok":true,"vcpus":[{"pio_exits":1}]}"#, #"{"ok":true,"disks":[{"name":1}]}"#] {
            #expect(VMMStatus.parse(bad) == nil, "accepted \(bad)")
        }
    }
}
