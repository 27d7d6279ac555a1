import CLinux
import GuestMemory
import KVM
import Synchronization
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// The seeds' "active memory": how much guest RAM the guest used lately, estimated as the bytes
/// of the pages it *wrote* during the last full sampling window (KVM dirty-page logging, read
/// once per window). Pages the guest only read are invisible to dirty logging, so this is the
/// written working set: a lower bound of the active memory. Compare consumed memory (host pages
/// resident for the VM, which only grows until the host reclaims) and provisioned (configured).
///
/// Runs on its own host thread at the lowest scheduling priority (nice 19); one KVM_GET_DIRTY_LOG
/// per slot per window. KVM write-protects the pages again at each fetch, so each page costs one
/// extra write fault per window in which the guest writes it.
///
/// Sampled (`sampleOneIn` N > 1, needs manual dirty-log protection): each window only a random
/// 1/N of the pages is re-armed (KVM_CLEAR_DIRTY_LOG); the estimate is the fraction of those
/// written, times all of guest RAM. About N times fewer write faults; a statistical estimate
/// (a guest writing k pages is measured from about k/N of them).
public final class ActiveMemorySampler: Sendable {
    public let windowSeconds: UInt32
    /// 1: every page (exact); N (a power of two): a random 1/N of the pages per window.
    public let sampleOneIn: UInt32
    let log: DirtyLog
    /// Seconds to wait before turning logging on with `enableLogging` (0: it is on already).
    let startDelaySeconds: UInt32
    let enableLogging: @Sendable () throws -> Void
    private let state = Mutex(Snapshot())
    /// Per-page write ages for the memory reclaimer, fed from every window's fetch.
    let ages: PageAges

    public struct Snapshot: Sendable, Equatable {
        /// Bytes of guest pages written in the last full window; nil before the first one ended.
        public var activeBytes: UInt64?
        /// How long that window really was (seconds).
        public var lastWindowSeconds: Double?
        public var windowsCompleted: UInt64 = 0
        /// Why sampling stopped (KVM refused a fetch), or nil.
        public var failure: String?
    }

    init(log: DirtyLog, windowSeconds: UInt32, sampleOneIn: UInt32 = 1, startDelaySeconds: UInt32 = 0,
         enableLogging: @escaping @Sendable () throws -> Void = {}) {
        self.log = log
        self.startDelaySeconds = startDelaySeconds
        self.enableLogging = enableLogging
        self.windowSeconds = max(1, windowSeconds)
        self.sampleOneIn = log.manualProtect ? max(1, sampleOneIn) : 1
        self.ages = PageAges(slots: log.slots)
    }

    /// Sleeps until `seconds` passed (true) or a stop was requested (false).
    static func sleep(seconds: UInt32, stop: StopSignal) -> Bool { sleepNanos(UInt64(seconds) * 1_000_000_000, stop: stop) }

    static func sleepNanos(_ nanos: UInt64, stop: StopSignal) -> Bool {
        let deadline = monotonicNanos() + nanos
        var now = monotonicNanos()
        while now < deadline && !stop.isStopping {
            var fd = pollfd(fd: stop.eventFD, events: Int16(POLLIN), revents: 0)
            _ = poll(&fd, 1, Int32(min(UInt64(Int32.max), (deadline - now) / 1_000_000 + 1)))
            now = monotonicNanos()
        }
        return !stop.isStopping
    }

    /// Pages set in both bitmaps.
    static func overlap(_ a: DirtyLog.Bitmap, _ b: DirtyLog.Bitmap) -> Int {
        var n = 0
        for (x, y) in zip(a.slots, b.slots) { for (p, q) in zip(x.words, y.words) { n += (p & q).nonzeroBitCount } }
        return n
    }

    public var snapshot: Snapshot { state.withLock { $0 } }

    /// Set while a live migration owns the dirty log (its fetches would take this sampler's
    /// bits): the sampler skips its windows and starts afresh once it is cleared.
    let suspended = Atomic<Bool>(false)

