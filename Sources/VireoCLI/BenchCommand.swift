import ArgumentParser
import VMM
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// `vireo bench ...`: measurements of the VMM itself with the probe guest.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure the VMM with the built-in probe guest (release builds give the real figures).",
        subcommands: [BenchExits.self, BenchMemory.self, BenchStart.self, BenchDirtyLog.self, BenchSnapshot.self, BenchMigrate.self, BenchOvercommit.self])
}

struct BenchExits: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "exits", abstract: "PIO and MMIO exit round trips per second (guest ring 3 -> VMM -> guest).")

    @Option(help: "Exits per measurement.") var count: UInt64 = 100_000

    func run() throws {
        let pio = try reportingErrors { try measure(.pioLoop(iterations: count)) }
        let mmio = try reportingErrors { try measure(.mmioLoop(iterations: count, address: ProbeWorkload.defaultMMIOAddress)) }
        print("pio_exits_per_s=\(pio) mmio_exits_per_s=\(mmio)")
    }

    /// Runs the workload in this process; rate = exits / (done - first instruction).
    func measure(_ workload: ProbeWorkload) throws -> UInt64 {
        let machine = try Machine(config: MachineConfig(boot: .probe(workload), cpus: 1, memorySize: 64 << 20, serial: .none))
        let exit = machine.run()
        let end = monotonicNanos()
        guard exit == .probeDone else { throw VireoError(.guest, "probe guest did not finish: \(exit)") }
        guard let start = machine.probeFirstInstructionNanos, end > start else {
            throw VireoError(.internalError, "probe guest never reported its first instruction")
        }
        return UInt64(Double(count) / (Double(end - start) / 1e9))
    }
}

struct BenchStart: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "start", abstract: "Time from process start (exec) to the guest's first instruction.")

    @Option(help: "Repetitions (the median is printed).") var runs: Int = 20

    func run() throws {
        var samples: [UInt64] = []
        for _ in 0..<max(1, runs) {
            let t0 = monotonicNanos()
            let child = try ChildProcess([ChildProcess.selfExecutable(), "run", "--probe", "pio:1", "--memory", "128M", "--serial", "none"],
                                         environment: ["VIREO_BENCH_T0": String(t0)])
            var us: UInt64?
            while let line = ChildProcess.readLine(child.stderr) {
                if line.hasPrefix("first_instruction_us=") { us = UInt64(line.dropFirst("first_instruction_us=".count)) }
            }
            let status = child.wait()
            guard status == 0, let us else { throw VireoError(.guest, "probe VM failed (exit status \(status))") }
            samples.append(us)
        }
        samples.sort()
        print("start_to_first_instruction_us=\(samples[samples.count / 2]) min_us=\(samples[0]) max_us=\(samples[samples.count - 1]) runs=\(samples.count)")
    }
}

struct BenchMemory: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "memory",
        abstract: "Private memory of a running 1-vCPU 128 MiB VMM process beyond the guest RAM the guest touched.")

    func run() throws {
        let child = try ChildProcess([ChildProcess.selfExecutable(), "run", "--probe", "dirty", "--memory", "128M", "--serial", "none"])
        defer { child.signal(SIGKILL); child.wait() }
        var guestRange: (UInt64, UInt64)?
        while let line = ChildProcess.readLine(child.stdout) {
            if line.hasPrefix("guest_ram=") {
                let parts = line.dropFirst("guest_ram=".count).split(separator: "-")
                if parts.count == 2, let a = UInt64(parts[0].dropFirst(2), radix: 16), let b = UInt64(parts[1].dropFirst(2), radix: 16) {
                    guestRange = (a, b)
                }
            }
            if line.hasPrefix("probe_pass=") { break }
        }
        guard let guestRange else { throw VireoError(.guest, "the probe VM did not start (no guest_ram line)") }
        let usage = try SmapsUsage(pid: child.pid, excluding: guestRange)
        print("vmm_private_kib=\(usage.privateKiB) vmm_private_dirty_kib=\(usage.privateDirtyKiB) guest_touched_kib=\(usage.excludedRssKiB) rss_kib=\(usage.totalRssKiB)")
    }
}

/// Sums /proc/PID/smaps: private memory outside one address range (guest RAM), and that range's RSS.
struct SmapsUsage {
    var privateKiB: UInt64 = 0
    var privateDirtyKiB: UInt64 = 0
    var excludedRssKiB: UInt64 = 0
    var totalRssKiB: UInt64 = 0

    init(pid: pid_t, excluding range: (UInt64, UInt64)) throws {
        let text = String(decoding: try OwnedFD.readFile("/proc/\(pid)/smaps", limit: 64 << 20, what: "smaps"), as: UTF8.self)
        var inGuest = false
        for line in text.split(separator: "\n") {
            if let dash = line.firstIndex(of: "-"), let space = line.firstIndex(of: " "), dash < space,
               let start = UInt64(line[..<dash], radix: 16) {
                inGuest = start >= range.0 && start < range.1
                continue
            }
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 2, let kib = UInt64(fields[1]) else { continue }
            switch fields[0] {
            case "Rss:":
                totalRssKiB += kib
                if inGuest { excludedRssKiB += kib }
            case "Private_Clean:", "Private_Dirty:":
                if !inGuest {
                    privateKiB += kib
                    if fields[0] == "Private_Dirty:" { privateDirtyKiB += kib }
                }
            default: break
            }
        }
    }
}
