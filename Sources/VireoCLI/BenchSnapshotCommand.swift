import ArgumentParser
import Foundation
import Synchronization
import VMM
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// `vireo bench snapshot`: snapshot and restore of a probe-guest machine in this process.
/// A 2-vCPU 512 MiB machine runs the PIO loop with 128 MiB of its RAM written (random bytes,
/// so no page is a zero-page hole); it is paused and saved; then it is restored `runs` times,
/// each time measuring from the start of the restore (reading the state file) to the first
/// guest exit after it (the loop's next `out`: the first instruction that reaches the VMM).
struct BenchSnapshot: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot",
        abstract: "Snapshot time and size, restore-to-first-instruction latency (p50, p99), clones per second.")

    @Option(help: "Restores to time.") var runs: Int = 50
    @Option(help: "Guest RAM in MiB.") var memory: UInt64 = 512
    @Option(help: "MiB of guest RAM written before the snapshot.") var touched: UInt64 = 128
    @Option(help: "vCPUs.") var cpus: Int = 2
    @Option(help: "Directory for the snapshot (default: a fresh one under /tmp, removed after).") var dir: String?

    func run() throws {
        try reportingErrors {
            guard touched < memory, runs >= 1 else { throw ValidationError("--touched must be less than --memory, --runs at least 1") }
            let dir = self.dir ?? "/tmp/vireo-bench-snapshot-\(getpid())"
            defer { if self.dir == nil { _ = system("rm -rf '\(dir)'") } }
            let (snapshotMs, stats) = try takeSnapshot(dir)
            let source = try RestoreSource.load(dir)
            let config = try source.machineConfig(serial: .none)
            var samples: [Double] = []
            var builds: [Double] = []
            let wallStart = monotonicNanos()
            for _ in 0..<runs {
                let (total, build) = try restoreOnce(dir: dir, config: config)
                samples.append(total); builds.append(build)
            }
            builds.sort()
            let wall = Double(monotonicNanos() - wallStart) / 1e9
            samples.sort()
            let p50 = samples[samples.count / 2]
            let p99 = samples[min(samples.count - 1, Int(Double(samples.count) * 0.99))]
            _ = source
            let after = try faultsAfterRestore()
            print("restore_us_p50=\(Int(p50)) restore_us_p99=\(Int(p99)) clones_per_s=\(Int(Double(runs) / wall)) "
                  + "build_us_p50=\(Int(builds[builds.count / 2])) "
                  + "snapshot_ms=\(snapshotMs) snapshot_memory_bytes=\(stats.pagesWritten * 4096) snapshot_state_bytes=\(stats.stateBytes) "
                  + "vcpus=\(cpus) memory_mib=\(memory) touched_mib=\(touched)")
            print("after_restore_faults=\(after.faults) after_restore_pass_ms=\(Int(after.firstPassMs.rounded())) steady_pass_ms=\(String(format: "%.1f", after.steadyPassMs)) "
                  + "steady_pass_faults=\(after.steadyFaults) dirty_mib=\(after.mib)")
        }
    }

    /// The machine to save: PIO loop (forever, in effect), `touched` MiB written from 64 MiB up.
    func takeSnapshot(_ dir: String) throws -> (ms: UInt64, stats: SnapshotStats) {
        let machine = try Machine(config: MachineConfig(boot: .probe(.pioLoop(iterations: 1 << 60)), cpus: cpus, memorySize: memory << 20, serial: .none))
        var rng = SystemRandomNumberGenerator()
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        for mib in 0..<touched {
            for i in stride(from: 0, to: chunk.count, by: 8) { chunk.withUnsafeMutableBytes { $0.storeBytes(of: rng.next() as UInt64, toByteOffset: i, as: UInt64.self) } }
            try machine.memory.write(chunk, at: (64 + mib) << 20)
        }
        let done = Mutex<Bool>(false)
        let thread = Thread { _ = machine.run(); done.withLock { $0 = true } }
        thread.start()
        while machine.probeFirstLoopExitNanos == nil { usleep(100) }
        guard machine.pauseGate.pause(vcpus: machine.vcpus, stop: machine.stop) else { throw VireoError(.internalError, "the vCPUs did not pause") }
        let t0 = monotonicNanos()
        let stats = try machine.writeSnapshot(to: dir)
        let ms = (monotonicNanos() - t0) / 1_000_000
        machine.stop.request(.signal(SIGTERM))
        machine.pauseGate.resume()
        while !done.withLock({ $0 }) { usleep(1000) }
        return (ms, stats)
    }

    /// What a restored VM pays later: its RAM maps the memory file copy-on-write, so the first
    /// write to each page after the restore faults (a page-cache lookup and a copy); pages the
    /// VM never touches cost nothing. A 1-vCPU `dirty` probe (it writes every page of its RAM
    /// from 2 MiB up, pass after pass) is saved mid-run and restored; counted from the restore
    /// until the second pass after it ends (by then every page was written once): the
    /// process's page faults; then the time of that full pass beside the next one (steady
    /// state, nothing left to fault) and that pass's faults.
    func faultsAfterRestore() throws -> (faults: Int, firstPassMs: Double, steadyPassMs: Double, steadyFaults: Int, mib: UInt64) {
        let dir = (self.dir ?? "/tmp/vireo-bench-snapshot-\(getpid())") + "-dirty"
        defer { _ = system("rm -rf '\(dir)'") }
        let mib = min(memory, 256)
        let warm = Mutex<UInt64>(0)
        let source = try Machine(config: MachineConfig(boot: .probe(.dirty(passes: 0)), cpus: 1, memorySize: mib << 20, serial: .none),
                                 onProbePass: { pass in warm.withLock { $0 = pass } })
        let done = Mutex<Bool>(false)
        let thread = Thread { _ = source.run(); done.withLock { $0 = true } }
        thread.start()
        while warm.withLock({ $0 }) < 2 { usleep(1000) }
        guard source.pauseGate.pause(vcpus: source.vcpus, stop: source.stop) else { throw VireoError(.internalError, "the vCPUs did not pause") }
        _ = try source.writeSnapshot(to: dir)
        source.stop.request(.signal(SIGTERM))
        source.pauseGate.resume()
        while !done.withLock({ $0 }) { usleep(1000) }

        @Sendable func faults() -> Int {
            var u = rusage()
            getrusage(RUSAGE_SELF.rawValue, &u)
            return u.ru_minflt + u.ru_majflt
        }
        // (monotonic ns, process faults) at each pass end after the restore
        let marks = Mutex<[(UInt64, Int)]>([])
        let restoring = try RestoreSource.load(dir)
        let f0 = faults()
        let t0 = monotonicNanos()
        let machine = try Machine(config: try restoring.machineConfig(serial: .none), onProbePass: { _ in
            let mark = (monotonicNanos(), faults())
            marks.withLock { $0.append(mark) }
        }, restoring: restoring)
        let ended = Mutex<Bool>(false)
        let runner = Thread { _ = machine.run(); ended.withLock { $0 = true } }
        runner.start()
        while marks.withLock({ $0.count }) < 3, !ended.withLock({ $0 }) { usleep(1000) }
        machine.stop.request(.signal(SIGTERM))
        while !ended.withLock({ $0 }) { usleep(1000) }
        let m = marks.withLock { $0 }
        guard m.count >= 3 else { throw VireoError(.internalError, "the restored dirty probe ended after \(m.count) passes") }
        _ = t0
        return (m[1].1 - f0, Double(m[1].0 - m[0].0) / 1e6, Double(m[2].0 - m[1].0) / 1e6, m[2].1 - m[1].1, mib)
    }

    /// Microseconds from the start of the restore to the first guest exit after it.
    /// Also returns the part spent building the machine (state parsed, KVM VM and vCPUs made
    /// and loaded, RAM mapped) before its threads start.
    func restoreOnce(dir: String, config: MachineConfig) throws -> (total: Double, build: Double) {
        let t0 = monotonicNanos()
        let source = try RestoreSource.load(dir)
        let machine = try Machine(config: config, restoring: source)
        let built = monotonicNanos()
        let done = Mutex<Bool>(false)
        let thread = Thread { _ = machine.run(); done.withLock { $0 = true } }
        thread.start()
        var first: UInt64?
        while first == nil { first = machine.probeFirstLoopExitNanos; if first == nil { sched_yield() } }
        machine.stop.request(.signal(SIGTERM))
        while !done.withLock({ $0 }) { usleep(200) }
        return (Double((first ?? t0) - t0) / 1000, Double(built - t0) / 1000)
    }
}
