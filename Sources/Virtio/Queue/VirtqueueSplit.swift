import GuestMemory

/// The device side of one split virtqueue (virtio 1.2 section 2.7) over guest RAM.
///
/// Everything in the rings is guest-written and untrusted: every index is range-checked, every
/// buffer is checked against guest RAM with overflow-safe arithmetic, chains are bounded (loop
/// proof), and any violation throws a `VirtqueueError` without consuming the entry. Nothing here
/// traps on guest input.
///
/// Concurrency: a queue is owned by one device back end and used by one thread at a time (the
/// transport hands it over at activation and calls the back end only under its back-end lock).
/// The guest is the other party; see `MemoryOrdering` for the barrier protocol.
public final class VirtqueueSplit: @unchecked Sendable {
    public enum DescriptorFlags {
        public static let next: UInt16 = 1
        public static let write: UInt16 = 2
        public static let indirect: UInt16 = 4
    }
    /// VIRTQ_AVAIL_F_NO_INTERRUPT
    public static let availNoInterrupt: UInt16 = 1
    /// VIRTQ_USED_F_NO_NOTIFY
    public static let usedNoNotify: UInt16 = 1
    /// Largest indirect table accepted (entries). Linux may exceed the queue size with indirect
    /// descriptors, so the bound is independent of it (QEMU uses the same 1024).
    public static let maxIndirectEntries: UInt32 = 1024

    public let layout: VirtqueueLayout
    public let memory: GuestMemory
    public let eventIndex: Bool
    public let indirectDescriptors: Bool

    private let size: UInt16
    private let desc: UnsafeMutableRawPointer
    private let avail: UnsafeMutableRawPointer
    private let used: UnsafeMutableRawPointer

    /// Next avail ring slot to consume (free-running 16-bit).
    public private(set) var nextAvailable: UInt16 = 0
    /// Next used ring slot to fill (free-running 16-bit), mirrored to `used.idx` on publish.
    public private(set) var nextUsed: UInt16 = 0
    /// `used.idx` when the driver was last considered for notification (event-index protocol).
    private var signalledUsed: UInt16 = 0
    private var signalledValid = false

    /// Where the device stands in the rings: what a snapshot saves beside the layout (the rings
    /// themselves are in guest RAM).
    public struct Position: Codable, Sendable, Equatable {
        public var nextAvailable: UInt16
        public var nextUsed: UInt16
        public var signalledUsed: UInt16
        public var signalledValid: Bool
        public init(nextAvailable: UInt16, nextUsed: UInt16, signalledUsed: UInt16, signalledValid: Bool) {
            self.nextAvailable = nextAvailable; self.nextUsed = nextUsed
            self.signalledUsed = signalledUsed; self.signalledValid = signalledValid
        }
        enum CodingKeys: String, CodingKey {
            case nextAvailable = "next_available", nextUsed = "next_used", signalledUsed = "signalled_used", signalledValid = "signalled_valid"
        }
    }

    public var position: Position {
        Position(nextAvailable: nextAvailable, nextUsed: nextUsed, signalledUsed: signalledUsed, signalledValid: signalledValid)
    }

    /// Continues from a saved position (restore). Any 16-bit values are acceptable: the ring
    /// checks in `popAvailableChain` bound what a bad position can do to a guest fault.
    public func restore(_ p: Position) {
        nextAvailable = p.nextAvailable
        nextUsed = p.nextUsed
        signalledUsed = p.signalledUsed
        signalledValid = p.signalledValid
    }

    /// Validates `layout` and binds the rings. `eventIndex`/`indirectDescriptors` are the
    /// negotiated VIRTIO_F_EVENT_IDX / VIRTIO_F_INDIRECT_DESC.
    public init(layout: VirtqueueLayout, maxSize: UInt16, memory: GuestMemory, eventIndex: Bool, indirectDescriptors: Bool) throws {
        try layout.validate(maxSize: maxSize, memory: memory)
        self.layout = layout
        self.memory = memory
        self.size = layout.size
        self.eventIndex = eventIndex
        self.indirectDescriptors = indirectDescriptors
        // SAFETY: validate() proved each part lies inside one region; the mappings live as long
        // as `memory`, which this queue keeps alive.
        guard let d = try memory.buffer(at: layout.descriptorTable, count: layout.descriptorTableBytes).baseAddress,
              let a = try memory.buffer(at: layout.availableRing, count: layout.availableRingBytes).baseAddress,
              let u = try memory.buffer(at: layout.usedRing, count: layout.usedRingBytes).baseAddress else {
            throw VirtqueueError.invalidQueueSize(size: layout.size, max: maxSize)
        }
        self.desc = d
        self.avail = a
        self.used = u
    }

