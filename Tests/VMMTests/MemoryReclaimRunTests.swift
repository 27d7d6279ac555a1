import Foundation
import Testing
import VMM
import VireoSupport
import VireoTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Hypervisor memory reclaim on a real VMM (`vireo run`, /dev/kvm, the ring-3 probe guest):
/// the pattern workload fills guest RAM, the control command `reclaim` compresses, swaps or
/// drops its pages and releases them (RSS falls), then the guest reads every word back through
/// KVM (each released page comes back through userfaultfd) and reports the pages that differ.
@Suite(.serialized, .enabled(if: VireoBinary.path != nil && VireoBinary.hasKVM))
struct MemoryReclaimRunTests {
    final class VMM {
        let dir: String
        let socket: String
        let child: ChildProcess
        init(_ name: String, memory: String = "128M", probe: String, extra: (String) -> [String] = { _ in [] }) throws {
            dir = "/tmp/vireo-reclaim-\(getpid())-\(name)"
            _ = system("rm -rf \(dir)"); mkdir(dir, 0o700)
            socket = dir + "/vmm.sock"
            let bin = try #require(VireoBinary.path)
            child = try ChildProcess([bin, "run", "--probe", probe, "--memory", memory, "--serial", "none", "--api-socket", socket,
                                      "--active-memory-window", "1", "--active-memory-sample", "1"] + extra(dir))
        }
        func control(_ command: String) -> String { SnapshotRunTests.control(socket, command) }
        func status() -> [String: Any] {
            (try? JSONSerialization.jsonObject(with: Data(control("status").utf8))) as? [String: Any] ?? [:]
        }
        func memory(_ key: String) -> UInt64 { ((status()["memory"] as? [String: Any])?[key] as? NSNumber)?.uint64Value ?? 0 }
        func probe(_ key: String) -> UInt64 {
            let p = status()["probe"] as? [String: Any]
            if let b = p?[key] as? Bool { return b ? 1 : 0 }
            return (p?[key] as? NSNumber)?.uint64Value ?? 0
        }
        /// Waits until the guest filled its RAM and one full sampling window passed after.
        func waitFilledAndCold() throws {
            try MemoryReclaimRunTests.wait(seconds: 30) { probe("filled") == 1 }
            usleep(2_500_000)
        }
        /// Asks the guest to verify every page; returns the pages that differ (after the pass).
        func verify() throws -> UInt64 {
            let before = probe("verify_passes")
            #expect(control("probe-verify").contains(#""ok":true"#))
            try MemoryReclaimRunTests.wait(seconds: 60) { probe("verify_passes") > before }
            return probe("bad_pages")
        }
        var rss: UInt64 {
            guard let text = try? String(contentsOfFile: "/proc/\(child.pid)/status", encoding: .utf8),
                  let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
                  let kb = UInt64(line.split(separator: " ").dropFirst().first ?? "") else { return 0 }
            return kb * 1024
        }
        func finish() {
            _ = control("stop")
            _ = child.wait()
            _ = system("rm -rf \(dir)")
        }
    }

    static func wait(seconds: Int, _ done: () -> Bool) throws {
        for _ in 0..<(seconds * 20) where !done() { usleep(50_000) }
        try #require(done(), "timed out after \(seconds) s")
    }

