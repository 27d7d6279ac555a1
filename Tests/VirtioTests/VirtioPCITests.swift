import Synchronization
import Devices
import GuestMemory
import Testing
import Virtio

@Suite struct VirtioPCITests {
    typealias F = VirtqueueSplit.DescriptorFlags
    let features = VirtioFeature.version1 | VirtioFeature.eventIndex | VirtioFeature.indirectDescriptors

    func rngMachine(intx: (any InterruptLine)? = nil) throws -> (Machine, VirtioPCIDevice, VirtioPCIDriver) {
        let m = try Machine()
        let t = try VirtioPCIDevice(device: VirtioRNG(), memory: m.memory, msi: m.msi, intx: intx)
        let a = try m.pci.add(t)
        #expect(a == PCIAddress(device: 1))
        var d = VirtioPCIDriver(m, slot: 1)
        try d.probe()
        return (m, t, d)
    }

    /// The whole path a Linux guest takes: enumeration, BAR sizing, capabilities, negotiation,
    /// MSI-X, queue setup, a request, the doorbell, random bytes and an MSI back.
    @Test func virtioRNGEndToEnd() throws {
        let m = try Machine()
        let t = try VirtioPCIDevice(device: VirtioRNG(), memory: m.memory, msi: m.msi)
        try m.pci.add(t)
        // Enumerate bus 0.
        var found: [UInt8: UInt32] = [:]
        for slot: UInt8 in 0..<32 {
            let id = m.cfgRead(slot, 0)
            if id != 0xFFFF_FFFF { found[slot] = id }
        }
        #expect(found == [0: 0x0008_1B36, 1: 0x1044_1AF4])
        #expect(m.cfgRead(0, 0x08) >> 8 == 0x06_00_00)      // host bridge class
        #expect(m.cfgRead(1, 0x08) & 0xFF == 1)             // revision 1: modern
        #expect(m.cfgRead(1, 0x2C) == 0x1100_1AF4)
        var d = VirtioPCIDriver(m, slot: 1)
        try d.probe()
        #expect(d.caps.bar >= 0xC000_0000 && d.caps.bar < 0xFEC0_0000)
        #expect(d.caps.msixVectors == 2)
        #expect(d.caps.device == nil)                      // rng has no config space
        let offered = d.deviceFeatures()
        #expect(offered & VirtioFeature.version1 != 0)
        #expect(offered & VirtioFeature.eventIndex != 0 && offered & VirtioFeature.indirectDescriptors != 0)
        #expect(offered & VirtioFeature.accessPlatform == 0)
        #expect(d.negotiate(features))
        d.enableMSIX(vectors: 2)
        d.w16(0x10, 0)
        #expect(d.r16(0x10) == 0)
        #expect(d.r16(0x12) == 1)
        let ring = try DriverRing(memory: m.memory, size: 16, base: 0x4000)
        let bell = d.setupQueue(0, ring: ring, vector: 1)
        d.driverOK()
        #expect(t.isActive)
        #expect(t.notifyAddress(queue: 0) == bell)
        #expect(t.interruptRoutes().contains(.init(source: .queue(0), vector: 1, message: VirtioPCIDriver.message(1), masked: false)))
        // Post a 64-byte device-writable buffer and ring the doorbell.
        var r = ring
        try r.setDescriptor(0, address: 0x20000, length: 64, flags: F.write)
        try r.publish(0)
        d.kick(bell, queue: 0)
        #expect(try r.usedIdx() == 1)
        #expect(try r.usedElement(0) == (0, 64))
        #expect(try m.memory.readBytes(at: 0x20000, count: 64) != [UInt8](repeating: 0, count: 64))
        #expect(m.msi.sent == [.init(source: MSISource(device: 1), vector: 1, message: VirtioPCIDriver.message(1))])
        // Event index: the driver asks to be interrupted only once used entry #2 (the third) is used.
        try r.setUsedEvent(2)
        m.msi.clear()
        try r.publish(0); t.processQueue(0)   // the VMM's ioeventfd path
        #expect(try r.usedIdx() == 2)
        #expect(m.msi.sent.isEmpty)
        try r.publish(0); t.processQueue(0)
        #expect(try r.usedIdx() == 3)
        #expect(m.msi.sent.count == 1)
        #expect(d.status == 0x0F)
    }

