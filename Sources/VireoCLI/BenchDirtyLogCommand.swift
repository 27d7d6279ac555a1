import ArgumentParser
import KVM
import Synchronization
import VMM
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// `vireo bench dirty-log`: what KVM dirty-page logging costs the guest, measured with the
/// probe guest in this process. Three runs of the same page-writing workload (one store in each
/// 4 KiB page of the RAM above 2 MiB per pass): logging off; logging on but fetched only at the
/// end (the active-memory sampler's steady state between its fetches); logging on and fetched
/// after every pass (every store of the next pass write-faults once: pre-copy's worst case, and
/// the sampler's cost in a window where the guest writes those pages). Then PIO exits/s with
/// logging off and on, and the workload's passes/s over `seconds` with the sampler off, on, and
/// on sampling 1/16 of the pages.
struct BenchDirtyLog: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dirty-log", abstract: "Cost of KVM dirty-page logging: page-writing passes and exit rates, off vs on.")

    @Option(help: "Guest RAM in MiB (the workload writes every page above 2 MiB).") var memory: UInt64 = 256
    @Option(help: "Passes per run (the first, which faults the RAM in, is not counted).") var passes: UInt64 = 21
    @Option(help: "PIO exits per exit-rate run.") var exits: UInt64 = 100_000
    @Option(help: "Seconds of the sampler runs (the guest rewrites its RAM continuously; passes/s with the active-memory sampler off and on).") var seconds: UInt32 = 30
    @Option(help: "The sampler's window in those runs.") var window: UInt32 = 10

    enum Mode: String, CaseIterable {
        case off, onUnfetched = "on-unfetched", onFetchedEachPass = "on-fetched-each-pass"
        case sampledEachPass = "on-sampled-1/16-rearmed-each-pass"
    }

    func run() throws {
        try reportingErrors {
            guard passes >= 3, memory >= 8, memory <= 4096 else {
                throw VireoError(.invalidArgument, "give --passes 3 or more and --memory 8 to 4096 (MiB)")
            }
            let pages = (memory << 20 - ProbeGuest.dirtyStart) / 4096
            print("workload: \(pages) pages (one 8-byte store each) per pass, \(passes - 1) passes measured, median")
            for mode in Mode.allCases {
                let r = try measurePasses(mode)
                let perPage = Double(r.passNanos) / Double(pages)
                var line = "dirty_log=\(mode.rawValue) pass_ms=\(fmt(Double(r.passNanos) / 1e6)) ns_per_page=\(fmt(perPage))"
                if let f = r.fetchNanos { line += " fetch_ms=\(fmt(Double(f) / 1e6)) fetched_pages=\(r.fetchedPages)" }
                print(line)
            }
            for log in [false, true] {
                print("dirty_log=\(log ? "on" : "off") pio_exits_per_s=\(try measureExits(log: log))")
            }
            for (w, n) in [(UInt32(0), UInt32(1)), (window, 1), (window, 16)] {
                let r = try measureSampler(window: w, sample: n)
                print("active_memory_window_s=\(w) sample=1/\(n) passes_per_s=\(fmt(r.passesPerSecond)) estimate_bytes=\(r.estimate.map(String.init) ?? "-")")
            }
        }
    }

    private func fmt(_ d: Double) -> String { String((d * 100).rounded() / 100) }

    /// Median pass time (and median fetch time in the fetch-each-pass mode), passes 2...N.
    func measurePasses(_ mode: Mode) throws -> (passNanos: UInt64, fetchNanos: UInt64?, fetchedPages: Int) {
        var config = MachineConfig(boot: .probe(.dirty(passes: passes)), cpus: 1, memorySize: memory << 20, serial: .none)
        config.trackDirtyPages = mode != .off
        if mode == .sampledEachPass { config.activeMemorySampleOneIn = 16 }
        let logRef = Mutex<DirtyLog?>(nil)
        let samples = Mutex<(marks: [UInt64], fetches: [UInt64], fetched: [Int])>(([], [], []))
        let fetchEach = mode == .onFetchedEachPass || mode == .sampledEachPass
        let sampled = mode == .sampledEachPass
        let machine = try Machine(config: config, onProbePass: { _ in
            let t0 = monotonicNanos()
            var fetchTime: UInt64?
            var fetched = 0
            if fetchEach, let log = logRef.withLock({ $0 }) {
                fetched = (try? log.fetchDirtyPages()) ?? -1
                if sampled {
                    // Re-arm a fresh random 1/16 of the pages (what the sampled estimator does per window).
                    var rng = SystemRandomNumberGenerator()
                    let sample = log.randomSample(oneIn: 16, using: &rng)
                    if (try? log.rearm(sample)) == nil { fetched = -1 }
                }
                fetchTime = monotonicNanos() - t0
            }
            let t1 = monotonicNanos()
            samples.withLock {
                // The pass ended at t0; the next one starts at t1 (the fetch is not guest time).
                $0.marks.append(t0); $0.marks.append(t1)
                if let fetchTime { $0.fetches.append(fetchTime); $0.fetched.append(fetched) }
            }
        })
        if mode != .off {
            guard let log = machine.dirtyLog else {
                throw VireoError(.unsupported, "KVM refused dirty logging: \(machine.dirtyLogUnavailable ?? "no reason given")")
            }
            if mode == .sampledEachPass, !log.manualProtect {
                throw VireoError(.unsupported, "KVM refused manual dirty-log protection (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)")
            }
            logRef.withLock { $0 = log }
        }
        let exit = machine.run()
        guard exit == .probeDone else { throw VireoError(.guest, "probe guest did not finish: \(exit)") }
        let s = samples.withLock { $0 }
        // marks: end1, start2, end2, start3, ...: pass k (k >= 2) ran from start_k to end_k.
        var times: [UInt64] = []
        var i = 1
        while i + 1 < s.marks.count { times.append(s.marks[i + 1] - s.marks[i]); i += 2 }
        guard !times.isEmpty else { throw VireoError(.internalError, "no pass was timed") }
        times.sort()
        let fetches = s.fetches.dropFirst().sorted()
        return (times[times.count / 2], fetches.isEmpty ? nil : fetches[fetches.count / 2], s.fetched.dropFirst().first ?? 0)
    }

    /// The dirty workload forever for `seconds`, with the sampler at `window` (0: off): passes/s.
    func measureSampler(window: UInt32, sample: UInt32) throws -> (passesPerSecond: Double, estimate: UInt64?) {
        var config = MachineConfig(boot: .probe(.dirty(passes: 0)), cpus: 1, memorySize: memory << 20, serial: .none)
        config.activeMemoryWindowSeconds = window
        config.activeMemorySampleOneIn = sample
        let marks = Mutex<(first: UInt64, last: UInt64, count: UInt64)>((0, 0, 0))
        let machine = try Machine(config: config, onProbePass: { _ in
            let now = monotonicNanos()
            marks.withLock { if $0.count == 0 { $0.first = now }; $0.last = now; $0.count += 1 }
        })
        let stop = machine.stop
        let seconds = self.seconds
        let timer = try HostThread(name: "bench-timer") {
            var left = Int(seconds) * 10
            while left > 0 && !stop.isStopping { usleep(100_000); left -= 1 }
            stop.request(.signal(SIGTERM))
        }
        let exit = machine.run()
        timer.join()
        guard exit == .signal(SIGTERM) else { throw VireoError(.guest, "probe guest stopped early: \(exit)") }
        let m = marks.withLock { $0 }
        // From the end of pass 1 (RAM faulted in) to the end of the last pass.
        guard m.count > 2, m.last > m.first else { throw VireoError(.guest, "the probe guest completed only \(m.count) passes") }
        return (Double(m.count - 1) / (Double(m.last - m.first) / 1e9), machine.metrics().memory.activeBytes)
    }

    func measureExits(log: Bool) throws -> UInt64 {
        var config = MachineConfig(boot: .probe(.pioLoop(iterations: exits)), cpus: 1, memorySize: 64 << 20, serial: .none)
        config.trackDirtyPages = log
        let machine = try Machine(config: config)
        let exit = machine.run()
        let end = monotonicNanos()
        guard exit == .probeDone, let start = machine.probeFirstInstructionNanos, end > start else {
            throw VireoError(.guest, "probe guest did not finish: \(exit)")
        }
        return UInt64(Double(exits) / (Double(end - start) / 1e9))
    }
}
