import Devices
import KVM
import Synchronization
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// The probe guest's devices: the control, marker and loop ports, and a sink MMIO page.
final class ProbeDevices: ExitHandler, @unchecked Sendable {
    let stop: StopSignal
    let mmioSink: UInt64
    /// CLOCK_MONOTONIC nanoseconds at which the parent started this process (bench harness), if given.
    let benchStartNanos: UInt64?
    let firstInstructionNanos = Atomic<UInt64>(0)
    let passes = Atomic<UInt64>(0)
    /// When the first exit on the loop port was handled (a restored PIO-loop machine's first
    /// guest instruction after the restore; `vireo bench snapshot`).
    let firstLoopExitNanos = Atomic<UInt64>(0)
    /// Called on every completed dirty pass (count so far).
    let onPass: (@Sendable (UInt64) -> Void)?
    /// Where other exits go (the PCI bus of a probe image with virtio devices). Set before
    /// the vCPUs start, never changed afterwards.
    var fallback: ExitHandler?
    /// COM1 of the echo workload (nil otherwise); the idle port waits for its input.
    var serial: Serial16550?
    /// The pattern workload (set before the vCPUs start): its gate and verify counters.
    var patternWorkload = false
    /// Whether it rewrites a hot set (then the gate answers at once; otherwise it idles ~20 ms).
    var patternHot = false
    let patternFilled = Atomic<Bool>(false)
    let hotPasses = Atomic<UInt64>(0)
    let verifyRequests = Atomic<UInt64>(0)
    let verifyServed = Atomic<UInt64>(0)
    let verifyPasses = Atomic<UInt64>(0)
    /// Pages found different, summed over every verify pass.
    let badPages = Atomic<UInt64>(0)
    let verifyStartNanos = Atomic<UInt64>(0)
    let lastVerifyMicros = Atomic<UInt64>(0)

    /// Holds a `dirty-rate` guest to its rate (nil for other workloads).
    let pacer: DirtyPacer?

    init(stop: StopSignal, mmioSink: UInt64, benchStartNanos: UInt64?, onPass: (@Sendable (UInt64) -> Void)?, dirtyBytesPerSecond: UInt64? = nil) {
        self.pacer = dirtyBytesPerSecond.map { DirtyPacer(bytesPerSecond: $0) }
        self.stop = stop
        self.mmioSink = mmioSink
        self.benchStartNanos = benchStartNanos
        self.onPass = onPass
    }

    func handlePortIO(_ io: IOExit, vcpu: Int) -> Bool {
        switch io.port {
        case ProbeGuest.loopPort:
            if firstLoopExitNanos.load(ordering: .relaxed) == 0 { firstLoopExitNanos.store(monotonicNanos(), ordering: .relaxed) }
            return true
        case ProbeGuest.markerPort:
            guard io.isWrite, let marker = io.data.first else { return true }
            if marker == 1 {
                let now = monotonicNanos()
                firstInstructionNanos.store(now, ordering: .relaxed)
                if let t0 = benchStartNanos, now >= t0 {
                    writeStderrLine("first_instruction_us=\((now - t0) / 1000)")
                }
            } else if marker == 3 {
                patternFilled.store(true, ordering: .releasing)
            } else if marker == 2 {
                let n = passes.add(1, ordering: .relaxed).newValue
                onPass?(n)
            } else if marker == 4, let pacer, passes.load(ordering: .relaxed) >= 1 {
                // The first pass (all of RAM touched) runs unpaced; the rest at the set rate.
                pacer.mebibyteWritten(stop: stop)
            }
            return true
        case ProbeGuest.idlePort:
            guard !io.isWrite, let serial else { return fallback?.handlePortIO(io, vcpu: vcpu) ?? false }
            var waitedMs = 0
            while serial.pendingInput == 0 && waitedMs < 20 && !stop.isStopping {
                usleep(1000)
                waitedMs += 1
            }
            for i in io.data.indices { io.data[i] = 0 }
            return true
        case ProbeGuest.gatePort where patternWorkload:
            guard !io.isWrite else { return true }
            for i in io.data.indices { io.data[i] = 0 }
            var waitedMs = 0
            while true {
                let served = verifyServed.load(ordering: .acquiring)
                if verifyRequests.load(ordering: .acquiring) > served {
                    verifyServed.store(served + 1, ordering: .releasing)
                    verifyStartNanos.store(monotonicNanos(), ordering: .releasing)
                    if let first = io.data.indices.first { io.data[first] = 1 }
                    return true
                }
                if patternHot || waitedMs >= 20 || stop.isStopping { break }
                usleep(1000)
                waitedMs += 1
            }
            hotPasses.add(1, ordering: .relaxed)
            return true
        case ProbeGuest.verifyPort where patternWorkload:
            guard io.isWrite else { return true }
            var value: UInt64 = 0
            for (i, b) in io.data.prefix(4).enumerated() { value |= UInt64(b) << (8 * UInt64(i)) }
            badPages.add(value, ordering: .acquiringAndReleasing)
            let t0 = verifyStartNanos.load(ordering: .acquiring)
            lastVerifyMicros.store((monotonicNanos() &- t0) / 1000, ordering: .releasing)
            verifyPasses.add(1, ordering: .acquiringAndReleasing)
            return true
        case ProbeGuest.controlPort:
            if io.isWrite { stop.request(.probeDone) }
            return true
        case ProbeGuest.reportPort:
            guard io.isWrite else { return true }
            var value: UInt64 = 0
            for (i, b) in io.data.prefix(4).enumerated() { value |= UInt64(b) << (8 * UInt64(i)) }
            let line = "probe_report value=\(value) ns=\(monotonicNanos())\n"
            _ = line.withCString { write(1, $0, strlen($0)) }
            return true
        default:
            return fallback?.handlePortIO(io, vcpu: vcpu) ?? false
        }
    }

    func handleMMIO(_ mmio: MMIOExit, vcpu: Int) -> Bool {
        guard mmio.address >= mmioSink, mmio.address < mmioSink &+ 4096 else {
            return fallback?.handleMMIO(mmio, vcpu: vcpu) ?? false
        }
        if !mmio.isWrite { for i in mmio.data.indices { mmio.data[i] = 0 } }
        return true
    }
}

/// Paces a `dirty-rate` probe: after each MiB the guest reports, its vCPU waits until the time
/// that MiB is due at the set rate. A guest held back (paused, migrating, descheduled) for
/// more than 100 ms starts a new schedule rather than catching up in a burst.
final class DirtyPacer: @unchecked Sendable {
    let nanosPerMiB: UInt64
    private let state = Mutex<(start: UInt64, mib: UInt64)>((0, 0))

    init(bytesPerSecond: UInt64) {
        nanosPerMiB = max(1, (1 << 20) * 1_000_000_000 / max(1, bytesPerSecond))
    }

    /// Called on the vCPU thread at each MiB marker; sleeps while the guest is ahead.
    func mebibyteWritten(stop: StopSignal) {
        let now = monotonicNanos()
        let due: UInt64 = state.withLock { s in
            if s.start == 0 { s = (now, 0) }
            s.mib &+= 1
            let (offset, o) = s.mib.multipliedReportingOverflow(by: nanosPerMiB)
            let due = o ? UInt64.max : s.start &+ offset
            if now > due &+ 100_000_000 { s = (now, 0); return now }
            return due
        }
        if due > now, !stop.isStopping { usleep(UInt32(min(due - now, 1_000_000_000) / 1000)) }
    }
}
