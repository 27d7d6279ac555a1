import GuestMemory

/// Where virtio-net frames go: a TAP device in the VMM (or a test double). Frames carry the
/// 12-byte `virtio_net_hdr_v1` in front, exactly as a TAP with IFF_VNET_HDR and a vnet header
/// size of 12 reads and writes them.
public protocol NetBackend: AnyObject {
    /// Reads one frame (header included) into `buffer`; nil when none is waiting.
    func receive(into buffer: UnsafeMutableRawBufferPointer) throws -> Int?
    /// Sends one frame (header included). Returns false when the backend is full (frame dropped).
    func send(_ frame: UnsafeRawBufferPointer) throws -> Bool
    /// Whether the backend accepts checksum/TSO offloads (TUNSETOFFLOAD).
    var supportsOffloads: Bool { get }
    /// Tells the backend which offloads the guest can receive (TUN_F_* bits).
    func setReceiveOffloads(_ tunFlags: UInt32)
}

/// virtio-net (type 1): receiveq 0, transmitq 1, no control queue, one queue pair.
///
/// Features: MAC, MRG_RXBUF, and when the backend takes offloads, CSUM/GUEST_CSUM and TSO4/6
/// (+ECN) in both directions. At activation the guest-side (GUEST_*) offloads the driver accepted
/// are passed to the backend (TUNSETOFFLOAD), so the TAP never hands the guest a segment it did
/// not ask for.
///
/// Receive: frames are read from the backend into one host buffer and copied into the guest's
/// receive chains. With MRG_RXBUF a frame may span several chains (`num_buffers` in the first
/// header); without it a frame that does not fit one chain is dropped. A frame waiting for
/// buffers stays pending (and so does the backend) until the driver adds buffers.
/// Transmit: a chain's readable bytes (header + frame) are gathered and sent; a chain larger than
/// 64 KiB + header is dropped; a chain with device-writable parts is a guest fault.
///
/// Concurrency: called only under the transport's back-end lock.
public final class VirtioNet: VirtioDevice {
    public enum Feature {
        public static let csum: UInt64 = 1 << 0
        public static let guestCsum: UInt64 = 1 << 1
        public static let mac: UInt64 = 1 << 5
        public static let guestTSO4: UInt64 = 1 << 7
        public static let guestTSO6: UInt64 = 1 << 8
        public static let guestECN: UInt64 = 1 << 9
        public static let hostTSO4: UInt64 = 1 << 11
        public static let hostTSO6: UInt64 = 1 << 12
        public static let hostECN: UInt64 = 1 << 13
        public static let mergeableRxBuffers: UInt64 = 1 << 15
        public static let offloads: UInt64 = csum | guestCsum | guestTSO4 | guestTSO6 | guestECN | hostTSO4 | hostTSO6 | hostECN
    }
    public enum TunOffload {
        public static let csum: UInt32 = 0x01, tso4: UInt32 = 0x02, tso6: UInt32 = 0x04, ecn: UInt32 = 0x08
    }
    public static let headerSize = 12
    /// Largest frame: 64 KiB of GSO payload plus headers, plus the virtio header.
    public static let maxFrame = 65_562

    public let deviceType = VirtioDeviceType.network
    public let deviceFeatures: UInt64
    public let queueMaxSizes: [UInt16]
    public let configSize = 10
    public let mac: [UInt8]
    public let backend: any NetBackend
    public var limiter: RateLimiter?

    private var queues: [VirtqueueSplit?] = []
    private var memory: GuestMemory?
    private var interrupt: (any VirtioInterrupt)?
    private var mergeable = false
    private var rxFrame = [UInt8](repeating: 0, count: VirtioNet.maxFrame)
    private var rxPendingLength: Int?
    private var heldChains: [DescriptorChain] = []
    private var txFrame = [UInt8](repeating: 0, count: VirtioNet.maxFrame)
    public private(set) var framesReceived: UInt64 = 0
    public private(set) var framesSent: UInt64 = 0
    public private(set) var framesDropped: UInt64 = 0
    /// rx/tx frame, byte and drop counters, readable from any thread.
    public let counters = NetCounters()

