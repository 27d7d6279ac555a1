import GuestMemory

/// virtio-blk (type 2) over a `BlockBackend`: one request queue.
///
/// Requests: IN, OUT, FLUSH, GET_ID, DISCARD, WRITE_ZEROES. A request is a readable 16-byte
/// header (type, reserved, sector), data, and a final device-writable status byte.
/// Structural faults in a chain (no room for header or status, data in the wrong direction) are
/// guest faults and put the device in NEEDS_RESET. Request-level problems (sector range beyond
/// the disk, data not a multiple of 512, writes to a read-only disk, host I/O errors) are answered
/// with VIRTIO_BLK_S_IOERR; unknown types with VIRTIO_BLK_S_UNSUPP.
///
/// Concurrency: called only under the transport's back-end lock; I/O is synchronous on that thread.
public final class VirtioBlock: VirtioDevice {
    public enum Feature {
        public static let sizeMax: UInt64 = 1 << 1
        public static let segMax: UInt64 = 1 << 2
        public static let readOnly: UInt64 = 1 << 5
        public static let blockSize: UInt64 = 1 << 6
        public static let flush: UInt64 = 1 << 9
        public static let discard: UInt64 = 1 << 13
        public static let writeZeroes: UInt64 = 1 << 14
    }
    public enum RequestType {
        public static let read: UInt32 = 0, write: UInt32 = 1, flush: UInt32 = 4, getID: UInt32 = 8
        public static let discard: UInt32 = 11, writeZeroes: UInt32 = 13
    }
    public enum Status { public static let ok: UInt8 = 0, ioError: UInt8 = 1, unsupported: UInt8 = 2 }

    public static let sectorSize: UInt64 = 512
    /// Largest single transfer (bytes) and segment counts we advertise.
    public static let sizeMax: UInt32 = 1 << 20
    public static let maxDiscardSegments: UInt32 = 16
    public static let maxDiscardSectors: UInt32 = 1 << 22

    public let deviceType = VirtioDeviceType.block
    public let queueMaxSizes: [UInt16]
    public let configSize = 60
    public let backend: any BlockBackend

    private var queue: VirtqueueSplit?
    private var memory: GuestMemory?
    private var interrupt: (any VirtioInterrupt)?
    private var scratch = [UInt8](repeating: 0, count: 0)
    public private(set) var requestsCompleted: UInt64 = 0
    /// Per-request I/O counters, readable from any thread.
    public let counters = BlockCounters()
    /// Optional bytes/s + requests/s limits. When it refuses, processing stops with requests
    /// left on the ring; the VMM retries after `limiter.nanosUntilAvailable`.
    public var limiter: RateLimiter?

    public init(backend: any BlockBackend, queueSize: UInt16 = 256) {
        self.backend = backend
        self.queueMaxSizes = [queueSize]
    }

    public var deviceFeatures: UInt64 {
        var f = Feature.sizeMax | Feature.segMax | Feature.blockSize | Feature.flush
        if backend.isReadOnly { f |= Feature.readOnly }
        if backend.supportsDiscard && !backend.isReadOnly { f |= Feature.discard }
        if backend.supportsWriteZeroes && !backend.isReadOnly { f |= Feature.writeZeroes }
        return f
    }

    /// The virtio_blk_config structure.
    public var configBytes: [UInt8] {
        var c = [UInt8](repeating: 0, count: configSize)
        func put(_ v: UInt64, _ at: Int, _ n: Int) { for i in 0..<n { c[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) } }
        put(backend.size / Self.sectorSize, 0, 8)                       // capacity
        put(UInt64(Self.sizeMax), 8, 4)                                 // size_max
        put(UInt64(max(queueMaxSizes[0], 3)) - 2, 12, 4)                        // seg_max: room for header + status
        put(512, 20, 4)                                                 // blk_size
        put(1, 34, 2)                                                   // num_queues
        put(UInt64(Self.maxDiscardSectors), 36, 4)
        put(UInt64(Self.maxDiscardSegments), 40, 4)
        put(1, 44, 4)                                                   // discard_sector_alignment
        put(UInt64(Self.maxDiscardSectors), 48, 4)                      // max_write_zeroes_sectors
        put(UInt64(Self.maxDiscardSegments), 52, 4)
        put(backend.supportsDiscard ? 1 : 0, 56, 1)                     // write_zeroes_may_unmap
        return c
    }

