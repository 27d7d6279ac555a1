import Synchronization

/// Exit counters of one vCPU, written by its own thread, readable from any.
public final class VCPUStats: Sendable {
    public let pioExits = Atomic<UInt64>(0)
    public let mmioExits = Atomic<UInt64>(0)
    public let otherExits = Atomic<UInt64>(0)
    /// Guest accesses to guest-physical addresses with no RAM and no device.
    public let unmappedAccesses = Atomic<UInt64>(0)

    public init() {}

    @inline(__always) func bump(_ a: borrowing Atomic<UInt64>) { a.add(1, ordering: .relaxed) }
}
