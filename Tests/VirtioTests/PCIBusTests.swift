import Devices
import Testing
import Virtio

@Suite struct PCIBusTests {
    @Test func configMechanismOneBasics() throws {
        let m = try Machine()
        // Linux's pci_check_type1 probe.
        m.ports.write(port: 0xCFB, width: 1, value: 0x01)
        m.ports.write(port: 0xCF8, width: 4, value: 0x8000_0000)
        #expect(m.ports.read(port: 0xCF8, width: 4) == 0x8000_0000)
        #expect(m.cfgRead(0, 0) == 0x0008_1B36)
        #expect(m.cfgRead(0, 0, 2) == 0x1B36)
        #expect(m.cfgRead(0, 2, 2) == 0x0008)
        #expect(m.cfgRead(0, 0x0B, 1) == 0x06)
        #expect(m.cfgRead(0, 0, function: 1) == 0xFFFF_FFFF)
        #expect(m.cfgRead(0, 0, bus: 1) == 0xFFFF_FFFF)
        #expect(m.cfgRead(7, 0) == 0xFFFF_FFFF)
        // Enable bit clear: data port reads all-ones.
        m.ports.write(port: 0xCF8, width: 4, value: 0)
        #expect(m.ports.read(port: 0xCFC, width: 4) == 0xFFFF_FFFF)
        // Vendor/device ids are read-only.
        m.cfgWrite(0, 0, 4, 0x1234_5678)
        #expect(m.cfgRead(0, 0) == 0x0008_1B36)
    }

    @Test func resetControlRegister() throws {
        let m = try Machine()
        m.ports.write(port: 0xCF9, width: 1, value: 0x02)
        #expect(m.resets.count == 0)
        m.ports.write(port: 0xCF9, width: 1, value: 0x06)
        #expect(m.resets.count == 1)
    }

    @Test func barSizingAndAllocation() throws {
        var cfg = PCIConfigSpace(vendorID: 1, deviceID: 2, revision: 0, classCode: 0xFF, subclass: 0, progIF: 0)
        let bar1 = cfg.defineBAR(index: 0, size: 0x1000, kind: .memory32); #expect(bar1)
        let bar2 = cfg.defineBAR(index: 2, size: 1 << 33, kind: .memory64, prefetchable: true); #expect(bar2)
        let bar3 = cfg.defineBAR(index: 3, size: 0x1000, kind: .memory32); #expect(!bar3)   // upper half of BAR 2
        let bar4 = cfg.defineBAR(index: 5, size: 0x1000, kind: .memory64); #expect(!bar4)   // would need BAR 6
        let bar5 = cfg.defineBAR(index: 4, size: 0x1001, kind: .memory32); #expect(!bar5)
        cfg.write(offset: 0x10, size: 4, value: 0xFFFF_FFFF)
        #expect(cfg.read(offset: 0x10, size: 4) == 0xFFFF_F000)
        cfg.write(offset: 0x18, size: 4, value: 0xFFFF_FFFF)
        cfg.write(offset: 0x1C, size: 4, value: 0xFFFF_FFFF)
        #expect(cfg.read(offset: 0x18, size: 4) == 0x0000_000C)             // 8 GiB: low dword all zero + flags
        #expect(cfg.read(offset: 0x1C, size: 4) == 0xFFFF_FFFE)
        // Out-of-range config accesses.
        #expect(cfg.read(offset: 255, size: 4) == 0xFFFF_FFFF)
        cfg.write(offset: -1, size: 4, value: 0)
    }

    @Test func slotsAndWindowExhaustion() throws {
        let m = try Machine()
        #expect(throws: Error.self) { try m.pci.add(PCIHostBridge(), slot: 0) }
        #expect(throws: Error.self) { try m.pci.add(PCIHostBridge(), slot: 32) }
        let small = PCIBus(mmio: MMIOBus(), mmioWindow: (0xC000_0000, 0x8000))
        let t1 = try VirtioPCIDevice(device: VirtioRNG(), memory: m.memory, msi: m.msi)
        let t2 = try VirtioPCIDevice(device: VirtioRNG(), memory: m.memory, msi: m.msi)
        try small.add(t1)
        #expect(throws: Error.self) { try small.add(t2) }
    }
}
