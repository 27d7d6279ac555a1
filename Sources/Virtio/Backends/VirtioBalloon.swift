import GuestMemory
import Synchronization

/// virtio-balloon (type 5): the guest gives pages back to the host.
///
/// Queues, in the order the driver numbers them (absent ones are skipped): inflateq, deflateq,
/// statsq (VIRTIO_BALLOON_F_STATS_VQ), reporting_vq (VIRTIO_BALLOON_F_REPORTING).
/// * inflate: device-readable arrays of little-endian 32-bit page frame numbers (4 KiB pages);
///   each page is discarded on the host (`GuestMemory.discard`: MADV_DONTNEED, or MADV_REMOVE
///   for memfd memory), so the VMM's resident memory drops. PFNs outside guest RAM are ignored.
/// * deflate: acknowledged; the pages fault back in (zeroed) when the guest touches them.
/// * stats: the driver keeps one buffer of (u16 tag, u64 value) pairs queued; the device holds
///   it and returns it (`requestStats`) when it wants fresh numbers.
/// * free page reporting: device-writable ranges of free guest memory, discarded like inflated
///   pages and returned with length 0.
///
/// Config space: num_pages (target, device-written), actual (driver-written).
/// Concurrency: queue work under the transport's back-end lock; the target, `actual`, the stats
/// and the interrupt handle live in a `Mutex` because the VMM changes the target from its own
/// thread.
public final class VirtioBalloon: VirtioDevice, @unchecked Sendable {
    public enum Feature {
        public static let statsQueue: UInt64 = 1 << 1
        public static let deflateOnOOM: UInt64 = 1 << 2
        public static let reporting: UInt64 = 1 << 5
    }
    public enum QueueRole: Sendable, Equatable { case inflate, deflate, stats, reporting }
    public static let pageSize: UInt64 = 4096

    public let deviceType = VirtioDeviceType.balloon
    public let deviceFeatures: UInt64
    public let queueMaxSizes: [UInt16]
    public let configSize = 16

    private struct Shared {
        var targetPages: UInt32 = 0
        var actualPages: UInt32 = 0
        var stats: [UInt16: UInt64] = [:]
        var statsUpdates: UInt64 = 0
        var interrupt: (any VirtioInterrupt)?
        var wantStats = false
        var statsQueue: Int?
    }
    private let shared = Mutex(Shared())
    private var roles: [QueueRole?] = []
    private var queues: [VirtqueueSplit?] = []
    private var memory: GuestMemory?
    private var interrupt: (any VirtioInterrupt)?
    private var statsHead: UInt16?
    /// Pages discarded so far (inflate + reporting), for statistics and tests.
    public private(set) var pagesDiscarded: UInt64 = 0
    public private(set) var pagesDeflated: UInt64 = 0

    public init(targetPages: UInt32 = 0, stats: Bool = false, deflateOnOOM: Bool = false, reporting: Bool = false, queueSize: UInt16 = 128) {
        var f: UInt64 = 0
        if stats { f |= Feature.statsQueue }
        if deflateOnOOM { f |= Feature.deflateOnOOM }
        if reporting { f |= Feature.reporting }
        deviceFeatures = f
        queueMaxSizes = Array(repeating: queueSize, count: 2 + (stats ? 1 : 0) + (reporting ? 1 : 0))
        shared.withLock { $0.targetPages = targetPages }
    }

    /// Queue roles for the negotiated `features` (the driver numbers only the queues it uses).
    public static func roles(features: UInt64) -> [QueueRole] {
        var r: [QueueRole] = [.inflate, .deflate]
        if features & Feature.statsQueue != 0 { r.append(.stats) }
        if features & Feature.reporting != 0 { r.append(.reporting) }
        return r
    }

    // MARK: VMM side (any thread)

    /// Sets the number of 4 KiB pages the guest should hand over and tells the driver.
    public func setTarget(pages: UInt32) {
        let irq: (any VirtioInterrupt)? = shared.withLock { s in
            s.targetPages = pages
            return s.interrupt
        }
        irq?.signalConfigChange()
    }

    public var targetPages: UInt32 { shared.withLock { $0.targetPages } }
    /// What the driver reports it holds.
    public var actualPages: UInt32 { shared.withLock { $0.actualPages } }
    /// The latest statistics (tag -> value; tags per virtio 1.2 section 5.5.6.3).
    public var latestStats: [UInt16: UInt64] { shared.withLock { $0.stats } }
    public var statsUpdates: UInt64 { shared.withLock { $0.statsUpdates } }

    /// Asks for fresh statistics at the next processing of the stats queue; returns the queue
    /// index to process, or nil when there is no stats queue.
    public func requestStats() -> Int? {
        shared.withLock { s in
            s.wantStats = s.statsQueue != nil
            return s.statsQueue
        }
    }

    // MARK: VirtioDevice

    public func readConfig(offset: Int, into data: UnsafeMutableRawBufferPointer) {
        var bytes = [UInt8](repeating: 0, count: configSize)
        let (target, actual) = shared.withLock { ($0.targetPages, $0.actualPages) }
        for i in 0..<4 {
            bytes[i] = UInt8(truncatingIfNeeded: target >> (8 * UInt32(i)))
            bytes[4 + i] = UInt8(truncatingIfNeeded: actual >> (8 * UInt32(i)))
        }
        for i in 0..<data.count where offset + i < bytes.count { data[i] = bytes[offset + i] }
    }

