import Synchronization
import GuestMemory
import VireoSupport

/// The address-decoding core shared by `PortIOBus` and `MMIOBus`: a sorted array of
/// non-overlapping ranges, looked up by binary search.
///
/// Concurrency: the table is behind a `Mutex`; lookups copy the device reference out and call it
/// after the lock is released, so a device may (re)register ranges from inside an access
/// (the PCI bus does, when the guest moves a BAR). Registration is rare (boot, BAR moves);
/// lookups hold the lock for a binary search only.
public final class AddressBus: Sendable {
    public struct Entry: Sendable {
        public let base: UInt64
        public let length: UInt64
        /// Offsets passed to the device are `address - origin`.
        public let origin: UInt64
        public let device: any BusDevice
        public let name: String
        /// The last address decoded (inclusive, so a range may end at 2^64 - 1).
        public var last: UInt64 { base &+ (length &- 1) }
    }

    public struct Statistics: Sendable, Equatable {
        public var unhandledReads: UInt64 = 0
        public var unhandledWrites: UInt64 = 0
        public var badWidth: UInt64 = 0
        public var lastUnhandledAddress: UInt64? = nil
    }

    private struct State {
        var entries: [Entry] = []
        var stats = Statistics()
    }

    public let name: String
    /// The highest valid address (inclusive).
    public let maxAddress: UInt64
    public let allowedWidths: Set<Int>
    private let state = Mutex(State())

    public init(name: String, maxAddress: UInt64, allowedWidths: Set<Int>) {
        self.name = name
        self.maxAddress = maxAddress
        self.allowedWidths = allowedWidths
    }

    /// Registers `device` on `[base, base+length)`. Offsets handed to the device are relative to
    /// `origin` (default: `base`), so one device can answer on several disjoint ranges.
    /// Throws `.conflict` on overlap and `.invalidArgument` on an empty or wrapping range.
    public func register(_ device: any BusDevice, base: UInt64, length: UInt64, origin: UInt64? = nil, name: String = "") throws {
        let (last, overflow) = base.addingReportingOverflow(length &- 1)
        guard length > 0, !overflow, last <= maxAddress else {
            throw VireoError(.invalidArgument, "\(self.name): range \(hex(base))+\(hex(length)) for \(name) is empty or outside the address space")
        }
        let o = origin ?? base
        guard o <= base else {
            throw VireoError(.invalidArgument, "\(self.name): origin \(hex(o)) of \(name) is above its base \(hex(base))")
        }
        try state.withLock { s in
            let i = Self.insertionIndex(s.entries, base)
            if i > 0, s.entries[i - 1].last >= base {
                let other = s.entries[i - 1]
                throw VireoError(.conflict, "\(self.name): \(name) at \(hex(base))+\(hex(length)) overlaps \(other.name) at \(hex(other.base))+\(hex(other.length))")
            }
            if i < s.entries.count, s.entries[i].base <= last {
                let other = s.entries[i]
                throw VireoError(.conflict, "\(self.name): \(name) at \(hex(base))+\(hex(length)) overlaps \(other.name) at \(hex(other.base))+\(hex(other.length))")
            }
            s.entries.insert(Entry(base: base, length: length, origin: o, device: device, name: name), at: i)
        }
    }

    /// Removes the range starting exactly at `base`. Returns whether one was removed.
    @discardableResult
    public func unregister(base: UInt64) -> Bool {
        state.withLock { s in
            let i = Self.insertionIndex(s.entries, base)
            guard i < s.entries.count, s.entries[i].base == base else { return false }
            s.entries.remove(at: i)
            return true
        }
    }

    public var entries: [Entry] { state.withLock { $0.entries } }
    public var statistics: Statistics { state.withLock { $0.stats } }

    /// The entry decoding `address`, if any.
    public func lookup(_ address: UInt64) -> Entry? {
        state.withLock { s in Self.find(s.entries, address) }
    }

    /// Dispatches a read. Returns whether a device handled it; unhandled reads are all-ones.
    @discardableResult
    public func read(_ address: UInt64, _ data: UnsafeMutableRawBufferPointer) -> Bool {
        for i in data.indices { data[i] = 0xFF }
        guard allowedWidths.contains(data.count) else {
            state.withLock { $0.stats.badWidth &+= 1 }
            return false
        }
        guard let e = route(address, count: data.count, isWrite: false) else { return false }
        e.device.read(offset: address &- e.origin, data: data)
        return true
    }

    /// Dispatches a write. Returns whether a device handled it; unhandled writes are dropped.
    @discardableResult
    public func write(_ address: UInt64, _ data: UnsafeRawBufferPointer) -> Bool {
        guard allowedWidths.contains(data.count) else {
            state.withLock { $0.stats.badWidth &+= 1 }
            return false
        }
        guard let e = route(address, count: data.count, isWrite: true) else { return false }
        e.device.write(offset: address &- e.origin, data: data)
        return true
    }

    /// The entry for an access of `count` bytes at `address`; the access must lie inside one range.
    private func route(_ address: UInt64, count: Int, isWrite: Bool) -> Entry? {
        state.withLock { s in
            if let e = Self.find(s.entries, address) {
                let last = address.addingReportingOverflow(UInt64(count) &- 1)
                if !last.overflow && last.partialValue <= e.last { return e }
            }
            if isWrite { s.stats.unhandledWrites &+= 1 } else { s.stats.unhandledReads &+= 1 }
            s.stats.lastUnhandledAddress = address
            return nil
        }
    }

    /// First index whose base is >= `base`.
    private static func insertionIndex(_ entries: [Entry], _ base: UInt64) -> Int {
        var lo = 0, hi = entries.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if entries[mid].base < base { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    private static func find(_ entries: [Entry], _ address: UInt64) -> Entry? {
        // Last entry with base <= address.
        var lo = 0, hi = entries.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if entries[mid].base <= address { lo = mid + 1 } else { hi = mid }
        }
        guard lo > 0 else { return nil }
        let e = entries[lo - 1]
        return address &- e.base < e.length ? e : nil
    }

    /// An access of `width` (1...8) bytes as an integer: the convenience both buses offer.
    public func read(_ address: UInt64, width: Int) -> UInt64 {
        let w = max(1, min(width, 8))
        return withUnsafeTemporaryAllocation(byteCount: w, alignment: 8) { b in
            _ = read(address, UnsafeMutableRawBufferPointer(rebasing: b[0..<w]))
            return UnsafeRawBufferPointer(b).littleEndianValue & (w >= 8 ? ~0 : (UInt64(1) << (UInt64(w) * 8)) &- 1)
        }
    }

    public func write(_ address: UInt64, width: Int, value: UInt64) {
        let w = max(1, min(width, 8))
        withUnsafeTemporaryAllocation(byteCount: w, alignment: 8) { b in
            let v = UnsafeMutableRawBufferPointer(rebasing: b[0..<w])
            v.storeLittleEndian(value)
            _ = write(address, UnsafeRawBufferPointer(v))
        }
    }
}
