import VireoSupport

/// The x86 port-I/O space (0x0000...0xFFFF), accesses of 1, 2 or 4 bytes.
/// Unknown ports read as all-ones and ignore writes; both are counted in `statistics`.
/// Concurrency: see `AddressBus` (thread-safe; devices are called outside the bus lock).
public final class PortIOBus: Sendable {
    public let core = AddressBus(name: "port I/O bus", maxAddress: 0xFFFF, allowedWidths: [1, 2, 4])
    public init() {}

    public func register(_ device: any BusDevice, port: UInt16, count: UInt16, origin: UInt16? = nil, name: String) throws {
        try core.register(device, base: UInt64(port), length: UInt64(count), origin: origin.map(UInt64.init), name: name)
    }

    /// Handles a KVM_EXIT_IO read of `data.count` bytes. Returns whether a device decoded the port.
    @discardableResult
    public func read(port: UInt16, data: UnsafeMutableRawBufferPointer) -> Bool { core.read(UInt64(port), data) }

    @discardableResult
    public func write(port: UInt16, data: UnsafeRawBufferPointer) -> Bool { core.write(UInt64(port), data) }

    /// Convenience for tests and simple callers: an access of `width` bytes as an integer.
    public func read(port: UInt16, width: Int) -> UInt64 { core.read(UInt64(port), width: width) }

    public func write(port: UInt16, width: Int, value: UInt64) { core.write(UInt64(port), width: width, value: value) }

    public var statistics: AddressBus.Statistics { core.statistics }
}