    @Test func malformedChainSetsNeedsResetAndRaisesConfigInterrupt() throws {
        let (m, t, d) = try rngMachine()
        #expect(d.negotiate(features))
        d.enableMSIX(vectors: 2)
        d.w16(0x10, 0)
        var ring = try DriverRing(memory: m.memory, size: 8, base: 0x4000)
        let bell = d.setupQueue(0, ring: ring, vector: 1)
        d.driverOK()
        let gen = d.r8(0x15)
        try ring.setDescriptor(0, address: 0x20000, length: 8, flags: F.write | F.next, next: 0)   // self loop
        try ring.publish(0)
        d.kick(bell, queue: 0)
        #expect(d.status & VirtioStatus.needsReset != 0)
        #expect(d.r8(0x15) != gen)
        #expect(m.msi.sent == [.init(source: MSISource(device: 1), vector: 0, message: VirtioPCIDriver.message(0))])
        #expect(t.lastFault?.contains("longer") == true)
        // Further doorbells are ignored; the driver cannot clear NEEDS_RESET except by reset.
        try ring.setDescriptor(0, address: 0x20000, length: 8, flags: F.write)
        d.kick(bell, queue: 0)
        #expect(try ring.usedIdx() == 0)
        d.w8(0x14, d.status & ~VirtioStatus.needsReset)
        #expect(d.status & VirtioStatus.needsReset != 0)
        // Reset, set up again, and the device works.
        #expect(d.negotiate(features))
        #expect(d.status == 0x0B)
        let ring2 = try DriverRing(memory: m.memory, size: 8, base: 0x6000)
        let bell2 = d.setupQueue(0, ring: ring2, vector: 1)
        d.driverOK()
        var r2 = ring2
        try r2.setDescriptor(0, address: 0x20000, length: 8, flags: F.write)
        try r2.publish(0)
        d.kick(bell2, queue: 0)
        #expect(try r2.usedIdx() == 1)
    }

    @Test func readableBufferIsAFaultForRNG() throws {
        let (m, t, d) = try rngMachine()
        #expect(d.negotiate(features))
        var ring = try DriverRing(memory: m.memory, size: 8, base: 0x4000)
        let bell = d.setupQueue(0, ring: ring, vector: 0xFFFF)
        d.driverOK()
        try ring.setDescriptor(0, address: 0x20000, length: 8)
        try ring.publish(0)
        d.kick(bell, queue: 0)
        #expect(d.status & VirtioStatus.needsReset != 0)
        #expect(t.lastFault?.contains("device-writable") == true)
    }

    @Test func featureNegotiationRefusesUnofferedOrLegacy() throws {
        let (_, _, d) = try rngMachine()
        #expect(!d.negotiate(features | VirtioFeature.accessPlatform))
        #expect(!d.negotiate(VirtioFeature.eventIndex))          // no VERSION_1
        #expect(d.negotiate(VirtioFeature.version1))
        // Features are frozen once FEATURES_OK is set.
        d.w32(0x08, 0); d.w32(0x0C, 1 << 29)
        #expect(d.r32(0x0C) == 0)
    }

    @Test func badQueueSetupIsCaughtAtDriverOK() throws {
        let (m, t, d) = try rngMachine()
        #expect(d.negotiate(features))
        let ring = try DriverRing(memory: m.memory, size: 8, base: 0x4000)
        _ = d.setupQueue(0, ring: ring, vector: 0xFFFF)
        d.w16(0x16, 0)
        // Too late to change the enabled queue; set up a different bad device instead:
        d.w8(0x14, 0)
        #expect(d.negotiate(features))
        d.w16(0x16, 0); d.w16(0x18, 12)                  // not a power of two
        d.w64(0x20, 0x4000); d.w64(0x28, 0x5000); d.w64(0x30, 0x6000); d.w16(0x1C, 1)
        d.driverOK()
        #expect(d.status & VirtioStatus.needsReset != 0)
        #expect(!t.isActive)
        // Queue index beyond num_queues reads size 0 and ignores writes.
        d.w16(0x16, 5)
        #expect(d.r16(0x18) == 0)
        d.w16(0x18, 4)
        #expect(d.r16(0x18) == 0)
        // A vector beyond the table reads back as NO_VECTOR.
        d.w16(0x16, 0); d.w16(0x1A, 7)
        #expect(d.r16(0x1A) == 0xFFFF)
    }

    @Test func maskedVectorLatchesPendingBitAndFiresOnUnmask() throws {
        let (m, _, d) = try rngMachine()
        #expect(d.negotiate(features))
        d.enableMSIX(vectors: 2, maskAll: true)
        var ring = try DriverRing(memory: m.memory, size: 8, base: 0x4000)
        let bell = d.setupQueue(0, ring: ring, vector: 1)
        d.driverOK()
        try ring.setDescriptor(0, address: 0x20000, length: 8, flags: F.write)
        try ring.publish(0)
        d.kick(bell, queue: 0)
        #expect(m.msi.sent.isEmpty)
        #expect(m.mmio.read(address: d.caps.msixPBA, width: 4) == 0b10)
        m.mmio.write(address: d.caps.msixTable + 16 + 12, width: 4, value: 0)   // unmask vector 1
        #expect(m.msi.sent == [.init(source: MSISource(device: 1), vector: 1, message: VirtioPCIDriver.message(1))])
        #expect(m.mmio.read(address: d.caps.msixPBA, width: 4) == 0)
        // Function mask behaves the same way.
        let ctl = m.cfgRead(1, d.caps.msixCap + 2, 2)
        m.cfgWrite(1, d.caps.msixCap + 2, 2, ctl | 0x4000)
        m.msi.clear()
        try ring.setUsedEvent(1)            // the driver re-arms (event index)
        try ring.publish(0); d.kick(bell, queue: 0)
        #expect(try ring.usedIdx() == 2)
        #expect(m.msi.sent.isEmpty)
        m.cfgWrite(1, d.caps.msixCap + 2, 2, ctl & ~0x4000)
        #expect(m.msi.sent.count == 1)
    }

