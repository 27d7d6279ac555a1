import ArgumentParser
import Foundation
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// `vireo bench overcommit`: memory overcommit through hypervisor reclaim (compression, swap,
/// zero pages), measured on real VMMs. Starts `vms` probe VMMs (`vireo run`, one process each):
/// VM 0 is the active one (fills its RAM, then rewrites a hot set in a loop and counts its
/// passes); the others fill their RAM and idle, with compressible, identical and random page
/// contents in turn. A control VM, the active one's twin that is never reclaimed, runs the same
/// hot loop over the same seconds: the active VM's slowdown is its passes relative to the
/// control's, after the reclaim against before, so load from other
/// processes on the host cancels out. The control VM is an instrument: it is left out of the
/// ratio (its RSS is printed). After two sampling
/// windows every VM but the control is asked to reclaim all of its RAM (`reclaim`; only pages
/// not written in the last window are taken). Measured: the VMMs' total RSS against the RAM
/// they provide (ratio), the slowdown, and, after every idle guest read all of its pages back
/// and checked them, the fault-in service time (p50, p99). Any page that reads back wrong
/// fails the run.
struct BenchOvercommit: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "overcommit",
        abstract: "Consolidation ratio, active-VM slowdown and fault-in latency with compressed and swapped guest memory.")

    @Option(help: "Probe VMs to start (VM 0 is the active one).") var vms: Int = 6
    @Option(help: "Guest RAM per VM in MiB.") var memory: UInt64 = 512
    @Option(help: "The active VM's hot set in MiB (rewritten continuously).") var hot: UInt64 = 32
    @Option(help: "Seconds per throughput measurement of the active VM.") var seconds: UInt32 = 5
    @Option(help: "Directory for sockets and swap files (default: a fresh one under /tmp, removed after).") var dir: String?

    final class VM {
        let name: String
        let mode: String
        let socket: String
        let child: ChildProcess
        init(bin: String, dir: String, index: Int, mode: String, memory: UInt64, hot: UInt64) throws {
            name = "vm\(index)"
            self.mode = mode
            socket = "\(dir)/\(name).sock"
            let probe = hot > 0 ? "pattern:\(mode):\(hot)" : "pattern:\(mode)"
            child = try ChildProcess([bin, "run", "--probe", probe, "--memory", "\(memory)M", "--serial", "none", "--api-socket", socket,
                                      "--active-memory-window", "1", "--active-memory-sample", "1", "--swap-file", "\(dir)/\(name).swap"])
        }
        func control(_ command: String) -> String { BenchOvercommit.control(socket, command) }
        func status() -> [String: Any] {
            (try? JSONSerialization.jsonObject(with: Data(control("status").utf8))) as? [String: Any] ?? [:]
        }
        func number(_ section: String, _ key: String) -> UInt64 {
            let v = (status()[section] as? [String: Any])?[key]
            if let b = v as? Bool { return b ? 1 : 0 }
            return (v as? NSNumber)?.uint64Value ?? 0
        }
        var rss: UInt64 {
            guard let text = try? String(contentsOfFile: "/proc/\(child.pid)/status", encoding: .utf8),
                  let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
                  let kb = UInt64(line.split(separator: " ").dropFirst().first ?? "") else { return 0 }
            return kb * 1024
        }
    }

    func run() throws {
        try reportingErrors {
            guard vms >= 2, vms <= 64, memory >= 16, memory <= 16384, hot < memory / 2, seconds >= 1, seconds <= 600 else {
                throw ValidationError("give --vms 2 to 64, --memory 16 to 16384 MiB, --hot below half of --memory, --seconds 1 to 600")
            }
            let dir = self.dir ?? "/tmp/vireo-bench-overcommit-\(getpid())"
            _ = mkdir(dir, 0o700)
            let bin = ChildProcess.selfExecutable()
            var machines: [VM] = []
            defer {
                for m in machines { _ = m.control("stop"); _ = m.child.wait() }
                if self.dir == nil { _ = system("rm -rf '\(dir)'") }
            }
            let modes = ["compressible", "identical", "random"]
            for i in 0..<vms {
                machines.append(try VM(bin: bin, dir: dir, index: i, mode: i == 0 ? "compressible" : modes[(i - 1) % modes.count],
                                       memory: memory, hot: i == 0 ? hot : 0))
            }
            let active = machines[0]
            let control = try VM(bin: bin, dir: dir, index: vms, mode: "compressible", memory: memory, hot: hot)
            defer { _ = control.control("stop"); _ = control.child.wait() }
            try Self.wait(seconds: 120, "the guests filled their RAM") { (machines + [control]).allSatisfy { $0.number("probe", "filled") == 1 } }
            sleep(3)   // two sampling windows: the filled pages age, the hot set does not
            let before = try rates(active, control)
            let rssBefore = machines.reduce(UInt64(0)) { $0 + $1.rss }

            let t0 = monotonicNanos()
            var replies: [[String: String]] = []
            for m in machines {
                let r = Self.pairs(m.control("reclaim \(memory)M"))
                guard r["ok"] == "true" else { throw VireoError(.internalError, "\(m.name): reclaim failed: \(r["error"] ?? "no reply")") }
                replies.append(r)
            }
            let reclaimMs = (monotonicNanos() - t0) / 1_000_000
            let released = replies.reduce(UInt64(0)) { $0 + (UInt64($1["released_bytes"] ?? "") ?? 0) }
            sleep(1)
            let rssAfter = machines.reduce(UInt64(0)) { $0 + $1.rss }
            let after = try rates(active, control)
            let activeFaults = active.number("memory", "faultin_count")
            let held = machines.map { m in (m.number("memory", "compressed_bytes"), m.number("memory", "compressed_stored_bytes"),
                                           m.number("memory", "swapped_bytes"), m.number("memory", "zero_bytes")) }

            // Every idle guest reads all of its pages back and checks them.
            let v0 = monotonicNanos()
            for m in machines.dropFirst() { _ = m.control("probe-verify") }
            try Self.wait(seconds: 600, "the guests verified their RAM") { machines.dropFirst().allSatisfy { $0.number("probe", "verify_passes") >= 1 } }
            let verifyMs = (monotonicNanos() - v0) / 1_000_000
            let bad = machines.reduce(UInt64(0)) { $0 + $1.number("probe", "bad_pages") }
            var p50s: [UInt64] = [], p99s: [UInt64] = []
            var faults: UInt64 = 0
            for m in machines.dropFirst() {
                p50s.append(m.number("memory", "faultin_us_p50")); p99s.append(m.number("memory", "faultin_us_p99"))
                faults += m.number("memory", "faultin_count")
            }
            guard bad == 0 else { throw VireoError(.guest, "\(bad) guest pages read back wrong after reclaim") }

            let provisioned = UInt64(vms) * memory << 20
            let ratio = Double(provisioned) / Double(max(1, rssAfter))
            let slowdown = (1 - after.relative / before.relative) * 100
            func mib(_ b: UInt64) -> UInt64 { b >> 20 }
            let sum = held.reduce((UInt64(0), UInt64(0), UInt64(0), UInt64(0))) { ($0.0 + $1.0, $0.1 + $1.1, $0.2 + $1.2, $0.3 + $1.3) }
            print("ratio=\(String(format: "%.2f", ratio)) slowdown_pct=\(String(format: "%.1f", slowdown)) faultin_us_p99=\(p99s.max() ?? 0)")
            print("vms=\(vms) memory_mib=\(memory) provisioned_mib=\(mib(provisioned)) rss_before_mib=\(mib(rssBefore)) rss_after_mib=\(mib(rssAfter)) "
                  + "released_mib=\(mib(released)) compressed_mib=\(mib(sum.0)) stored_mib=\(mib(sum.1)) swapped_mib=\(mib(sum.2)) zero_mib=\(mib(sum.3)) "
                  + "reclaim_ms=\(reclaimMs) reclaim_mib_per_s=\(reclaimMs > 0 ? mib(released) * 1000 / reclaimMs : 0)")
            print("active_hot_mib=\(hot) active_passes_per_s_before=\(String(format: "%.1f", before.active)) control_before=\(String(format: "%.1f", before.control)) "
                  + "relative_before=\(String(format: "%.3f", before.relative)) active_passes_per_s_after=\(String(format: "%.1f", after.active)) "
                  + "control_after=\(String(format: "%.1f", after.control)) relative_after=\(String(format: "%.3f", after.relative)) "
                  + "active_faultins=\(activeFaults) control_rss_mib=\(mib(control.rss))")
            print("faultin_us_p50=\(p50s.sorted()[p50s.count / 2]) faultin_count=\(faults) verify_ms=\(verifyMs) "
                  + "verify_us_per_page=\(faults > 0 ? verifyMs * 1000 / faults : 0) bad_pages=\(bad)")
            for (m, h) in zip(machines, held) {
                print("\(m.name) contents=\(m.mode) compressed_mib=\(mib(h.0)) stored_kib=\(h.1 >> 10) swapped_mib=\(mib(h.2)) zero_mib=\(mib(h.3)) "
                      + "faultin_us_p50=\(m.number("memory", "faultin_us_p50")) faultin_us_p99=\(m.number("memory", "faultin_us_p99"))")
            }
        }
    }

    /// Hot-set passes per second of the active and the control VM over the same `seconds`, and
    /// the active VM's passes relative to the control's.
    func rates(_ active: VM, _ control: VM) throws -> (active: Double, control: Double, relative: Double) {
        let a0 = active.number("probe", "hot_passes"), c0 = control.number("probe", "hot_passes")
        let t0 = monotonicNanos()
        sleep(seconds)
        let a1 = active.number("probe", "hot_passes"), c1 = control.number("probe", "hot_passes")
        let s = Double(monotonicNanos() - t0) / 1e9
        guard a1 > a0, c1 > c0 else { throw VireoError(.guest, "the active or the control VM made no progress") }
        return (Double(a1 - a0) / s, Double(c1 - c0) / s, Double(a1 - a0) / Double(c1 - c0))
    }

    static func wait(seconds: Int, _ what: String, _ done: () -> Bool) throws {
        for _ in 0..<(seconds * 10) where !done() { usleep(100_000) }
        guard done() else { throw VireoError(.guest, "timed out after \(seconds) s waiting until \(what)") }
    }

    static func pairs(_ reply: String) -> [String: String] {
        var out: [String: String] = [:]
        if let e = reply.range(of: "error=") { out["error"] = String(reply[e.upperBound...]).trimmingCharacters(in: .whitespacesAndNewlines) }
        for word in reply.split(separator: " ") {
            let kv = word.split(separator: "=", maxSplits: 1)
            if kv.count == 2, out[String(kv[0])] == nil { out[String(kv[0])] = String(kv[1]).trimmingCharacters(in: .whitespacesAndNewlines) }
        }
        return out
    }

    /// One control-socket request (retried while the VMM is still starting).
    static func control(_ socket: String, _ command: String) -> String {
        for _ in 0..<100 {
            if let reply = try? ControlCommand.roundTrip(socket: socket, command: command) { return reply }
            usleep(50_000)
        }
        return ""
    }
}