    public func writeConfig(offset: Int, data: UnsafeRawBufferPointer) {
        // Only `actual` (bytes 4..<8) is driver-writable.
        shared.withLock { s in
            var v = s.actualPages
            for i in 0..<data.count {
                let at = offset + i
                guard at >= 4, at < 8 else { continue }
                let shift = UInt32(at - 4) * 8
                v = (v & ~(0xFF << shift)) | (UInt32(data[i]) << shift)
            }
            s.actualPages = v
        }
    }

    public func activate(_ activation: VirtioActivation) throws {
        let r = Self.roles(features: activation.features)
        roles = activation.queues.indices.map { $0 < r.count ? r[$0] : nil }
        queues = activation.queues
        memory = activation.memory
        interrupt = activation.interrupt
        statsHead = nil
        let statsQueue = roles.firstIndex(of: .stats)
        shared.withLock { $0.interrupt = activation.interrupt; $0.statsQueue = statsQueue }
    }

    public func reset() {
        roles = []; queues = []; memory = nil; interrupt = nil; statsHead = nil
        shared.withLock { $0.interrupt = nil; $0.actualPages = 0; $0.wantStats = false; $0.statsQueue = nil }
    }

    public func saveState() -> VirtioBackendState {
        let (target, actual) = shared.withLock { ($0.targetPages, $0.actualPages) }
        return .balloon(targetPages: target, actualPages: actual, statsHead: statsHead)
    }

    public func restoreState(_ state: VirtioBackendState) throws {
        guard case let .balloon(target, actual, head) = state else { throw VirtioStateError("a balloon device has no state of kind \(state.kind)") }
        if let head {
            guard let q = roles.firstIndex(of: .stats), let queue = queues[q] else {
                throw VirtioStateError("virtio-balloon: a held stats buffer without a stats queue")
            }
            _ = try queue.walkChain(head: head)
        }
        statsHead = head
        shared.withLock { $0.targetPages = target; $0.actualPages = actual }
    }

    public func processQueue(_ index: Int) throws -> Bool {
        guard index >= 0, index < queues.count, index < roles.count, let queue = queues[index],
              let role = roles[index], let memory, let interrupt else { return false }
        var budget = Int(queue.layout.size) * 2
        var used = false
        var more = false
        if role == .stats, let head = statsHead, shared.withLock({ s in defer { s.wantStats = false }; return s.wantStats }) {
            statsHead = nil
            queue.addUsed(head: head, length: 0)
            used = true
        }
        repeat {
            while let chain = try queue.popAvailableChain() {
                switch role {
                case .inflate, .deflate:
                    guard chain.writable.isEmpty else { throw VirtqueueError.unexpectedBufferDirection("balloon page lists must be device-readable") }
                    var cursor = ChainCursor.reader(chain, memory)
                    let count = min(cursor.remaining / 4, 1 << 20)
                    let pfns = try cursor.readBytes(Int(count) * 4)
                    if role == .inflate { discard(pfns: pfns, memory: memory) } else { pagesDeflated &+= count }
                    queue.addUsed(head: chain.head, length: 0)
                case .stats:
                    guard chain.writable.isEmpty else { throw VirtqueueError.unexpectedBufferDirection("balloon stats must be device-readable") }
                    var cursor = ChainCursor.reader(chain, memory)
                    var stats: [UInt16: UInt64] = [:]
                    var n = 0
                    while cursor.remaining >= 10, n < 64 {
                        let tag = try cursor.read(UInt16.self)
                        stats[tag] = try cursor.read(UInt64.self)
                        n += 1
                    }
                    shared.withLock { $0.stats = stats; $0.statsUpdates &+= 1 }
                    if let old = statsHead { queue.addUsed(head: old, length: 0); used = true }
                    statsHead = chain.head        // held until the next request
                case .reporting:
                    guard chain.readable.isEmpty else { throw VirtqueueError.unexpectedBufferDirection("reported pages must be device-writable") }
                    for seg in chain.writable { discard(address: seg.address, length: UInt64(seg.length), memory: memory) }
                    queue.addUsed(head: chain.head, length: 0)
                }
                if role != .stats { used = true }
                budget -= 1
                if budget == 0 { more = queue.hasAvailable(); break }
            }
        } while !more && budget > 0 && queue.enableNotificationAndCheck()
        if used && queue.needsNotification() { interrupt.signalQueue(index) }
        return more
    }

    /// Discards the listed pages, merging runs of consecutive PFNs into one madvise.
    private func discard(pfns: [UInt8], memory: GuestMemory) {
        var runStart: UInt64 = 0
        var runPages: UInt64 = 0
        func flush() {
            if runPages > 0 { discard(address: runStart &* Self.pageSize, length: runPages &* Self.pageSize, memory: memory) }
            runPages = 0
        }
        var i = 0
        while i + 4 <= pfns.count {
            let pfn = UInt64(pfns[i]) | UInt64(pfns[i + 1]) << 8 | UInt64(pfns[i + 2]) << 16 | UInt64(pfns[i + 3]) << 24
            i += 4
            if runPages > 0, pfn == runStart &+ runPages { runPages += 1; continue }
            flush()
            runStart = pfn
            runPages = 1
        }
        flush()
    }

    private func discard(address: UInt64, length: UInt64, memory: GuestMemory) {
        // Whole pages only; a range outside RAM (or spanning a hole) is ignored, not a fault.
        let start = (address &+ Self.pageSize &- 1) & ~(Self.pageSize &- 1)
        let (end, overflow) = address.addingReportingOverflow(length)
        guard !overflow, start >= address else { return }
        let alignedEnd = end & ~(Self.pageSize &- 1)
        guard alignedEnd > start else { return }
        if (try? memory.discard(at: start, count: alignedEnd &- start)) != nil {
            pagesDiscarded &+= (alignedEnd &- start) / Self.pageSize
        }
    }
}
