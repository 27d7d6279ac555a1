import Devices

/// The MSI-X table and pending-bit array of one function (PCI 3.0 section 6.8.2), plus the
/// enable/function-mask bits of the capability.
///
/// A value type kept under the transport's state lock. Methods return the messages to send;
/// the caller delivers them after releasing the lock.
public struct MSIXTable: Sendable {
    public struct Entry: Codable, Sendable, Equatable {
        public var addressLow: UInt32 = 0
        public var addressHigh: UInt32 = 0
        public var data: UInt32 = 0
        /// Vector control; bit 0 is the per-vector mask (set at reset).
        public var control: UInt32 = 1
        public var masked: Bool { control & 1 != 0 }
        public var message: MSIMessage { MSIMessage(address: UInt64(addressHigh) << 32 | UInt64(addressLow), data: data) }
    }

    public private(set) var entries: [Entry]
    public private(set) var pending: [Bool]
    public var enabled = false
    public var functionMasked = false

    public init(vectors: Int) {
        entries = Array(repeating: Entry(), count: max(1, vectors))
        pending = Array(repeating: false, count: max(1, vectors))
    }

    public var count: Int { entries.count }

    /// Fires `vector`: returns the message when it may be sent now, else latches the pending bit.
    public mutating func fire(_ vector: UInt16) -> MSIMessage? {
        let v = Int(vector)
        guard v < entries.count else { return nil }
        if functionMasked || entries[v].masked {
            pending[v] = true
            return nil
        }
        return entries[v].message
    }

    /// Pending vectors that became deliverable (after an unmask); clears their pending bits.
    public mutating func takeDeliverable() -> [(UInt16, MSIMessage)] {
        guard enabled, !functionMasked else { return [] }
        var out: [(UInt16, MSIMessage)] = []
        for v in entries.indices where pending[v] && !entries[v].masked {
            pending[v] = false
            out.append((UInt16(v), entries[v].message))
        }
        return out
    }

    /// Puts saved entries and pending bits back (restore); the counts must be this table's.
    public mutating func restore(entries: [Entry], pending: [Bool]) -> Bool {
        guard entries.count == self.entries.count, pending.count == self.pending.count else { return false }
        self.entries = entries.map { var e = $0; e.addressLow &= ~3; e.control &= 1; return e }
        self.pending = pending
        return true
    }

    /// A dword read of the table (offset relative to the table start).
    public func readTable(dword offset: UInt64) -> UInt32 {
        let v = Int(offset / 16), field = Int(offset % 16) / 4
        guard v < entries.count else { return 0 }
        let e = entries[v]
        return [e.addressLow, e.addressHigh, e.data, e.control][field]
    }

    /// A dword write of the table. Returns whether the entry changed.
    public mutating func writeTable(dword offset: UInt64, value: UInt32) -> Bool {
        let v = Int(offset / 16), field = Int(offset % 16) / 4
        guard v < entries.count else { return false }
        let before = entries[v]
        switch field {
        case 0: entries[v].addressLow = value & ~3   // dword aligned
        case 1: entries[v].addressHigh = value
        case 2: entries[v].data = value
        default: entries[v].control = value & 1
        }
        return entries[v] != before
    }

    /// A dword read of the PBA.
    public func readPBA(dword offset: UInt64) -> UInt32 {
        var v: UInt32 = 0
        let first = Int(offset / 4) * 32
        for bit in 0..<32 where first + bit < pending.count && pending[first + bit] { v |= 1 << UInt32(bit) }
        return v
    }
}
