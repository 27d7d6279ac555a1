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

    /// Convenience for tests and simple callers: an access of `width` (1, 2, 4) bytes.
    public func read(port: UInt16, width: Int) -> UInt64 {
        let w = max(1, min(width, 8))
        return withUnsafeTemporaryAllocation(byteCount: w, alignment: 8) { b in
            read(port: port, data: UnsafeMutableRawBufferPointer(rebasing: b[0..<w]))
            return UnsafeRawBufferPointer(b).littleEndianValue & (w >= 8 ? ~0 : (UInt64(1) << (UInt64(w) * 8)) &- 1)
        }
    }

    public func write(port: UInt16, width: Int, value: UInt64) {
        let w = max(1, min(width, 8))
        withUnsafeTemporaryAllocation(byteCount: w, alignment: 8) { b in
            let v = UnsafeMutableRawBufferPointer(rebasing: b[0..<w])
            v.storeLittleEndian(value)
            write(port: port, data: UnsafeRawBufferPointer(v))
        }
    }

    public var statistics: AddressBus.Statistics { core.statistics }
}