    public func readConfig(offset: Int, into data: UnsafeMutableRawBufferPointer) {
        let c = configBytes
        for i in 0..<data.count { data[i] = offset + i < c.count ? c[offset + i] : 0 }
    }

    public func writeConfig(offset: Int, data: UnsafeRawBufferPointer) {}   // writeback toggling not offered

    public func activate(_ activation: VirtioActivation) throws {
        queue = activation.queues.first ?? nil
        memory = activation.memory
        interrupt = activation.interrupt
    }

    public func reset() {
        queue = nil
        memory = nil
        interrupt = nil
    }

    public func processQueue(_ index: Int) throws -> Bool {
        guard index == 0, let queue, let memory, let interrupt else { return false }
        var budget = Int(queue.layout.size) * 2
        var usedAny = false
        var more = false
        repeat {
            while limiter?.admit() ?? true, let chain = try queue.popAvailableChain() {
                limiter?.consume(bytes: max(chain.readableLength, 16) &- 16 &+ (chain.writableLength > 0 ? chain.writableLength &- 1 : 0))
                let written = try handle(chain, memory)
                queue.addUsed(head: chain.head, length: written)
                requestsCompleted &+= 1
                usedAny = true
                budget -= 1
                if budget == 0 { more = queue.hasAvailable(); break }
            }
            if let limiter, limiter.nanosUntilAvailable > 0 { break }   // throttled: the VMM re-kicks later
        } while !more && budget > 0 && queue.enableNotificationAndCheck()
        if usedAny && queue.needsNotification() { interrupt.signalQueue(0) }
        return more
    }

    /// Runs one request; returns the number of bytes written to the guest (data + status).
    func handle(_ chain: DescriptorChain, _ memory: GuestMemory) throws -> UInt32 {
        guard chain.readableLength >= 16 else { throw VirtqueueError.requestTooShort("virtio-blk header needs 16 readable bytes") }
        guard chain.writableLength >= 1 else { throw VirtqueueError.unexpectedBufferDirection("virtio-blk status byte must be device-writable") }
        var header = ChainCursor.reader(chain, memory)
        let type = try header.read(UInt32.self)
        _ = try header.read(UInt32.self)
        let sector = try header.read(UInt64.self)
        let dataIn = chain.writableLength - 1            // bytes of guest-writable data before the status byte
        let dataOut = chain.readableLength - 16          // bytes of guest data after the header
        var out = ChainCursor.writer(chain, memory)
        var status = Status.ok
        var written: UInt64 = 0

        switch type {
        case RequestType.read:
            guard dataOut == 0 else { throw VirtqueueError.unexpectedBufferDirection("virtio-blk read with device-readable data") }
            guard let offset = checkedRange(sector: sector, bytes: dataIn) else { status = Status.ioError; break }
            var pos = offset
            do {
                try out.advance(dataIn) { buf in
                    try backend.read(at: pos, into: buf)
                    pos &+= UInt64(buf.count)
                }
            } catch let e as VirtqueueError { throw e } catch {
                status = Status.ioError
            }
            written = dataIn
        case RequestType.write:
            guard dataIn == 0 else { throw VirtqueueError.unexpectedBufferDirection("virtio-blk write with device-writable data") }
            guard !backend.isReadOnly, let offset = checkedRange(sector: sector, bytes: dataOut) else { status = Status.ioError; break }
            var pos = offset
            do {
                try header.advance(dataOut) { buf in
                    try backend.write(at: pos, from: UnsafeRawBufferPointer(buf))
                    pos &+= UInt64(buf.count)
                }
            } catch let e as VirtqueueError { throw e } catch {
                status = Status.ioError
            }
        case RequestType.flush:
            do { try backend.flush() } catch { status = Status.ioError }
        case RequestType.getID:
            // A 20-byte, NUL-padded serial, truncated to the buffer.
            var id = Array(backend.identifier.prefix(20))
            id += [UInt8](repeating: 0, count: 20 - id.count)
            let n = Int(min(UInt64(20), dataIn))
            try out.write(Array(id.prefix(n)))
            written = UInt64(n)
        case RequestType.discard, RequestType.writeZeroes:
            status = try discardOrZero(type: type, reader: &header, count: dataOut)
        default:
            status = Status.unsupported
        }
        // The status byte is the last writable byte, whatever was (or was not) transferred.
        try out.skip(dataIn &- out.position)
        try out.write(status)
        count(type: type, status: status, dataBytes: type == RequestType.read ? dataIn : dataOut)
        return UInt32(truncatingIfNeeded: written &+ 1)
    }

