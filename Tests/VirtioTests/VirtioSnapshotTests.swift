import Devices
import GuestMemory
import Synchronization
import Testing
import Virtio
#if canImport(Glibc)
import Glibc
#endif

/// Snapshot state of virtio devices: a device saved in the middle of its life and restored into
/// a new transport over the same RAM carries on where it was, interrupts and held buffers
/// included; state that does not fit the device is refused and changes nothing.
@Suite struct VirtioSnapshotTests {
    typealias F = VirtqueueSplit.DescriptorFlags
    let features = VirtioFeature.version1 | VirtioFeature.eventIndex | VirtioFeature.indirectDescriptors

    func saved(_ t: VirtioPCIDevice) throws -> VirtioPCIDevice.Saved {
        var out: VirtioPCIDevice.Saved?
        try t.whileQuiesced { out = t.savedWhileQuiesced() }
        guard let out else { throw VirtioStateError("no state") }
        return out
    }

    /// An entropy device serves two requests, is saved, and a new transport on a new bus over the
    /// same RAM restores it: the guest's third request (same doorbell, same ring) is served, the
    /// used index goes on from 2 to 3, and the MSI goes to the vector the guest programmed.
    @Test func rngContinuesAfterRestoreWithItsInterrupts() throws {
        let m = try Machine()
        let t = try VirtioPCIDevice(device: VirtioRNG(), memory: m.memory, msi: m.msi)
        try m.pci.add(t)
        var d = VirtioPCIDriver(m, slot: 1)
        try d.probe()
        #expect(d.negotiate(features))
        d.enableMSIX(vectors: 2)
        var ring = try DriverRing(memory: m.memory, size: 16, base: 0x4000)
        let bell = d.setupQueue(0, ring: ring, vector: 1)
        d.driverOK()
        try ring.setDescriptor(0, address: 0x20000, length: 64, flags: F.write)
        try ring.publish(0); d.kick(bell, queue: 0)
        try ring.publish(0); d.kick(bell, queue: 0)
        #expect(try ring.usedIdx() == 2)
        let s = try saved(t)
        #expect(s.active && s.queues[0].position?.nextAvailable == 2 && s.queues[0].position?.nextUsed == 2)

        // The restored machine: a new bus and transport, the same RAM.
        let m2 = try Machine(memory: m.memory)
        let t2 = try VirtioPCIDevice(device: VirtioRNG(), memory: m2.memory, msi: m2.msi)
        try m2.pci.add(t2)
        #expect(!t2.isActive)
        try t2.restore(s)
        m2.pci.updateMappings(slot: 1)
        #expect(t2.isActive && t2.status == 0x0F)
        #expect(t2.notifyAddress(queue: 0) == bell)
        #expect(try saved(t2) == s)
        try ring.setUsedEvent(2)
        try ring.publish(0)
        m2.mmio.write(address: bell, width: 2, value: 0)
        #expect(try ring.usedIdx() == 3)
        #expect(try ring.usedElement(2) == (0, 64))
        #expect(m2.msi.sent == [.init(source: MSISource(device: 1), vector: 1, message: VirtioPCIDriver.message(1))])
        // The guest can still reset and set the device up again.
        var d2 = VirtioPCIDriver(m2, slot: 1)
        d2.caps = d.caps
        #expect(d2.negotiate(features))
        #expect(!t2.isActive)
    }

    /// A device the driver had not finished setting up restores as such (no activation).
    @Test func aDeviceBeingSetUpRestoresInactive() throws {
        let m = try Machine()
        let t = try VirtioPCIDevice(device: VirtioRNG(), memory: m.memory, msi: m.msi)
        try m.pci.add(t)
        var d = VirtioPCIDriver(m, slot: 1)
        try d.probe()
        #expect(d.negotiate(features))
        let s = try saved(t)
        #expect(!s.active && s.status == 0x0B && s.queues[0].position == nil)
        let t2 = try VirtioPCIDevice(device: VirtioRNG(), memory: m.memory, msi: m.msi)
        try t2.restore(s)
        #expect(!t2.isActive && t2.status == 0x0B && t2.negotiatedFeatures == features)
    }

