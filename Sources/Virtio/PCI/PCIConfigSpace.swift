/// A 256-byte type-0 PCI configuration header plus capability area, with per-bit write masks.
///
/// Guest writes only change bits set in `writableMask` (and clear bits set in `clearOnWriteMask`
/// where the guest writes 1), so read-only registers stay read-only and BAR sizing works by
/// construction: a BAR's mask covers only its address bits, so writing all-ones reads back
/// `~(size - 1)` plus the read-only type bits.
///
/// A value type; owners keep it behind their own lock.
public struct PCIConfigSpace: Sendable {
    public static let size = 256

    public enum Offset {
        public static let vendorID = 0x00, deviceID = 0x02, command = 0x04, status = 0x06
        public static let revision = 0x08, progIF = 0x09, subclass = 0x0A, classCode = 0x0B
        public static let headerType = 0x0E, bar0 = 0x10, subsystemVendorID = 0x2C, subsystemID = 0x2E
        public static let capabilitiesPointer = 0x34, interruptLine = 0x3C, interruptPin = 0x3D
    }

    public enum Command {
        public static let ioSpace: UInt16 = 1 << 0
        public static let memorySpace: UInt16 = 1 << 1
        public static let busMaster: UInt16 = 1 << 2
        public static let interruptDisable: UInt16 = 1 << 10
    }

    public enum BARKind: Sendable, Equatable {
        case memory32
        case memory64
    }

    public struct BAR: Sendable, Equatable {
        public var index: Int
        public var size: UInt64
        public var kind: BARKind
        public var prefetchable: Bool
    }

    public private(set) var bytes = [UInt8](repeating: 0, count: size)
    public private(set) var writableMask = [UInt8](repeating: 0, count: size)
    public private(set) var clearOnWriteMask = [UInt8](repeating: 0, count: size)
    public private(set) var bars: [BAR] = []
    private var lastCapability: Int? = nil
    private var nextCapabilityOffset = 0x40

    public init(vendorID: UInt16, deviceID: UInt16, revision: UInt8, classCode: UInt8, subclass: UInt8, progIF: UInt8,
                subsystemVendorID: UInt16 = 0, subsystemID: UInt16 = 0, interruptPin: UInt8 = 0) {
        set16(Offset.vendorID, vendorID)
        set16(Offset.deviceID, deviceID)
        set8(Offset.revision, revision)
        set8(Offset.progIF, progIF)
        set8(Offset.subclass, subclass)
        set8(Offset.classCode, classCode)
        set16(Offset.subsystemVendorID, subsystemVendorID)
        set16(Offset.subsystemID, subsystemID)
        set8(Offset.interruptPin, interruptPin)
        let cmdMask = Command.ioSpace | Command.memorySpace | Command.busMaster | Command.interruptDisable
        setMask(Offset.command, [UInt8(cmdMask & 0xFF), UInt8(cmdMask >> 8)])
        setMask(Offset.interruptLine, [0xFF])
        clearOnWriteMask[Offset.status + 1] = 0xF9   // error bits (RW1C)
    }

    // MARK: Guest access

    /// A little-endian read of 1, 2 or 4 bytes; out-of-range or unaligned-across-end reads are all-ones.
    public func read(offset: Int, size: Int) -> UInt32 {
        guard offset >= 0, size >= 1, size <= 4, offset <= Self.size - size else { return UInt32.max >> (32 - 8 * UInt32(max(1, min(size, 4)))) }
        var v: UInt32 = 0
        for i in 0..<size { v |= UInt32(bytes[offset + i]) << (8 * UInt32(i)) }
        return v
    }

    /// A guest write through the masks. Out-of-range writes are ignored.
    public mutating func write(offset: Int, size: Int, value: UInt32) {
        guard offset >= 0, size >= 1, size <= 4, offset <= Self.size - size else { return }
        for i in 0..<size {
            let o = offset + i
            let b = UInt8(truncatingIfNeeded: value >> (8 * UInt32(i)))
            let m = writableMask[o]
            var n = (bytes[o] & ~m) | (b & m)
            n &= ~(b & clearOnWriteMask[o])
            bytes[o] = n
        }
    }

    // MARK: Device-side setup (ignores masks)

    public mutating func set8(_ offset: Int, _ v: UInt8) {
        guard offset >= 0, offset < Self.size else { return }
        bytes[offset] = v
    }
    public mutating func set16(_ offset: Int, _ v: UInt16) { set8(offset, UInt8(v & 0xFF)); set8(offset + 1, UInt8(v >> 8)) }
    public mutating func set32(_ offset: Int, _ v: UInt32) { set16(offset, UInt16(v & 0xFFFF)); set16(offset + 2, UInt16(v >> 16)) }
    public func get16(_ offset: Int) -> UInt16 { UInt16(truncatingIfNeeded: read(offset: offset, size: 2)) }
    public func get32(_ offset: Int) -> UInt32 { read(offset: offset, size: 4) }

