import Devices
import GuestMemory
import Synchronization
import Testing
import Virtio

final class CountingInterrupt: VirtioInterrupt {
    private let s = Mutex<[Int]>([])
    private let c = Mutex(0)
    func signalQueue(_ index: Int) { s.withLock { $0.append(index) } }
    func signalConfigChange() { c.withLock { $0 += 1 } }
    var queues: [Int] { s.withLock { $0 } }
    var configChanges: Int { c.withLock { $0 } }
}

/// A NetBackend holding frames in memory (the TAP's role), to test the device against.
final class LoopbackNet: NetBackend {
    var incoming: [[UInt8]] = []
    var sent: [[UInt8]] = []
    var offloads: UInt32?
    let supportsOffloads: Bool
    init(offloads: Bool) { supportsOffloads = offloads }
    func receive(into buffer: UnsafeMutableRawBufferPointer) throws -> Int? {
        guard !incoming.isEmpty else { return nil }
        let f = incoming.removeFirst()
        let n = min(f.count, buffer.count)
        for i in 0..<n { buffer[i] = f[i] }
        return n
    }
    func send(_ frame: UnsafeRawBufferPointer) throws -> Bool { sent.append(Array(frame)); return true }
    func setReceiveOffloads(_ tunFlags: UInt32) { offloads = tunFlags }
}

@Suite struct VirtioNetTests {
    typealias F = VirtqueueSplit.DescriptorFlags

    struct Rig {
        let memory: GuestMemory
        var rx: DriverRing
        var tx: DriverRing
        let net: VirtioNet
        let backend: LoopbackNet
        let irq = CountingInterrupt()
        init(features: UInt64, offloads: Bool = true) throws {
            memory = try makeMemory()
            rx = try DriverRing(memory: memory, size: 16, base: 0x1000)
            tx = try DriverRing(memory: memory, size: 16, base: 0x3000)
            backend = LoopbackNet(offloads: offloads)
            net = VirtioNet(backend: backend, mac: [2, 0, 0, 0, 0, 9], queueSize: 16)
            try net.activate(VirtioActivation(memory: memory, features: features,
                                              queues: [try rx.makeQueue(maxSize: 16), try tx.makeQueue(maxSize: 16)], interrupt: irq))
        }
    }

    @Test func offersOffloadsOnlyWhenTheBackendTakesThem() throws {
        #expect(VirtioNet(backend: LoopbackNet(offloads: true), mac: []).deviceFeatures & VirtioNet.Feature.hostTSO4 != 0)
        #expect(VirtioNet(backend: LoopbackNet(offloads: false), mac: []).deviceFeatures & VirtioNet.Feature.offloads == 0)
        let f = VirtioNet.Feature.self
        #expect(VirtioNet.tunOffloads(features: f.guestCsum | f.guestTSO4 | f.guestECN) == 0x01 | 0x02 | 0x08)
        #expect(VirtioNet.tunOffloads(features: f.guestTSO4) == 0)      // TSO without checksum offload is not usable
        let rig = try Rig(features: f.guestCsum | f.guestTSO6)
        let applied: UInt32 = rig.backend.offloads ?? 0
        #expect(applied == 0x05)
    }

    @Test func transmitSendsHeaderAndFrameExactly() throws {
        var rig = try Rig(features: VirtioNet.Feature.mergeableRxBuffers)
        let hdr = [UInt8](repeating: 0, count: 12)
        let payload = (0..<100).map { UInt8($0) }
        try rig.memory.write(hdr, at: 0x8000)
        try rig.memory.write(payload, at: 0x9000)
        try rig.tx.setDescriptor(0, address: 0x8000, length: 12, flags: F.next, next: 1)
        try rig.tx.setDescriptor(1, address: 0x9000, length: 100)
        try rig.tx.publish(0)
        _ = try rig.net.processQueue(1)
        #expect(rig.backend.sent == [hdr + payload])
        #expect(try rig.tx.usedIdx() == 1)
        // Counters: one frame of 100 Ethernet bytes (the virtio header is not counted).
        let c = rig.net.counters.snapshot
        #expect(c.txFrames == 1 && c.txBytes == 100 && c.txDrops == 0 && c.rxFrames == 0)
    }

    @Test func transmitWithWritableBufferIsAGuestFault() throws {
        var rig = try Rig(features: 0)
        try rig.tx.setDescriptor(0, address: 0x8000, length: 64, flags: F.write)
        try rig.tx.publish(0)
        #expect(throws: VirtqueueError.self) { _ = try rig.net.processQueue(1) }
        #expect(rig.backend.sent.isEmpty)
    }

