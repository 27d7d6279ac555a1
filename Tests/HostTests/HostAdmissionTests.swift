import Foundation
import Testing
import VireoAPI
import VireoSupport
import VireoTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Memory admission (Sources/Host/Admission.swift, docs/host.md#memory-admission): the host admits
/// (RAM + swap) x `--memory-overcommit` of provisioned guest memory; a VM is created only if it
/// fits alone, started only if it fits beside the running VMs.
@Suite(.serialized, .timeLimit(.minutes(2)), .enabled(if: VireoBinary.path != nil))
struct HostAdmissionTests {
    /// RAM + swap in MiB, as the daemon reads it (sysinfo's totalram and totalswap are
    /// /proc/meminfo's MemTotal and SwapTotal).
    static var hostMiB: Int {
        let text = (try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8)) ?? ""
        var kib = 0
        for line in text.split(separator: "\n") where line.hasPrefix("MemTotal:") || line.hasPrefix("SwapTotal:") {
            let fields = line.split(separator: " ")
            if fields.count >= 2, let v = Int(fields[1]) { kib += v }
        }
        return kib >> 10
    }

    /// Before: the daemon checked each VM against 4x RAM + swap only, so a VM of 2x the default
    /// capacity (3x RAM + swap) was created (201) and failed only when started.
    @Test func createRefusesAVMThatCouldNeverFitWithTheNumbers() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        let capacity = Self.hostMiB * 3 / 2
        let r = try d.req("POST", "/v1/vms", json: #"{"name":"big","probe":"dirty","memory_mib":\#(capacity * 2)}"#)
        #expect(r.status == 422, "\(r.text)")
        let body = try JSONDecoder().decode(APIErrorBody.self, from: Data(r.body))
        #expect(body.code == "out-of-range")
        #expect(body.message.contains("x overcommit 1.5") && body.message.contains("--memory-overcommit"), "\(body.message)")
        #expect(try d.client.call("GET", "/v1/vms", as: VMList.self).vms.isEmpty)
        // The CLI passes the daemon's words on, with the human sizes.
        let cli = try ChildProcessRunner.run([VireoBinary.path ?? "vireo", "--socket", d.socket, "vm", "create", "m", "--probe", "dirty", "--memory", "10T"])
        #expect(cli.status == 1 && cli.stderr.contains("asks for 10 TiB") && cli.stderr.contains("[out-of-range]"), "\(cli.stderr)")
    }

    /// Before: nothing counted the memory of running VMs (there was no --memory-overcommit flag
    /// either, so this daemon did not even start).
    @Test(.enabled(if: VireoBinary.hasKVM)) func startRefusesWhatDoesNotFitBesideTheRunningVMs() throws {
        // 1% of RAM + swap: ~240 MiB on a 24 GiB host. Two VMs of 60% each fit alone, not together.
        let d = try TestDaemon(extra: ["--memory-overcommit", "0.01"])
        defer { d.shutdown() }
        let capacity = Self.hostMiB / 100
        let each = capacity * 6 / 10
        try #require(each >= 16, "this host is too small for the test")
        _ = try d.createProbe("a", memory: each)
        _ = try d.createProbe("b", memory: each)
        #expect(try d.action("a", "start").status == 200)
        let refused = try d.action("b", "start")
        #expect(refused.status == 422, "\(refused.text)")
        let body = try JSONDecoder().decode(APIErrorBody.self, from: Data(refused.body))
        #expect(body.code == "insufficient-memory")
        #expect(body.message.contains("asks for \(each) MiB") && body.message.contains("x overcommit 0.01")
                && body.message.contains("1 running VM hold \(each) MiB") && body.message.contains("\(capacity - each) MiB is available"), "\(body.message)")
        #expect(body.message.contains("vireo vm stop") && body.message.contains("--memory-overcommit"), "\(body.message)")
        #expect(try d.vm("b").state == .stopped, "a refused start leaves the VM stopped, not failed")
        // Once a stops, b fits.
        #expect(try d.req("POST", "/v1/vms/a/stop?force=true").status == 200)
        #expect(try d.action("b", "start").status == 200)
        // An update past the capacity is refused like a create.
        #expect(try d.req("POST", "/v1/vms/b/stop?force=true").status == 200)
        let grown = try d.req("PATCH", "/v1/vms/b", json: #"{"memory_mib":\#(capacity + 1)}"#)
        #expect(grown.status == 422 && grown.text.contains("could never start"), "\(grown.text)")
        // A ratio out of range is refused by the CLI with the range.
        let bad = try ChildProcessRunner.run([VireoBinary.path ?? "vireo", "host", "--socket", d.dir + "/x.sock", "--data-dir", d.dir + "/x", "--memory-overcommit", "0"])
        #expect(bad.status == 1 && bad.stderr.contains("give 0.01 to 100"), "\(bad.stderr)")
    }
}
