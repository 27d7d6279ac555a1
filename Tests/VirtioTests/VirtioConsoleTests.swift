import Devices
import Synchronization
import Testing
import Virtio

@Suite struct VirtioConsoleTests {
    typealias F = VirtqueueSplit.DescriptorFlags

    final class Sink: Sendable {
        private let s = Mutex<[UInt8]>([])
        var bytes: [UInt8] { s.withLock { $0 } }
        func add(_ b: UnsafeRawBufferPointer) { s.withLock { $0 += b } }
    }

    @Test func transmitReceiveAndConfig() throws {
        let m = try Machine()
        let sink = Sink()
        let console = VirtioConsole(queueSize: 16, inputCapacity: 8, output: { sink.add($0) })
        let t = try VirtioPCIDevice(device: console, memory: m.memory, msi: m.msi)
        try m.pci.add(t)
        var d = VirtioPCIDriver(m, slot: 1)
        try d.probe()
        let cfg = try #require(d.caps.device)
        #expect(m.mmio.read(address: cfg, width: 2) == 80)
        #expect(m.mmio.read(address: cfg + 2, width: 2) == 25)
        #expect(m.mmio.read(address: cfg + 4, width: 4) == 1)
        #expect(d.negotiate(d.deviceFeatures()))
        d.enableMSIX(vectors: 3)
        d.w16(0x10, 0)
        var rx = try DriverRing(memory: m.memory, size: 16, base: 0x4000)
        var tx = try DriverRing(memory: m.memory, size: 16, base: 0x8000)
        let rxBell = d.setupQueue(0, ring: rx, vector: 1)
        let txBell = d.setupQueue(1, ring: tx, vector: 2)
        d.driverOK()
        // Guest output.
        try m.memory.write(Array("hello ".utf8), at: 0x20000)
        try m.memory.write(Array("world".utf8), at: 0x21000)
        try tx.setDescriptor(0, address: 0x20000, length: 6, flags: F.next, next: 1)
        try tx.setDescriptor(1, address: 0x21000, length: 5)
        try tx.publish(0)
        d.kick(txBell, queue: 1)
        #expect(sink.bytes == Array("hello world".utf8))
        #expect(try tx.usedIdx() == 1)
        // Emergency write.
        m.mmio.write(address: cfg + 8, width: 4, value: UInt64(UInt8(ascii: "!")))
        #expect(sink.bytes.last == UInt8(ascii: "!"))
        // Host input: bounded, then delivered into a posted receive buffer.
        #expect(console.enqueueInput(Array("0123456789".utf8)) == 8)
        try rx.setDescriptor(0, address: 0x30000, length: 5, flags: F.write)
        try rx.setDescriptor(1, address: 0x31000, length: 64, flags: F.write)
        try rx.publish(0)
        try rx.publish(1)
        d.kick(rxBell, queue: 0)
        #expect(try rx.usedIdx() == 2)
        #expect(try rx.usedElement(0) == (0, 5) && rx.usedElement(1) == (1, 3))
        #expect(try m.memory.readBytes(at: 0x30000, count: 5) + m.memory.readBytes(at: 0x31000, count: 3) == Array("01234567".utf8))
        #expect(m.msi.sent.contains { $0.vector == 1 } && m.msi.sent.contains { $0.vector == 2 })
        // Resize announces a config change on the next processing.
        m.msi.clear()
        let gen = d.r8(0x15)
        console.resize(cols: 132, rows: 50)
        t.processQueue(0)
        #expect(d.r8(0x15) != gen)
        #expect(m.msi.sent.first?.vector == 0)
        #expect(m.mmio.read(address: cfg, width: 2) == 132)
    }
}
