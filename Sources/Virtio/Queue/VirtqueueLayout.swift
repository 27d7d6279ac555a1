import GuestMemory

/// Where the driver put a split virtqueue, as written to the common configuration registers.
/// Untrusted until `validate` passes.
public struct VirtqueueLayout: Sendable, Equatable {
    public var size: UInt16
    public var descriptorTable: UInt64
    public var availableRing: UInt64
    public var usedRing: UInt64

    public init(size: UInt16, descriptorTable: UInt64, availableRing: UInt64, usedRing: UInt64) {
        self.size = size; self.descriptorTable = descriptorTable
        self.availableRing = availableRing; self.usedRing = usedRing
    }

    public var descriptorTableBytes: UInt64 { 16 * UInt64(size) }
    /// flags + idx + ring[size] + used_event
    public var availableRingBytes: UInt64 { 6 + 2 * UInt64(size) }
    /// flags + idx + ring[size] of 8-byte elements + avail_event
    public var usedRingBytes: UInt64 { 6 + 8 * UInt64(size) }

    /// Checks size (a power of two in 1...maxSize), alignment (16/2/4) and that each part lies
    /// entirely inside one guest RAM region (so a single host pointer covers it).
    public func validate(maxSize: UInt16, memory: GuestMemory) throws {
        guard size > 0, size <= maxSize, size & (size &- 1) == 0 else {
            throw VirtqueueError.invalidQueueSize(size: size, max: maxSize)
        }
        for (part, address, length, align) in [
            ("descriptor table", descriptorTable, descriptorTableBytes, UInt64(16)),
            ("available ring", availableRing, availableRingBytes, 2),
            ("used ring", usedRing, usedRingBytes, 4),
        ] {
            guard address % align == 0 else { throw VirtqueueError.misalignedRing(part: part, address: address) }
            guard memory.contains(address, count: length) else {
                throw VirtqueueError.ringOutsideMemory(part: part, address: address, length: length)
            }
        }
    }
}