    /// The thread body: fetch (discarding what the guest wrote before), then once per window
    /// fetch and record the count, until `stop`.
    func run(stop: StopSignal) {
        // Lowest priority: the estimate must never take CPU from the vCPUs or the device loop.
        _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(PauseGate.currentThreadID()), 19)
        var rng = SystemRandomNumberGenerator()
        let totalPages = log.slots.reduce(UInt64(0)) { $0 + $1.size / DirtyLog.pageSize }
        var sample: DirtyLog.Bitmap?
        if startDelaySeconds > 0 {
            guard Self.sleep(seconds: startDelaySeconds, stop: stop) else { return }
        }
        func arm() throws {
            _ = try log.fetch()
            if sampleOneIn > 1 {
                let s = log.randomSample(oneIn: sampleOneIn, using: &rng)
                try log.rearm(s)
                sample = s
            }
        }
        do {
            if startDelaySeconds > 0 { try enableLogging() }
            try arm()
        } catch {
            state.withLock { $0.failure = "\(error)" }
            return
        }
        var start = monotonicNanos()
        var wasSuspended = false
        while !stop.isStopping {
            if suspended.load(ordering: .acquiring) {
                wasSuspended = true
                guard Self.sleepNanos(200_000_000, stop: stop) else { return }
                continue
            }
            if wasSuspended {
                wasSuspended = false
                do { try arm() } catch { state.withLock { $0.failure = "\(error)"; $0.activeBytes = nil }; return }
                start = monotonicNanos()
            }
            let elapsed = monotonicNanos() - start
            let window = UInt64(windowSeconds) * 1_000_000_000
            if elapsed < window {
                guard Self.sleepNanos(window - elapsed, stop: stop) else { return }
            }
            var pages: Int
            do {
                let dirty = try log.fetch()
                if let current = sample {
                    // The written fraction of the sampled pages, scaled to all of RAM.
                    let sampled = current.dirtyPages
                    pages = sampled == 0 ? 0 : Int(UInt64(Self.overlap(dirty, current)) * totalPages / UInt64(sampled))
                    ages.observe(dirty: dirty, observed: current)
                    let next = log.randomSample(oneIn: sampleOneIn, using: &rng)
                    try log.rearm(next)
                    sample = next
                } else {
                    pages = dirty.dirtyPages
                    ages.observe(dirty: dirty, observed: nil)
                }
            } catch {
                state.withLock { $0.failure = "\(error)"; $0.activeBytes = nil }
                return
            }
            let end = monotonicNanos()
            state.withLock {
                $0.activeBytes = UInt64(pages) * DirtyLog.pageSize
                $0.lastWindowSeconds = Double(end - start) / 1e9
                $0.windowsCompleted += 1
            }
            start = end
        }
    }
}

extension Machine {
    /// Turns KVM dirty logging on or off for every guest-RAM slot (same slots, same mappings: a
    /// flags-only change, allowed while vCPUs run).
    static func setDirtyLogging(_ memory: GuestMemory, in vm: VirtualMachine, _ on: Bool) throws {
        for (i, region) in memory.regions.enumerated() {
            try vm.setMemoryRegion(slot: UInt32(i), guestAddress: region.guestBase, size: region.size, host: region.host, logDirtyPages: on)
        }
    }

    /// Maps every guest-RAM region as a KVM memory slot, with dirty logging when `logDirtyPages`.
    /// If KVM refuses dirty logging (the flag on a slot, or the first KVM_GET_DIRTY_LOG), the RAM
    /// is mapped without it and the second value says exactly what failed; the VM still runs.
    static func mapRAM(_ memory: GuestMemory, into vm: VirtualMachine, logDirtyPages: Bool, manualProtect: Bool = false) throws -> (DirtyLog?, String?) {
        let slots = memory.regions.enumerated().map { DirtyLog.Slot(slot: UInt32($0.offset), guestBase: $0.element.guestBase, size: $0.element.size) }
        func map(log: Bool) throws {
            for (s, region) in zip(slots, memory.regions) {
                try vm.setMemoryRegion(slot: s.slot, guestAddress: s.guestBase, size: s.size, host: region.host, logDirtyPages: log)
            }
        }
        guard logDirtyPages else { try map(log: false); return (nil, nil) }
        var failure: String
        var manual = false
        if manualProtect {
            // Sampling needs it; without it the sampler measures every page (exact, dearer).
            do { try DirtyLog.enableManualProtect(on: vm); manual = true } catch {
                DebugLog.log("active-memory sampling unavailable, measuring every page: \(error)")
            }
        }
        do {
            try map(log: true)
            let log = DirtyLog(vm: vm, slots: slots, manualProtect: manual)
            do {
                _ = try log.fetch()
                return (log, nil)
            } catch { failure = "KVM_GET_DIRTY_LOG was refused: \(error)" }
        } catch {
            failure = "KVM_SET_USER_MEMORY_REGION with KVM_MEM_LOG_DIRTY_PAGES was refused: \(error)"
        }
        // Same slots, same addresses: KVM accepts the flag change on an existing slot.
        try map(log: false)
        DebugLog.log("dirty logging unavailable: \(failure)")
        return (nil, failure)
    }

    /// Starts the sampler's thread (nil when there is no sampler or the thread cannot start).
    func startActiveMemorySampler() -> HostThread? {
        guard let sampler = activeMemory else { return nil }
        let stop = self.stop
        return try? HostThread(name: "active-mem") { sampler.run(stop: stop) }
    }
}
