/// A device that decodes a range of port-I/O or MMIO addresses.
///
/// `offset` is relative to the device's registration origin (usually the start of its range).
/// `data.count` is the access width (1, 2, 4, or 8 for MMIO); multi-byte values are little endian.
/// A read must fill all of `data` (the bus pre-fills it with 0xFF, so a device that leaves bytes
/// untouched reads as all-ones there, like an undriven ISA bus).
///
/// Concurrency: `read`/`write` are called on vCPU threads, possibly on several at once.
/// Implementations protect their own state (see each device's documentation).
public protocol BusDevice: AnyObject, Sendable {
    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer)
    func write(offset: UInt64, data: UnsafeRawBufferPointer)
}

extension UnsafeRawBufferPointer {
    /// The access as a little-endian integer (widths 1...8; extra bytes ignored).
    @inlinable
    public var littleEndianValue: UInt64 {
        var v: UInt64 = 0
        for i in 0..<Swift.min(count, 8) { v |= UInt64(self[i]) << (UInt64(i) &* 8) }
        return v
    }
}

extension UnsafeMutableRawBufferPointer {
    /// Stores the low `count` bytes of `value` little endian.
    @inlinable
    public func storeLittleEndian(_ value: UInt64) {
        for i in 0..<Swift.min(count, 8) { self[i] = UInt8(truncatingIfNeeded: value >> (UInt64(i) &* 8)) }
    }
}