    /// Saved state that is not this device's is refused, and the device stays as built.
    @Test func mismatchedStateIsRefusedAndChangesNothing() throws {
        let m = try Machine()
        let t = try VirtioPCIDevice(device: VirtioRNG(), memory: m.memory, msi: m.msi)
        try m.pci.add(t)
        var d = VirtioPCIDriver(m, slot: 1)
        try d.probe()
        #expect(d.negotiate(features))
        d.enableMSIX(vectors: 2)
        let ring = try DriverRing(memory: m.memory, size: 16, base: 0x4000)
        _ = d.setupQueue(0, ring: ring, vector: 1)
        d.driverOK()
        let good = try saved(t)
        func refused(_ edit: (inout VirtioPCIDevice.Saved) -> Void) throws -> Bool {
            var s = good
            edit(&s)
            let fresh = try VirtioPCIDevice(device: VirtioRNG(), memory: m.memory, msi: m.msi)
            let before = try saved(fresh)
            do { try fresh.restore(s); return false } catch is VirtioStateError {
                return try saved(fresh) == before && !fresh.isActive
            }
        }
        #expect(try refused { $0.deviceType = VirtioDeviceType.block.rawValue })
        #expect(try refused { $0.queues.append($0.queues[0]) })
        #expect(try refused { $0.config[0] ^= 0xFF })                    // another vendor
        #expect(try refused { $0.config = Array($0.config.prefix(64)) })
        #expect(try refused { $0.msixEntries.removeLast() })
        #expect(try refused { $0.queues[0].size = 1024 })                 // past the queue's maximum
        #expect(try refused { $0.queues[0].desc = 1 << 40 })              // a ring outside RAM
        #expect(try refused { $0.driverFeatures |= 1 << 60 })              // never offered
        #expect(try refused { $0.backend = .balloon(targetPages: 1, actualPages: 0, statsHead: nil) })
    }

    /// virtio-net holding a receive buffer (a frame larger than the one buffer posted) saves its
    /// head; the restored device uses that buffer first, then the next one, for the next frame.
    @Test func netHeldReceiveBuffersSurviveRestore() throws {
        let memory = try makeMemory()
        var rx = try DriverRing(memory: memory, size: 16, base: 0x1000)
        let tx = try DriverRing(memory: memory, size: 16, base: 0x3000)
        let backend = LoopbackNet(offloads: false)
        let net = VirtioNet(backend: backend, mac: [2, 0, 0, 0, 0, 9], queueSize: 16)
        let mergeable = VirtioNet.Feature.mergeableRxBuffers
        let q0 = try rx.makeQueue(maxSize: 16), q1 = try tx.makeQueue(maxSize: 16)
        try net.activate(VirtioActivation(memory: memory, features: mergeable, queues: [q0, q1], interrupt: CountingInterrupt()))
        let frame = [UInt8](repeating: 0, count: 12) + (0..<1500).map { UInt8(truncatingIfNeeded: $0 &* 3) }
        backend.incoming = [frame]
        try rx.setDescriptor(0, address: 0x10000, length: 1024, flags: F.write)
        try rx.publish(0)
        #expect(try net.processQueue(0) == false)     // one buffer is not enough: it is held
        #expect(try rx.usedIdx() == 0)
        let state = net.saveState()
        #expect(state == .net(heldHeads: [0]))
        let position = q0.position

        let backend2 = LoopbackNet(offloads: false)
        let net2 = VirtioNet(backend: backend2, mac: [2, 0, 0, 0, 0, 9], queueSize: 16)
        let r0 = try rx.makeQueue(maxSize: 16), r1 = try tx.makeQueue(maxSize: 16)
        r0.restore(position)
        let irq = CountingInterrupt()
        try net2.activate(VirtioActivation(memory: memory, features: mergeable, queues: [r0, r1], interrupt: irq))
        try net2.restoreState(state)
        #expect(net2.saveState() == state)
        backend2.incoming = [frame]                  // the frame in flight was dropped; the next one comes
        try rx.setDescriptor(1, address: 0x11000, length: 1024, flags: F.write)
        try rx.publish(1)
        _ = try net2.processQueue(0)
        #expect(try rx.usedIdx() == 2)
        #expect(try rx.usedElement(0) == (0, 1024))
        #expect(try rx.usedElement(1) == (1, UInt32(frame.count - 1024)))
        let got = try memory.readBytes(at: 0x10000, count: 1024) + memory.readBytes(at: 0x11000, count: frame.count - 1024)
        #expect(Array(got[12...]) == Array(frame[12...]))
        #expect(irq.queues.contains(0))
        // A held head the ring does not hold is refused.
        let net3 = VirtioNet(backend: LoopbackNet(offloads: false), mac: [], queueSize: 16)
        try net3.activate(VirtioActivation(memory: memory, features: mergeable, queues: [try rx.makeQueue(maxSize: 16), nil], interrupt: irq))
        #expect(throws: (any Error).self) { try net3.restoreState(.net(heldHeads: [99])) }
    }