    public init(backend: any NetBackend, mac: [UInt8], queueSize: UInt16 = 256) {
        self.backend = backend
        self.mac = mac.count == 6 ? mac : [0x02, 0, 0, 0, 0, 1]
        self.queueMaxSizes = [queueSize, queueSize]
        deviceFeatures = Feature.mac | Feature.mergeableRxBuffers | (backend.supportsOffloads ? Feature.offloads : 0)
    }

    /// The TUN_F_* flags for the negotiated guest-side offloads.
    public static func tunOffloads(features f: UInt64) -> UInt32 {
        var t: UInt32 = 0
        if f & Feature.guestCsum != 0 {
            t |= TunOffload.csum
            if f & Feature.guestTSO4 != 0 { t |= TunOffload.tso4 }
            if f & Feature.guestTSO6 != 0 { t |= TunOffload.tso6 }
            if f & Feature.guestECN != 0, t & (TunOffload.tso4 | TunOffload.tso6) != 0 { t |= TunOffload.ecn }
        }
        return t
    }

    public func readConfig(offset: Int, into data: UnsafeMutableRawBufferPointer) {
        let bytes = mac + [1, 0, 1, 0]      // status: LINK_UP; max_virtqueue_pairs: 1
        for i in 0..<data.count where offset + i < bytes.count { data[i] = bytes[offset + i] }
    }
    public func writeConfig(offset: Int, data: UnsafeRawBufferPointer) {}

    public func activate(_ activation: VirtioActivation) throws {
        queues = activation.queues
        memory = activation.memory
        interrupt = activation.interrupt
        mergeable = activation.features & Feature.mergeableRxBuffers != 0
        heldChains = []
        if backend.supportsOffloads { backend.setReceiveOffloads(Self.tunOffloads(features: activation.features)) }
    }

    public func reset() {
        queues = []; memory = nil; interrupt = nil; heldChains = []; rxPendingLength = nil
        if backend.supportsOffloads { backend.setReceiveOffloads(0) }
    }

    public func saveState() -> VirtioBackendState { .net(heldHeads: heldChains.map(\.head)) }

    public func restoreState(_ state: VirtioBackendState) throws {
        guard case let .net(heads) = state else { throw VirtioStateError("a network device has no state of kind \(state.kind)") }
        guard heads.count <= Int(queueMaxSizes[0]) else { throw VirtioStateError("virtio-net: \(heads.count) held receive buffers") }
        guard !heads.isEmpty else { heldChains = []; return }
        guard let queue = queues.first ?? nil else { throw VirtioStateError("virtio-net: held receive buffers without a receive queue") }
        heldChains = try heads.map { try queue.walkChain(head: $0) }
    }

    public func processQueue(_ index: Int) throws -> Bool {
        switch index {
        case 0: return try receive()
        case 1: return try transmit()
        default: return false
        }
    }

