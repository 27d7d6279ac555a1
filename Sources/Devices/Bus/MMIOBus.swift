import VireoSupport

/// Guest-physical MMIO space, accesses of 1, 2, 4 or 8 bytes. Unknown addresses read as
/// all-ones and ignore writes (counted in `statistics`).
/// Concurrency: see `AddressBus` (thread-safe; devices are called outside the bus lock).
public final class MMIOBus: Sendable {
    public let core = AddressBus(name: "MMIO bus", maxAddress: UInt64.max, allowedWidths: [1, 2, 4, 8])
    public init() {}

    public func register(_ device: any BusDevice, address: UInt64, length: UInt64, origin: UInt64? = nil, name: String) throws {
        try core.register(device, base: address, length: length, origin: origin, name: name)
    }

    @discardableResult
    public func unregister(address: UInt64) -> Bool { core.unregister(base: address) }

    /// Handles a KVM_EXIT_MMIO read. Returns whether a device decoded the address.
    @discardableResult
    public func read(address: UInt64, data: UnsafeMutableRawBufferPointer) -> Bool { core.read(address, data) }

    @discardableResult
    public func write(address: UInt64, data: UnsafeRawBufferPointer) -> Bool { core.write(address, data) }

    /// Convenience for tests and simple callers: an access of `width` bytes as an integer.
    public func read(address: UInt64, width: Int) -> UInt64 { core.read(address, width: width) }

    public func write(address: UInt64, width: Int, value: UInt64) { core.write(address, width: width, value: value) }

    public var statistics: AddressBus.Statistics { core.statistics }
}
