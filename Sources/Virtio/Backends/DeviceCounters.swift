import Synchronization

/// A virtio-blk device's I/O counters since the VMM started (a device reset does not clear them).
///
/// Written on the device (event-loop) thread, one relaxed atomic add per counter a request
/// touches; read from any thread (the control socket's). Bytes are data bytes moved between the
/// guest and the disk image (not headers or status bytes). A request answered with IOERR counts
/// as an error, not as bytes moved; an unsupported request type counts as an error too.
public final class BlockCounters: Sendable {
    public let readRequests = Atomic<UInt64>(0)
    public let writeRequests = Atomic<UInt64>(0)
    public let flushRequests = Atomic<UInt64>(0)
    /// Discard, write-zeroes and get-id requests.
    public let otherRequests = Atomic<UInt64>(0)
    public let readBytes = Atomic<UInt64>(0)
    public let writeBytes = Atomic<UInt64>(0)
    /// Requests completed with a status other than OK.
    public let errors = Atomic<UInt64>(0)

    public init() {}

    public struct Snapshot: Sendable, Equatable {
        public var readRequests, writeRequests, flushRequests, otherRequests, readBytes, writeBytes, errors: UInt64
        public init(readRequests: UInt64, writeRequests: UInt64, flushRequests: UInt64, otherRequests: UInt64,
                    readBytes: UInt64, writeBytes: UInt64, errors: UInt64) {
            self.readRequests = readRequests; self.writeRequests = writeRequests; self.flushRequests = flushRequests
            self.otherRequests = otherRequests; self.readBytes = readBytes; self.writeBytes = writeBytes; self.errors = errors
        }
    }

    public var snapshot: Snapshot {
        Snapshot(readRequests: readRequests.load(ordering: .relaxed), writeRequests: writeRequests.load(ordering: .relaxed),
                 flushRequests: flushRequests.load(ordering: .relaxed), otherRequests: otherRequests.load(ordering: .relaxed),
                 readBytes: readBytes.load(ordering: .relaxed), writeBytes: writeBytes.load(ordering: .relaxed),
                 errors: errors.load(ordering: .relaxed))
    }
}

/// A virtio-net device's frame counters since the VMM started (a device reset does not clear them).
///
/// rx is host -> guest (frames the VMM put into the guest's receive buffers), tx is guest -> host
/// (frames handed to the TAP). Bytes are Ethernet frame bytes, without the 12-byte virtio-net
/// header. Drops are frames the VMM discarded: rx frames that were runts or did not fit the
/// guest's buffers (without mergeable buffers), tx frames that were runts, larger than 64 KiB, or
/// refused by a full TAP. A frame waiting for the guest to post receive buffers is not a drop (it
/// stays queued in the TAP).
public final class NetCounters: Sendable {
    public let rxFrames = Atomic<UInt64>(0)
    public let rxBytes = Atomic<UInt64>(0)
    public let rxDrops = Atomic<UInt64>(0)
    public let txFrames = Atomic<UInt64>(0)
    public let txBytes = Atomic<UInt64>(0)
    public let txDrops = Atomic<UInt64>(0)

    public init() {}

    public struct Snapshot: Sendable, Equatable {
        public var rxFrames, rxBytes, rxDrops, txFrames, txBytes, txDrops: UInt64
        public init(rxFrames: UInt64, rxBytes: UInt64, rxDrops: UInt64, txFrames: UInt64, txBytes: UInt64, txDrops: UInt64) {
            self.rxFrames = rxFrames; self.rxBytes = rxBytes; self.rxDrops = rxDrops
            self.txFrames = txFrames; self.txBytes = txBytes; self.txDrops = txDrops
        }
    }

    public var snapshot: Snapshot {
        Snapshot(rxFrames: rxFrames.load(ordering: .relaxed), rxBytes: rxBytes.load(ordering: .relaxed),
                 rxDrops: rxDrops.load(ordering: .relaxed), txFrames: txFrames.load(ordering: .relaxed),
                 txBytes: txBytes.load(ordering: .relaxed), txDrops: txDrops.load(ordering: .relaxed))
    }
}