    /// Backend -> guest. Returns true when the budget ran out with frames still waiting.
    private func receive() throws -> Bool {
        guard queues.count > 0, let queue = queues[0], let memory, let interrupt else { return false }
        var budget = Int(queue.layout.size)
        var used = false
        defer { if used && queue.needsNotification() { interrupt.signalQueue(0) } }
        while budget > 0 {
            if rxPendingLength == nil {
                if let limiter, !limiter.admit() { return false }     // the VMM re-kicks after the delay
                let n = try rxFrame.withUnsafeMutableBytes { try backend.receive(into: $0) }
                guard let n else { return false }
                guard n > Self.headerSize else { framesDropped &+= 1; counters.rxDrops.add(1, ordering: .relaxed); continue }
                rxPendingLength = n
                limiter?.consume(bytes: UInt64(n))
            }
            guard let length = rxPendingLength else { return false }
            // Gather enough chains for the frame.
            while heldChains.reduce(0, { $0 &+ $1.writableLength }) < UInt64(length) {
                if !mergeable && !heldChains.isEmpty { break }
                guard let chain = try queue.popAvailableChain() else {
                    if queue.enableNotificationAndCheck() { continue }
                    return false                  // wait for the driver's next rx doorbell
                }
                guard chain.readable.isEmpty, chain.writableLength >= UInt64(Self.headerSize) else {
                    throw VirtqueueError.unexpectedBufferDirection("virtio-net receive buffers must be device-writable and hold a header")
                }
                heldChains.append(chain)
            }
            rxPendingLength = nil
            let available = heldChains.reduce(0) { $0 &+ $1.writableLength }
            if available < UInt64(length) {       // non-mergeable and too small: drop, give the chain back empty
                for c in heldChains { queue.addUsed(head: c.head, length: 0) }
                heldChains = []
                framesDropped &+= 1
                counters.rxDrops.add(1, ordering: .relaxed)
                used = true
                continue
            }
            // Chains needed, then num_buffers in the header.
            var needed = 0
            var covered: UInt64 = 0
            while covered < UInt64(length) { covered &+= heldChains[needed].writableLength; needed += 1 }
            rxFrame[10] = UInt8(truncatingIfNeeded: needed)
            rxFrame[11] = UInt8(truncatingIfNeeded: needed >> 8)
            var offset = 0
            for c in heldChains.prefix(needed) {
                var cursor = ChainCursor.writer(c, memory)
                let n = min(Int(cursor.remaining), length - offset)
                try rxFrame.withUnsafeBytes { try cursor.write(UnsafeRawBufferPointer(rebasing: $0[offset..<(offset + n)])) }
                queue.addUsed(head: c.head, length: UInt32(n))
                offset += n
            }
            heldChains.removeFirst(needed)
            framesReceived &+= 1
            counters.rxFrames.add(1, ordering: .relaxed)
            counters.rxBytes.add(UInt64(length - Self.headerSize), ordering: .relaxed)
            used = true
            budget -= 1
        }
        return true
    }

    /// Guest -> backend.
    private func transmit() throws -> Bool {
        guard queues.count > 1, let queue = queues[1], let memory, let interrupt else { return false }
        var budget = Int(queue.layout.size) * 2
        var used = false
        var more = false
        repeat {
            while limiter?.admit() ?? true, let chain = try queue.popAvailableChain() {
                guard chain.writable.isEmpty else {
                    throw VirtqueueError.unexpectedBufferDirection("virtio-net transmit buffers must be device-readable")
                }
                let total = chain.readableLength
                if total > UInt64(Self.headerSize), total <= UInt64(Self.maxFrame) {
                    var cursor = ChainCursor.reader(chain, memory)
                    try txFrame.withUnsafeMutableBytes { try cursor.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<Int(total)])) }
                    limiter?.consume(bytes: total)
                    let sent = try txFrame.withUnsafeBytes { try backend.send(UnsafeRawBufferPointer(rebasing: $0[0..<Int(total)])) }
                    if sent {
                        framesSent &+= 1
                        counters.txFrames.add(1, ordering: .relaxed)
                        counters.txBytes.add(total - UInt64(Self.headerSize), ordering: .relaxed)
                    } else {
                        framesDropped &+= 1
                        counters.txDrops.add(1, ordering: .relaxed)
                    }
                } else {
                    framesDropped &+= 1
                    counters.txDrops.add(1, ordering: .relaxed)
                }
                queue.addUsed(head: chain.head, length: 0)
                used = true
                budget -= 1
                if budget == 0 { more = queue.hasAvailable(); break }
            }
            if let limiter, limiter.nanosUntilAvailable > 0 { break }
        } while !more && budget > 0 && queue.enableNotificationAndCheck()
        if used && queue.needsNotification() { interrupt.signalQueue(1) }
        return more
    }
}