    public mutating func setMask(_ offset: Int, _ mask: [UInt8]) {
        for (i, m) in mask.enumerated() where offset + i >= 0 && offset + i < Self.size { writableMask[offset + i] = m }
    }

    /// Appends a capability (`id`, then `body` after the next pointer) to the list; returns its offset.
    /// `writable` masks apply to the whole capability (including the two header bytes).
    @discardableResult
    public mutating func addCapability(id: UInt8, body: [UInt8], writable: [UInt8] = []) -> Int? {
        let offset = nextCapabilityOffset
        let length = 2 + body.count
        guard offset + length <= Self.size else { return nil }
        set8(offset, id)
        set8(offset + 1, 0)
        for (i, b) in body.enumerated() { set8(offset + 2 + i, b) }
        setMask(offset, writable)
        if let last = lastCapability { set8(last + 1, UInt8(offset)) } else {
            set8(Offset.capabilitiesPointer, UInt8(offset))
            set16(Offset.status, get16(Offset.status) | 0x10)   // capabilities list present
        }
        lastCapability = offset
        nextCapabilityOffset = (offset + length + 3) & ~3
        return offset
    }

    /// Declares a memory BAR of `size` bytes (a power of two >= 16). 64-bit BARs use `index` and `index + 1`.
    public mutating func defineBAR(index: Int, size: UInt64, kind: BARKind, prefetchable: Bool = false) -> Bool {
        let slots = kind == .memory64 ? 2 : 1
        let used = Set(bars.flatMap { b in b.kind == .memory64 ? [b.index, b.index + 1] : [b.index] })
        guard index >= 0, index + slots <= 6, size >= 16, size & (size &- 1) == 0,
              kind == .memory64 || size <= 1 << 31, size <= 1 << 40,
              used.isDisjoint(with: index..<(index + slots))
        else { return false }
        let off = Offset.bar0 + 4 * index
        let flags: UInt32 = (kind == .memory64 ? 0x4 : 0) | (prefetchable ? 0x8 : 0)
        set32(off, flags)
        let low = UInt32(truncatingIfNeeded: ~(size &- 1)) & 0xFFFF_FFF0
        setMask(off, [UInt8(low & 0xFF), UInt8((low >> 8) & 0xFF), UInt8((low >> 16) & 0xFF), UInt8(low >> 24)])
        if kind == .memory64 {
            let high = UInt32(truncatingIfNeeded: ~(size &- 1) >> 32)
            set32(off + 4, 0)
            setMask(off + 4, [UInt8(high & 0xFF), UInt8((high >> 8) & 0xFF), UInt8((high >> 16) & 0xFF), UInt8(high >> 24)])
        }
        bars.append(BAR(index: index, size: size, kind: kind, prefetchable: prefetchable))
        return true
    }

    /// The BAR's programmed base address (no decode check).
    public func barAddress(_ bar: BAR) -> UInt64 {
        let off = Offset.bar0 + 4 * bar.index
        var a = UInt64(get32(off) & 0xFFFF_FFF0)
        if bar.kind == .memory64 { a |= UInt64(get32(off + 4)) << 32 }
        return a
    }

    /// Device-side programming of a BAR's base (the VMM's initial allocation).
    public mutating func setBARAddress(_ bar: BAR, _ address: UInt64) {
        let off = Offset.bar0 + 4 * bar.index
        let flags = get32(off) & 0xF
        set32(off, UInt32(truncatingIfNeeded: address) & 0xFFFF_FFF0 | flags)
        if bar.kind == .memory64 { set32(off + 4, UInt32(truncatingIfNeeded: address >> 32)) }
    }

    public var command: UInt16 { get16(Offset.command) }

    /// Puts saved register bytes back (restore). The identity (vendor, device, class, header
    /// type, capability layout) must be this function's: only bits the guest can write, and the
    /// RW1C status bits, are taken from the saved bytes.
    public mutating func restoreBytes(_ saved: [UInt8]) -> Bool {
        guard saved.count == Self.size else { return false }
        for i in 0..<Self.size {
            let m = writableMask[i] | clearOnWriteMask[i]
            if (saved[i] & ~m) != (bytes[i] & ~m) && !isDeviceOwned(i) { return false }
            bytes[i] = saved[i]
        }
        return true
    }

    /// Bytes the device itself changes at run time (the interrupt-status bit of the status register).
    private func isDeviceOwned(_ offset: Int) -> Bool { offset == Offset.status }

    /// BARs the guest currently has decoding (memory space enabled, non-zero, not wrapping).
    public func decodedBARs() -> [(bar: BAR, address: UInt64)] {
        guard command & Command.memorySpace != 0 else { return [] }
        return bars.compactMap { bar in
            let a = barAddress(bar)
            let (_, overflow) = a.addingReportingOverflow(bar.size)
            guard a != 0, !overflow else { return nil }
            return (bar, a)
        }
    }
}