    @Test func routingObserverSeesTableAndVectorChanges() throws {
        let (_, t, d) = try rngMachine()
        let calls = Flag()
        t.setRoutingObserver { calls.bump() }
        #expect(d.negotiate(features))
        d.enableMSIX(vectors: 2)
        #expect(calls.count >= 2)
        let before = calls.count
        d.w16(0x16, 0); d.w16(0x1A, 1)
        #expect(calls.count == before + 1)
        let route = t.interruptRoutes().first { $0.source == .queue(0) }
        #expect(route == .init(source: .queue(0), vector: 1, message: VirtioPCIDriver.message(1), masked: false))
    }

    @Test func intxFallbackWithoutMSIX() throws {
        let line = RecordingLine()
        let (m, _, d) = try rngMachine(intx: line)
        #expect(m.cfgRead(1, 0x3C) >> 8 & 0xFF == 1)   // INTA#
        #expect(d.negotiate(features))
        var ring = try DriverRing(memory: m.memory, size: 8, base: 0x4000)
        let bell = d.setupQueue(0, ring: ring, vector: 0xFFFF)
        d.driverOK()
        try ring.setDescriptor(0, address: 0x20000, length: 8, flags: F.write)
        try ring.publish(0)
        d.kick(bell, queue: 0)
        #expect(line.level)
        #expect(m.cfgRead(1, 0x06, 2) & 0x08 != 0)     // PCI interrupt status
        #expect(m.mmio.read(address: d.caps.isr, width: 1) == 1)
        #expect(!line.level)
        #expect(m.mmio.read(address: d.caps.isr, width: 1) == 0)
        #expect(m.msi.sent.isEmpty)
    }

    @Test func barMoveFollowsMMIORouting() throws {
        let (m, t, d) = try rngMachine()
        let changes = ChangeLog()
        m.pci.setBARChangeHandler { changes.add($0) }
        let old = d.caps.bar
        let new: UInt64 = 0xE000_0000
        // Linux style: decode off, program, decode on.
        let cmd = m.cfgRead(1, 0x04, 2)
        m.cfgWrite(1, 0x04, 2, cmd & ~2)
        #expect(m.mmio.read(address: old, width: 4) == 0xFFFF_FFFF)   // unmapped while decode is off
        #expect(t.notifyAddress(queue: 0) == nil)
        m.cfgWrite(1, 0x10, 4, UInt32(new & 0xFFFF_FFFF) | 4)
        m.cfgWrite(1, 0x14, 4, 0)
        m.cfgWrite(1, 0x04, 2, cmd | 2)
        #expect(m.mmio.read(address: new + 0x12, width: 2) == 1)       // num_queues at the new place
        #expect(m.mmio.read(address: old + 0x12, width: 2) == 0xFFFF)
        #expect(t.notifyAddress(queue: 0) == new + VirtioPCILayout.notifyOffset)
        #expect(changes.all.map(\.newAddress) == [nil, new])
        #expect(changes.all.first?.oldAddress == old)
    }

    @Test func pciConfigCapabilityWindowReachesBAR() throws {
        let (m, _, d) = try rngMachine()
        let c = d.caps.pciCfgCap
        m.cfgWrite(1, c + 4, 1, 0)                        // BAR 0
        m.cfgWrite(1, c + 8, 4, 0x12)                     // num_queues
        m.cfgWrite(1, c + 12, 4, 2)
        #expect(m.cfgRead(1, c + 16, 2) == 1)
        m.cfgWrite(1, c + 8, 4, 0x16)                     // queue_select, through the window
        m.cfgWrite(1, c + 16, 2, 3)
        #expect(d.r16(0x16) == 3)
    }
}

final class ChangeLog: Sendable {
    private let s = Synchronization.Mutex<[PCIBus.BARChange]>([])
    func add(_ c: PCIBus.BARChange) { s.withLock { $0.append(c) } }
    var all: [PCIBus.BARChange] { s.withLock { $0 } }
}