    // MARK: Raw ring access

    // SAFETY (all accessors): offsets are computed from indices already reduced modulo `size`
    // (or fixed header offsets), so they stay inside the byte counts validated at init.
    @inline(__always) private func load16(_ base: UnsafeMutableRawPointer, _ offset: Int) -> UInt16 {
        UInt16(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
    }
    @inline(__always) private func store16(_ base: UnsafeMutableRawPointer, _ offset: Int, _ v: UInt16) {
        base.storeBytes(of: v.littleEndian, toByteOffset: offset, as: UInt16.self)
    }
    @inline(__always) private func store32(_ base: UnsafeMutableRawPointer, _ offset: Int, _ v: UInt32) {
        base.storeBytes(of: v.littleEndian, toByteOffset: offset, as: UInt32.self)
    }

    private var availFlags: UInt16 { load16(avail, 0) }
    private var availIndex: UInt16 { load16(avail, 2) }
    private func availRing(_ slot: UInt16) -> UInt16 { load16(avail, 4 + 2 * Int(slot % size)) }
    /// used_event lives after the avail ring.
    private var usedEvent: UInt16 { load16(avail, 4 + 2 * Int(size)) }
    /// avail_event lives after the used ring.
    private func setAvailEvent(_ v: UInt16) { store16(used, 4 + 8 * Int(size), v) }

    // MARK: Consuming requests

    /// Whether the driver has made buffers available that we have not consumed.
    public func hasAvailable() -> Bool {
        let idx = availIndex
        MemoryOrdering.acquire()
        return idx != nextAvailable
    }

    /// Takes the next available chain, or nil when the ring is empty. Throws on a malformed
    /// ring or chain (the entry is not consumed; the device should then need a reset).
    public func popAvailableChain() throws -> DescriptorChain? {
        let idx = availIndex
        MemoryOrdering.acquire()
        if idx == nextAvailable { return nil }
        guard idx &- nextAvailable <= size else {
            throw VirtqueueError.availableIndexOutOfRange(availableIndex: idx, lastSeen: nextAvailable)
        }
        let head = availRing(nextAvailable)
        let chain = try walkChain(head: head)
        nextAvailable &+= 1
        return chain
    }

    /// Walks the chain starting at descriptor `head` (exposed for fuzzing and tests).
    public func walkChain(head: UInt16) throws -> DescriptorChain {
        guard head < size else { throw VirtqueueError.headOutOfRange(head: head, size: size) }
        var segments: [DescriptorSegment] = []
        var sawWritable = false
        var index = head
        var steps = 0
        while true {
            steps += 1
            guard steps <= Int(size) else { throw VirtqueueError.chainTooLong(limit: Int(size)) }
            let d = Descriptor(at: desc, index: Int(index))
            if d.flags & DescriptorFlags.indirect != 0 {
                guard indirectDescriptors else { throw VirtqueueError.indirectNotNegotiated }
                guard d.flags & DescriptorFlags.next == 0 else { throw VirtqueueError.indirectWithNext }
                try walkIndirect(d, into: &segments, sawWritable: &sawWritable)
                break
            }
            try append(d, index: index, to: &segments, sawWritable: &sawWritable)
            guard d.flags & DescriptorFlags.next != 0 else { break }
            guard d.next < size else { throw VirtqueueError.nextOutOfRange(next: d.next, tableSize: UInt32(size)) }
            index = d.next
        }
        return DescriptorChain(head: head, segments: segments)
    }

    private func walkIndirect(_ d: Descriptor, into segments: inout [DescriptorSegment], sawWritable: inout Bool) throws {
        guard d.length > 0, d.length % 16 == 0, d.length / 16 <= Self.maxIndirectEntries else {
            throw VirtqueueError.badIndirectTableLength(d.length)
        }
        let count = d.length / 16
        guard let table = try? memory.buffer(at: d.address, count: UInt64(d.length)), let base = table.baseAddress else {
            throw VirtqueueError.indirectTableOutsideMemory(address: d.address, length: d.length)
        }
        var index: UInt32 = 0
        var steps: UInt32 = 0
        while true {
            steps += 1
            guard steps <= count else { throw VirtqueueError.chainTooLong(limit: Int(count)) }
            // SAFETY: index < count, and the table buffer holds count * 16 bytes.
            let e = Descriptor(at: base, index: Int(index))
            guard e.flags & DescriptorFlags.indirect == 0 else { throw VirtqueueError.nestedIndirect }
            try append(e, index: UInt16(truncatingIfNeeded: index), to: &segments, sawWritable: &sawWritable)
            guard e.flags & DescriptorFlags.next != 0 else { break }
            guard UInt32(e.next) < count else { throw VirtqueueError.nextOutOfRange(next: e.next, tableSize: count) }
            index = UInt32(e.next)
        }
    }

    private func append(_ d: Descriptor, index: UInt16, to segments: inout [DescriptorSegment], sawWritable: inout Bool) throws {
        let writable = d.flags & DescriptorFlags.write != 0
        if writable { sawWritable = true } else if sawWritable {
            throw VirtqueueError.readableAfterWritable(index: index)
        }
        if d.length > 0 {
            let (_, overflow) = d.address.addingReportingOverflow(UInt64(d.length))
            guard !overflow, memory.contains(d.address, count: UInt64(d.length)) else {
                throw VirtqueueError.bufferOutsideMemory(address: d.address, length: d.length)
            }
        }
        segments.append(DescriptorSegment(address: d.address, length: d.length, isWritable: writable))
    }

    // MARK: Returning buffers

    /// Returns chain `head` to the driver with `length` bytes written, and publishes `used.idx`.
    public func addUsed(head: UInt16, length: UInt32) {
        let slot = Int(nextUsed % size)
        store32(used, 4 + 8 * slot, UInt32(head))
        store32(used, 8 + 8 * slot, length)
        nextUsed &+= 1
        MemoryOrdering.release()
        store16(used, 2, nextUsed)
    }

    /// Whether the driver wants an interrupt for the buffers used since the last call
    /// (VIRTQ_AVAIL_F_NO_INTERRUPT, or `used_event` with VIRTIO_F_EVENT_IDX).
    public func needsNotification() -> Bool {
        MemoryOrdering.full()
        let new = nextUsed
        if eventIndex {
            let old = signalledUsed
            let valid = signalledValid
            signalledUsed = new
            signalledValid = true
            // vring_need_event: notify when used_event lies in [old, new).
            return !valid || (new &- usedEvent &- 1) < (new &- old)
        }
        return availFlags & Self.availNoInterrupt == 0
    }

    /// Tells the driver where we will look next (`avail_event`) and reports whether more buffers
    /// arrived meanwhile. Back ends loop `repeat { drain } while queue.enableNotificationAndCheck()`.
    public func enableNotificationAndCheck() -> Bool {
        if eventIndex { setAvailEvent(nextAvailable) }
        MemoryOrdering.full()
        return availIndex != nextAvailable
    }

    /// Asks the driver not to notify (VIRTQ_USED_F_NO_NOTIFY; without event index only).
    public func setNotificationsSuppressed(_ suppressed: Bool) {
        guard !eventIndex else { return }
        store16(used, 0, suppressed ? Self.usedNoNotify : 0)
    }
}

/// One 16-byte descriptor, read field by field from guest memory.
struct Descriptor {
    let address: UInt64
    let length: UInt32
    let flags: UInt16
    let next: UInt16

    /// SAFETY: the caller guarantees `base + 16 * index + 16` is inside a validated buffer.
    @inline(__always)
    init(at base: UnsafeMutableRawPointer, index: Int) {
        let p = base + 16 * index
        address = UInt64(littleEndian: p.loadUnaligned(as: UInt64.self))
        length = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
        flags = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 12, as: UInt16.self))
        next = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 14, as: UInt16.self))
    }
}