    @Test func mergeableReceiveSpansChainsAndSetsNumBuffers() throws {
        var rig = try Rig(features: VirtioNet.Feature.mergeableRxBuffers)
        var frame = [UInt8](repeating: 0, count: 12) + (0..<1500).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        frame[10] = 0xAA; frame[11] = 0xBB       // garbage where num_buffers goes: the device overwrites it
        rig.backend.incoming = [frame]
        // Nothing posted yet: the frame waits.
        #expect(try rig.net.processQueue(0) == false)
        #expect(try rig.rx.usedIdx() == 0)
        try rig.rx.setDescriptor(0, address: 0x10000, length: 1024, flags: F.write)
        try rig.rx.setDescriptor(1, address: 0x11000, length: 1024, flags: F.write)
        try rig.rx.publish(0)
        try rig.rx.publish(1)
        _ = try rig.net.processQueue(0)
        #expect(try rig.rx.usedIdx() == 2)
        #expect(try rig.rx.usedElement(0).length == 1024)
        #expect(try rig.rx.usedElement(1).length == UInt32(frame.count - 1024))
        let got = try rig.memory.readBytes(at: 0x10000, count: 1024) + rig.memory.readBytes(at: 0x11000, count: frame.count - 1024)
        #expect(got[10] == 2 && got[11] == 0)     // num_buffers = 2
        #expect(Array(got[12...]) == Array(frame[12...]))
        #expect(rig.irq.queues.contains(0))
        #expect(rig.net.counters.snapshot == .init(rxFrames: 1, rxBytes: 1500, rxDrops: 0, txFrames: 0, txBytes: 0, txDrops: 0))
    }

    @Test func nonMergeableDropsFramesThatDoNotFit() throws {
        var rig = try Rig(features: 0)
        rig.backend.incoming = [[UInt8](repeating: 1, count: 2000), [UInt8](repeating: 2, count: 100)]
        try rig.rx.setDescriptor(0, address: 0x10000, length: 1024, flags: F.write)
        try rig.rx.setDescriptor(1, address: 0x11000, length: 1024, flags: F.write)
        try rig.rx.publish(0)
        try rig.rx.publish(1)
        _ = try rig.net.processQueue(0)
        #expect(try rig.rx.usedElement(0).length == 0)        // too big: returned empty
        #expect(try rig.rx.usedElement(1).length == 100)
        #expect(rig.net.framesDropped == 1)
        let c = rig.net.counters.snapshot
        #expect(c.rxDrops == 1 && c.rxFrames == 1 && c.rxBytes == 100 - 12)
    }

    @Test func configHoldsTheMAC() {
        let n = VirtioNet(backend: LoopbackNet(offloads: false), mac: [2, 1, 2, 3, 4, 5])
        var b = [UInt8](repeating: 0, count: 6)
        b.withUnsafeMutableBytes { n.readConfig(offset: 0, into: $0) }
        #expect(b == [2, 1, 2, 3, 4, 5])
    }
}

@Suite struct VirtioBalloonTests {
    typealias F = VirtqueueSplit.DescriptorFlags

    @Test func inflateDiscardsPagesAndTargetChangesRaiseConfigInterrupts() throws {
        let memory = try makeMemory()
        var inflate = try DriverRing(memory: memory, size: 16, base: 0x1000)
        let deflate = try DriverRing(memory: memory, size: 16, base: 0x3000)
        let b = VirtioBalloon(targetPages: 0)
        let irq = CountingInterrupt()
        try b.activate(VirtioActivation(memory: memory, features: 0,
                                        queues: [try inflate.makeQueue(maxSize: 16), try deflate.makeQueue(maxSize: 16)], interrupt: irq))
        // Pages 0x80..0x81 hold data; 0x90 too; a PFN far outside RAM is ignored.
        for p: UInt64 in [0x80, 0x81, 0x90] { try memory.write([UInt8](repeating: 0x5A, count: 4096), at: p << 12) }
        let pfns: [UInt32] = [0x80, 0x81, 0x90, 0xFFFF_FFF0]
        try memory.write(pfns.flatMap { v in (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }, at: 0x20000)
        try inflate.setDescriptor(0, address: 0x20000, length: UInt32(pfns.count * 4))
        try inflate.publish(0)
        _ = try b.processQueue(0)
        #expect(try inflate.usedIdx() == 1)
        #expect(b.pagesDiscarded == 3)
        for p: UInt64 in [0x80, 0x81, 0x90] { #expect(try memory.readBytes(at: p << 12, count: 4096).allSatisfy { $0 == 0 }) }
        b.setTarget(pages: 1234)
        #expect(irq.configChanges == 1)
        var cfg = [UInt8](repeating: 0, count: 8)
        cfg.withUnsafeMutableBytes { b.readConfig(offset: 0, into: $0) }
        #expect(cfg[0] == 0xD2 && cfg[1] == 0x04)
        [UInt8](arrayLiteral: 7, 0, 0, 0).withUnsafeBytes { b.writeConfig(offset: 4, data: $0) }
        #expect(b.actualPages == 7)
    }

    @Test func queueRolesFollowNegotiatedFeatures() {
        let f = VirtioBalloon.Feature.self
        #expect(VirtioBalloon.roles(features: 0) == [.inflate, .deflate])
        #expect(VirtioBalloon.roles(features: f.reporting) == [.inflate, .deflate, .reporting])
        #expect(VirtioBalloon.roles(features: f.statsQueue | f.reporting) == [.inflate, .deflate, .stats, .reporting])
    }
}
