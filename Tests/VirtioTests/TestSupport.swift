import Devices
import GuestMemory
import Synchronization
import Virtio

/// Records MSI messages as the VMM's KVM_SIGNAL_MSI would receive them.
final class RecordingMSI: MSIDelivery {
    struct Sent: Equatable { var source: MSISource; var vector: UInt16; var message: MSIMessage }
    private let s = Mutex<[Sent]>([])
    func deliver(source: MSISource, vector: UInt16, message: MSIMessage) {
        s.withLock { $0.append(Sent(source: source, vector: vector, message: message)) }
    }
    var sent: [Sent] { s.withLock { $0 } }
    func clear() { s.withLock { $0.removeAll() } }
}

final class RecordingLine: InterruptLine {
    private let s = Mutex<(Bool, Int)>((false, 0))
    func set(level: Bool) { s.withLock { $0.0 = level; $0.1 += 1 } }
    var level: Bool { s.withLock { $0.0 } }
}

final class Flag: Sendable {
    private let s = Mutex(0)
    func bump() { s.withLock { $0 += 1 } }
    var count: Int { s.withLock { $0 } }
}

/// Guest RAM for tests: 1 MiB at 0 and 64 KiB at 16 MiB (a hole in between).
func makeMemory() throws -> GuestMemory {
    try GuestMemory(layout: [(base: 0, size: 1 << 20), (base: 16 << 20, size: 64 << 10)])
}

/// The driver's side of a split virtqueue, written straight into guest RAM (what Linux's
/// virtio_ring does), used to exercise the device side.
struct DriverRing {
    let memory: GuestMemory
    let size: UInt16
    let desc: UInt64
    let avail: UInt64
    let used: UInt64
    var availIdx: UInt16 = 0

    init(memory: GuestMemory, size: UInt16, base: UInt64 = 0x1000) throws {
        self.memory = memory
        self.size = size
        desc = base
        avail = base + 16 * UInt64(size)
        used = (avail + 6 + 2 * UInt64(size) + 3) & ~3
        // Zero the rings.
        let end = used + 6 + 8 * UInt64(size)
        try memory.write([UInt8](repeating: 0, count: Int(end - base)), at: base)
    }

    var layout: VirtqueueLayout { VirtqueueLayout(size: size, descriptorTable: desc, availableRing: avail, usedRing: used) }

    func setDescriptor(_ i: UInt16, address: UInt64, length: UInt32, flags: UInt16 = 0, next: UInt16 = 0) throws {
        try Self.writeDescriptor(memory, at: desc + 16 * UInt64(i), address: address, length: length, flags: flags, next: next)
    }

    static func writeDescriptor(_ m: GuestMemory, at a: UInt64, address: UInt64, length: UInt32, flags: UInt16, next: UInt16) throws {
        try m.write(address, at: a)
        try m.write(length, at: a + 8)
        try m.write(flags, at: a + 12)
        try m.write(next, at: a + 14)
    }

    /// Makes `head` available and publishes avail.idx.
    mutating func publish(_ head: UInt16) throws {
        try memory.write(head, at: avail + 4 + 2 * UInt64(availIdx % size))
        availIdx &+= 1
        try memory.write(availIdx, at: avail + 2)
    }

    func setAvailIndex(_ v: UInt16) throws { try memory.write(v, at: avail + 2) }
    func setAvailFlags(_ v: UInt16) throws { try memory.write(v, at: avail) }
    func setUsedEvent(_ v: UInt16) throws { try memory.write(v, at: avail + 4 + 2 * UInt64(size)) }
    func availEvent() throws -> UInt16 { try memory.read(at: used + 4 + 8 * UInt64(size)) }
    func usedIdx() throws -> UInt16 { try memory.read(at: used + 2) }
    func usedFlags() throws -> UInt16 { try memory.read(at: used) }
    func usedElement(_ i: UInt16) throws -> (id: UInt32, length: UInt32) {
        let a = used + 4 + 8 * UInt64(i % size)
        return (try memory.read(at: a), try memory.read(at: a + 4))
    }

    func makeQueue(eventIndex: Bool = false, indirect: Bool = true, maxSize: UInt16 = 256) throws -> VirtqueueSplit {
        try VirtqueueSplit(layout: layout, maxSize: maxSize, memory: memory, eventIndex: eventIndex, indirectDescriptors: indirect)
    }
}

/// Expects `body` to throw exactly `expected`.
func expectQueueError(_ expected: VirtqueueError, _ body: () throws -> Void) -> Bool {
    do { try body() } catch let e as VirtqueueError { return e == expected } catch { return false }
    return false
}