    /// One relaxed add per counter: the request by type, and its data bytes when it succeeded.
    private func count(type: UInt32, status: UInt8, dataBytes: UInt64) {
        switch type {
        case RequestType.read:
            counters.readRequests.add(1, ordering: .relaxed)
            if status == Status.ok { counters.readBytes.add(dataBytes, ordering: .relaxed) }
        case RequestType.write:
            counters.writeRequests.add(1, ordering: .relaxed)
            if status == Status.ok { counters.writeBytes.add(dataBytes, ordering: .relaxed) }
        case RequestType.flush:
            counters.flushRequests.add(1, ordering: .relaxed)
        default:
            counters.otherRequests.add(1, ordering: .relaxed)
        }
        if status != Status.ok { counters.errors.add(1, ordering: .relaxed) }
    }

    /// The byte offset of `sector` when `[sector, sector + bytes/512)` is a whole-sector range on the disk.
    private func checkedRange(sector: UInt64, bytes: UInt64) -> UInt64? {
        guard bytes % Self.sectorSize == 0 else { return nil }
        let (offset, o1) = sector.multipliedReportingOverflow(by: Self.sectorSize)
        let (end, o2) = offset.addingReportingOverflow(bytes)
        guard !o1, !o2, end <= backend.size else { return nil }
        return offset
    }

    private func discardOrZero(type: UInt32, reader: inout ChainCursor, count: UInt64) throws -> UInt8 {
        let isDiscard = type == RequestType.discard
        guard isDiscard ? backend.supportsDiscard : backend.supportsWriteZeroes else { return Status.unsupported }
        guard !backend.isReadOnly else { return Status.ioError }
        guard count % 16 == 0, count > 0, count / 16 <= UInt64(Self.maxDiscardSegments) else { return Status.ioError }
        var ranges: [(UInt64, UInt64, Bool)] = []
        for _ in 0..<(count / 16) {
            let sector = try reader.read(UInt64.self)
            let sectors = try reader.read(UInt32.self)
            let flags = try reader.read(UInt32.self)
            if isDiscard && flags != 0 { return Status.unsupported }       // unmap bit only for write-zeroes
            if flags & ~1 != 0 { return Status.unsupported }
            guard sectors <= Self.maxDiscardSectors,
                  let offset = checkedRange(sector: sector, bytes: UInt64(sectors) * Self.sectorSize) else { return Status.ioError }
            ranges.append((offset, UInt64(sectors) * Self.sectorSize, flags & 1 != 0))
        }
        do {
            for (offset, bytes, unmap) in ranges {
                if isDiscard { try backend.discard(at: offset, count: bytes) }
                else { try backend.writeZeroes(at: offset, count: bytes, mayUnmap: unmap) }
            }
        } catch {
            return Status.ioError
        }
        return Status.ok
    }
}