    /// `reclaim`'s reply as a dictionary of its key=value pairs.
    static func pairs(_ reply: String) -> [String: String] {
        var out: [String: String] = [:]
        for word in reply.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: " ") {
            let kv = word.split(separator: "=", maxSplits: 1)
            if kv.count == 2 { out[String(kv[0])] = String(kv[1]) }
        }
        return out
    }

    @Test func compressedPagesAreReleasedAndComeBackIntact() throws {
        let vm = try VMM("compress", probe: "pattern:compressible")
        defer { vm.finish() }
        try vm.waitFilledAndCold()
        let before = vm.rss
        let r = Self.pairs(vm.control("reclaim 96M"))
        #expect(r["ok"] == "true", "\(r)")
        let released = UInt64(r["released_bytes"] ?? "") ?? 0
        let compressed = UInt64(r["compressed_bytes"] ?? "") ?? 0
        let stored = UInt64(r["stored_bytes"] ?? "") ?? 0
        #expect(released == 96 << 20, "\(r)")
        #expect(compressed >= 90 << 20 && stored > 0 && stored < compressed / 2, "\(r)")
        #expect(r["swapped_bytes"] == "0")
        // The host got the memory back (less what the store keeps).
        let after = vm.rss
        #expect(after + (64 << 20) < before, "RSS \(before) -> \(after)")
        #expect(vm.memory("compressed_bytes") == compressed && vm.memory("compressed_stored_bytes") == stored)
        // The guest reads every word back through KVM: each released page faults in.
        #expect(try vm.verify() == 0)
        #expect(vm.memory("faultin_count") >= (90 << 20) / 4096)
        #expect(vm.memory("faultin_us_p99") >= vm.memory("faultin_us_p50"))
        #expect(vm.memory("compressed_bytes") < compressed, "pages came back, so the store shrank")
        // `reclaim 0` reports only.
        let z = Self.pairs(vm.control("reclaim 0"))
        #expect(z["ok"] == "true" && z["released_bytes"] == "0", "\(z)")
    }

    @Test func incompressiblePagesGoToTheSwapFileAndComeBack() throws {
        let vm2 = try VMM("swap", probe: "pattern:random") { ["--swap-file", $0 + "/swap"] }
        let swap = vm2.dir + "/swap"
        defer { _ = system("rm -rf \(vm2.dir)") }
        try vm2.waitFilledAndCold()
        let before = vm2.rss
        let r = Self.pairs(vm2.control("reclaim 96M"))
        let swapped = UInt64(r["swapped_bytes"] ?? "") ?? 0
        #expect(r["ok"] == "true" && swapped >= 90 << 20, "\(r)")
        var st = stat()
        #expect(stat(swap, &st) == 0 && UInt64(st.st_size) >= swapped)
        #expect(vm2.rss + (64 << 20) < before)
        #expect(try vm2.verify() == 0)
        #expect(vm2.memory("swapped_bytes") < swapped && vm2.memory("faultin_count") > 0)
        _ = vm2.control("stop")
        #expect(vm2.child.wait() == 143)
        // The swap file held guest data: the VMM empties it on the way out.
        #expect(stat(swap, &st) == 0 && st.st_size == 0)
    }

    @Test func withoutASwapFileIncompressiblePagesStayInRAM() throws {
        let vm = try VMM("noswap", probe: "pattern:random")
        defer { vm.finish() }
        try vm.waitFilledAndCold()
        let r = Self.pairs(vm.control("reclaim 96M"))
        #expect(r["ok"] == "true" && r["swapped_bytes"] == "0", "\(r)")
        #expect((UInt64(r["released_bytes"] ?? "") ?? .max) < 4 << 20, "\(r)")
        #expect(try vm.verify() == 0)
    }

    @Test func anUnwritableSwapFileKeepsThePagesInRAM() throws {
        // /dev/full opens but every write fails (ENOSPC): no page may be lost.
        let vm = try VMM("full", probe: "pattern:random", extra: { _ in ["--swap-file", "/dev/full"] })
        defer { vm.finish() }
        try vm.waitFilledAndCold()
        let before = vm.rss
        let r = Self.pairs(vm.control("reclaim 96M"))
        #expect(r["ok"] == "true" && r["swapped_bytes"] == "0", "\(r)")
        let kept = UInt64(r["kept_bytes"] ?? "") ?? 0
        #expect(kept >= 90 << 20, "\(r)")
        #expect((UInt64(r["swap_errors"] ?? "") ?? 0) >= 1)
        #expect(vm.memory("reclaim_kept_bytes") >= 90 << 20 && vm.memory("swap_errors") >= 1)
        let why = (vm.status()["memory"] as? [String: Any])?["swap_error"] as? String ?? ""
        #expect(why.contains("/dev/full") && why.contains("No space left"), "\(why)")
        #expect(vm.rss + (16 << 20) > before, "the pages stayed resident")
        #expect(try vm.verify() == 0)
    }

    @Test func zeroPagesTakeNoStoreBytes() throws {
        let vm = try VMM("zero", probe: "pattern:zero")
        defer { vm.finish() }
        try vm.waitFilledAndCold()
        let before = vm.rss
        let r = Self.pairs(vm.control("reclaim 120M"))
        let zero = UInt64(r["zero_bytes"] ?? "") ?? 0
        #expect(r["ok"] == "true" && zero >= 100 << 20, "\(r)")
        // Only the few non-zero low pages (page tables, the code) are in the store.
        #expect((UInt64(r["stored_bytes"] ?? "") ?? .max) < 64 << 10, "\(r)")
        #expect(vm.rss + (96 << 20) < before)
        #expect(try vm.verify() == 0)
    }

    @Test func aSnapshotAfterReclaimRestoresIntact() throws {
        let vm = try VMM("snap", memory: "64M", probe: "pattern:compressible")
        try vm.waitFilledAndCold()
        let r = Self.pairs(vm.control("reclaim 48M"))
        #expect(r["ok"] == "true" && (UInt64(r["released_bytes"] ?? "") ?? 0) >= 40 << 20, "\(r)")
        let snap = vm.control("snapshot \(vm.dir)/snap")
        #expect(snap.contains(#""ok":true"#), "\(snap)")
        // Every page was brought back before RAM was written.
        #expect(vm.memory("compressed_bytes") == 0 && vm.memory("zero_bytes") == 0)
        _ = vm.control("stop"); _ = vm.child.wait()

        let bin = try #require(VireoBinary.path)
        let sock = vm.dir + "/b.sock"
        let restored = try ChildProcess([bin, "run", "--restore", vm.dir + "/snap", "--serial", "none", "--api-socket", sock])
        defer { _ = SnapshotRunTests.control(sock, "stop"); _ = restored.wait(); _ = system("rm -rf \(vm.dir)") }
        #expect(SnapshotRunTests.control(sock, "probe-verify").contains(#""ok":true"#))
        func probe(_ k: String) -> UInt64 {
            let s = (try? JSONSerialization.jsonObject(with: Data(SnapshotRunTests.control(sock, "status").utf8))) as? [String: Any]
            return ((s?["probe"] as? [String: Any])?[k] as? NSNumber)?.uint64Value ?? 0
        }
        try Self.wait(seconds: 60) { probe("verify_passes") >= 1 }
        #expect(probe("bad_pages") == 0)
    }

    @Test func aMigrationAfterReclaimArrivesIntact() throws {
        let vm = try VMM("mig", memory: "64M", probe: "pattern:random") { ["--swap-file", $0 + "/swap"] }
        defer { vm.child.signal(SIGKILL); _ = vm.child.wait(); _ = system("rm -rf \(vm.dir)") }
        try vm.waitFilledAndCold()
        let r = Self.pairs(vm.control("reclaim 48M"))
        #expect(r["ok"] == "true" && (UInt64(r["swapped_bytes"] ?? "") ?? 0) >= 40 << 20, "\(r)")
        let bin = try #require(VireoBinary.path)
        let dsock = vm.dir + "/d.sock", msock = vm.dir + "/mig.sock"
        let destination = try ChildProcess([bin, "run", "--incoming", "unix:\(msock)", "--serial", "none", "--api-socket", dsock])
        defer { _ = SnapshotRunTests.control(dsock, "stop"); _ = destination.wait() }
        try Self.wait(seconds: 10) { access(msock, F_OK) == 0 }
        let reply = vm.control("migrate unix:\(msock) downtime-ms=2000")
        #expect(reply.contains(#""ok":true"#), "\(reply)")
        // The source ends once the guest runs on the destination.
        #expect(vm.child.wait() == 0)
        #expect(SnapshotRunTests.control(dsock, "probe-verify").contains(#""ok":true"#))
        func probe(_ k: String) -> UInt64 {
            let s = (try? JSONSerialization.jsonObject(with: Data(SnapshotRunTests.control(dsock, "status").utf8))) as? [String: Any]
            return ((s?["probe"] as? [String: Any])?[k] as? NSNumber)?.uint64Value ?? 0
        }
        try Self.wait(seconds: 60) { probe("verify_passes") >= 1 }
        #expect(probe("bad_pages") == 0)
    }

    @Test func badReclaimRequestsChangeNothing() throws {
        let vm = try VMM("bad", memory: "32M", probe: "pattern:compressible")
        defer { vm.finish() }
        try vm.waitFilledAndCold()
        for bad in ["reclaim", "reclaim lots", "reclaim -5", "reclaim 1 2", "reclaim 99999999999999999999"] {
            let reply = vm.control(bad)
            #expect(reply.hasPrefix("ok=false error=reclaim takes one size"), "\(bad): \(reply)")
        }
        #expect(vm.memory("compressed_bytes") == 0 && vm.memory("faultin_count") == 0)
        #expect(try vm.verify() == 0)
    }

    @Test func patternWorkloadTextIsChecked() throws {
        for bad in ["pattern:purple", "pattern:zero:x", "pattern:zero:1:2"] {
            let (status, _, err) = try VireoBinary.run(["run", "--probe", bad, "--memory", "16M", "--serial", "none"])
            #expect(status != 0 && err.contains("probe '\(bad)'") && !err.contains("Fatal"), "\(bad): \(err)")
        }
        #expect(try ProbeWorkload.parse("pattern:identical:8") == .pattern(mode: .identical, hotBytes: 8 << 20))
        #expect(throws: VireoError.self) { try ProbeWorkload.parse("pattern:nope") }
    }
}