    /// virtio-vsock after restore tells the guest its connections are gone: the first event
    /// buffer gets VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (id 0), once.
    @Test func vsockSendsTransportResetAfterRestore() throws {
        let memory = try makeMemory()
        let path = "/tmp/vireo-vsock-snap-\(getpid()).sock"
        unlink(path); defer { unlink(path) }
        let vsock = try VirtioVsock(guestCID: 3, socketPath: path)
        let rx = try DriverRing(memory: memory, size: 16, base: 0x1000)
        let tx = try DriverRing(memory: memory, size: 16, base: 0x3000)
        var ev = try DriverRing(memory: memory, size: 16, base: 0x5000)
        let irq = CountingInterrupt()
        try vsock.activate(VirtioActivation(memory: memory, features: 0, queues: [try rx.makeQueue(maxSize: 256), try tx.makeQueue(maxSize: 256), try ev.makeQueue(maxSize: 64)], interrupt: irq))
        try vsock.restoreState(.vsock(heldHead: nil))
        try memory.write([UInt8](repeating: 0xEE, count: 8), at: 0x12000)
        try ev.setDescriptor(0, address: 0x12000, length: 8, flags: F.write)
        try ev.publish(0)
        _ = try vsock.processQueue(2)
        #expect(try ev.usedIdx() == 1)
        #expect(try ev.usedElement(0) == (0, 4))
        #expect(try memory.readBytes(at: 0x12000, count: 4) == [0, 0, 0, 0])
        #expect(irq.queues == [2])
        try ev.publish(0)
        _ = try vsock.processQueue(2)
        #expect(try ev.usedIdx() == 1)               // once only
    }

    /// The balloon keeps its target, the driver's `actual` and the stats buffer it holds.
    @Test func balloonStateRoundTrips() throws {
        let memory = try makeMemory()
        let rings = try (0..<3).map { try DriverRing(memory: memory, size: 16, base: 0x1000 + UInt64($0) * 0x2000) }
        let b = VirtioBalloon(targetPages: 256, stats: true)
        try b.activate(VirtioActivation(memory: memory, features: VirtioBalloon.Feature.statsQueue,
                                        queues: try rings.map { try $0.makeQueue(maxSize: 16) }, interrupt: CountingInterrupt()))
        var statsRing = rings[2]
        try memory.write([UInt8](repeating: 0, count: 20), at: 0x14000)
        try statsRing.setDescriptor(3, address: 0x14000, length: 20)
        try statsRing.publish(3)
        _ = try b.processQueue(2)
        #expect(b.saveState() == .balloon(targetPages: 256, actualPages: 0, statsHead: 3))
        let b2 = VirtioBalloon(targetPages: 0, stats: true)
        try b2.activate(VirtioActivation(memory: memory, features: VirtioBalloon.Feature.statsQueue,
                                         queues: try rings.map { try $0.makeQueue(maxSize: 16) }, interrupt: CountingInterrupt()))
        try b2.restoreState(.balloon(targetPages: 256, actualPages: 7, statsHead: 3))
        #expect(b2.targetPages == 256 && b2.actualPages == 7)
        #expect(b2.saveState() == .balloon(targetPages: 256, actualPages: 7, statsHead: 3))
        #expect(throws: (any Error).self) { try b2.restoreState(.net(heldHeads: [])) }
    }
}
