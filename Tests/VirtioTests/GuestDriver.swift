import Devices
import GuestMemory
import Testing
import Virtio

/// A test "machine": guest RAM, port and MMIO buses, PCI bus with a host bridge.
struct Machine {
    let memory: GuestMemory
    let ports = PortIOBus()
    let mmio = MMIOBus()
    let pci: PCIBus
    let msi = RecordingMSI()
    let resets = Flag()

    init() throws { try self.init(memory: makeMemory()) }

    /// A second machine over the same RAM: what a restore builds around a snapshot's memory.
    init(memory: GuestMemory) throws {
        self.memory = memory
        let r = resets
        pci = try PCIBus.withHostBridge(mmio: mmio, mmioWindow: (0xC000_0000, 0xFEC0_0000 - 0xC000_0000), resetRequested: { r.bump() })
        try pci.register(on: ports)
    }

    // Configuration mechanism 1, as Linux's pci_conf1_read/write do it.
    func cfgRead(_ slot: UInt8, _ offset: Int, _ size: Int = 4, function: UInt8 = 0, bus: UInt8 = 0) -> UInt32 {
        let a: UInt32 = 0x8000_0000 | UInt32(bus) << 16 | UInt32(slot) << 11 | UInt32(function) << 8 | UInt32(offset & 0xFC)
        ports.write(port: 0xCF8, width: 4, value: UInt64(a))
        return UInt32(truncatingIfNeeded: ports.read(port: 0xCFC + UInt16(offset & 3), width: size))
    }

    func cfgWrite(_ slot: UInt8, _ offset: Int, _ size: Int, _ value: UInt32) {
        let a: UInt32 = 0x8000_0000 | UInt32(slot) << 11 | UInt32(offset & 0xFC)
        ports.write(port: 0xCF8, width: 4, value: UInt64(a))
        ports.write(port: 0xCFC + UInt16(offset & 3), width: size, value: UInt64(value))
    }
}

/// What a driver learns from the virtio capabilities.
struct VirtioCaps {
    var bar: UInt64 = 0
    var common: UInt64 = 0
    var notify: UInt64 = 0
    var notifyMultiplier: UInt32 = 0
    var isr: UInt64 = 0
    var device: UInt64? = nil
    var msixCap = 0
    var msixTable: UInt64 = 0
    var msixPBA: UInt64 = 0
    var msixVectors = 0
    var pciCfgCap = 0
}

/// Plays Linux's virtio_pci_modern driver against a device in `slot`.
struct VirtioPCIDriver {
    let m: Machine
    let slot: UInt8
    var caps = VirtioCaps()

    init(_ m: Machine, slot: UInt8) {
        self.m = m
        self.slot = slot
    }

    /// BAR sizing (decode off, write all-ones, read mask, restore) and capability walk.
    mutating func probe() throws {
        let cmd = m.cfgRead(slot, 0x04, 2)
        m.cfgWrite(slot, 0x04, 2, cmd & ~0x2)
        let lo = m.cfgRead(slot, 0x10), hi = m.cfgRead(slot, 0x14)
        m.cfgWrite(slot, 0x10, 4, 0xFFFF_FFFF); m.cfgWrite(slot, 0x14, 4, 0xFFFF_FFFF)
        let szLo = m.cfgRead(slot, 0x10), szHi = m.cfgRead(slot, 0x14)
        m.cfgWrite(slot, 0x10, 4, lo); m.cfgWrite(slot, 0x14, 4, hi)
        m.cfgWrite(slot, 0x04, 2, cmd | 0x6)
        #expect(lo & 0x7 == 0x4)                                   // 64-bit memory BAR
        let mask = UInt64(szHi) << 32 | UInt64(szLo & 0xFFFF_FFF0)
        #expect(~mask &+ 1 == VirtioPCILayout.barSize)
        caps.bar = UInt64(hi) << 32 | UInt64(lo & 0xFFFF_FFF0)
        #expect(m.cfgRead(slot, 0x06, 2) & 0x10 != 0)
        var p = Int(m.cfgRead(slot, 0x34, 1))
        var guardCount = 0
        while p != 0 && guardCount < 48 {
            guardCount += 1
            let id = m.cfgRead(slot, p, 1)
            if id == 0x11 {
                caps.msixCap = p
                caps.msixVectors = Int(m.cfgRead(slot, p + 2, 2) & 0x7FF) + 1
                let t = m.cfgRead(slot, p + 4), pba = m.cfgRead(slot, p + 8)
                #expect(t & 7 == 0 && pba & 7 == 0)                    // BIR 0
                caps.msixTable = caps.bar + UInt64(t & ~7)
                caps.msixPBA = caps.bar + UInt64(pba & ~7)
            } else if id == 0x09 {
                let type = m.cfgRead(slot, p + 3, 1)
                #expect(m.cfgRead(slot, p + 4, 1) == 0)               // BAR 0
                let off = UInt64(m.cfgRead(slot, p + 8)), len = m.cfgRead(slot, p + 12)
                switch type {
                case 1: caps.common = caps.bar + off; #expect(len >= 0x38)
                case 2: caps.notify = caps.bar + off; caps.notifyMultiplier = m.cfgRead(slot, p + 16)
                case 3: caps.isr = caps.bar + off
                case 4: caps.device = caps.bar + off
                case 5: caps.pciCfgCap = p
                default: Issue.record("unknown virtio cap type \(type)")
                }
            }
            p = Int(m.cfgRead(slot, p + 1, 1))
        }
        #expect(caps.common != 0 && caps.notify != 0 && caps.isr != 0 && caps.msixCap != 0 && caps.pciCfgCap != 0)
    }

    func r8(_ o: Int) -> UInt8 { UInt8(truncatingIfNeeded: m.mmio.read(address: caps.common + UInt64(o), width: 1)) }
    func r16(_ o: Int) -> UInt16 { UInt16(truncatingIfNeeded: m.mmio.read(address: caps.common + UInt64(o), width: 2)) }
    func r32(_ o: Int) -> UInt32 { UInt32(truncatingIfNeeded: m.mmio.read(address: caps.common + UInt64(o), width: 4)) }
    func w8(_ o: Int, _ v: UInt8) { m.mmio.write(address: caps.common + UInt64(o), width: 1, value: UInt64(v)) }
    func w16(_ o: Int, _ v: UInt16) { m.mmio.write(address: caps.common + UInt64(o), width: 2, value: UInt64(v)) }
    func w32(_ o: Int, _ v: UInt32) { m.mmio.write(address: caps.common + UInt64(o), width: 4, value: UInt64(v)) }
    /// vp_iowrite64_twopart
    func w64(_ o: Int, _ v: UInt64) { w32(o, UInt32(truncatingIfNeeded: v)); w32(o + 4, UInt32(truncatingIfNeeded: v >> 32)) }

    var status: UInt8 { r8(VirtioPCILayout.Common.deviceStatus) }

    func deviceFeatures() -> UInt64 {
        w32(0x00, 0); let lo = r32(0x04)
        w32(0x00, 1); let hi = r32(0x04)
        return UInt64(hi) << 32 | UInt64(lo)
    }

    /// Reset, ACK, DRIVER, features, FEATURES_OK; returns whether FEATURES_OK stuck.
    func negotiate(_ features: UInt64) -> Bool {
        w8(0x14, 0)
        #expect(status == 0)
        w8(0x14, 1); w8(0x14, 1 | 2)
        w32(0x08, 0); w32(0x0C, UInt32(truncatingIfNeeded: features))
        w32(0x08, 1); w32(0x0C, UInt32(truncatingIfNeeded: features >> 32))
        w8(0x14, 1 | 2 | 8)
        return status & 8 != 0
    }

    /// Enables MSI-X and programs `vectors` entries with distinct messages, unmasked.
    func enableMSIX(vectors: Int, maskAll: Bool = false) {
        let ctl = m.cfgRead(slot, caps.msixCap + 2, 2)
        m.cfgWrite(slot, caps.msixCap + 2, 2, ctl | 0x8000 | 0x4000)   // enable + function mask while programming
        for v in 0..<vectors {
            let e = caps.msixTable + 16 * UInt64(v)
            m.mmio.write(address: e, width: 4, value: 0xFEE0_0000 | UInt64(v) << 12)
            m.mmio.write(address: e + 4, width: 4, value: 0)
            m.mmio.write(address: e + 8, width: 4, value: 0x40 + UInt64(v))
            m.mmio.write(address: e + 12, width: 4, value: maskAll ? 1 : 0)
        }
        m.cfgWrite(slot, caps.msixCap + 2, 2, (ctl | 0x8000) & ~0x4000)
    }

    static func message(_ v: Int) -> MSIMessage { MSIMessage(address: 0xFEE0_0000 | UInt64(v) << 12, data: 0x40 + UInt32(v)) }

    /// Sets up queue `q` on `ring` with MSI-X vector `vector`; returns the queue's doorbell address.
    func setupQueue(_ q: UInt16, ring: DriverRing, vector: UInt16) -> UInt64 {
        w16(0x16, q)
        #expect(r16(0x18) >= ring.size)
        w16(0x18, ring.size)
        w16(0x1A, vector)
        #expect(r16(0x1A) == vector)
        w64(0x20, ring.desc); w64(0x28, ring.avail); w64(0x30, ring.used)
        #expect(UInt64(r32(0x20)) | UInt64(r32(0x24)) << 32 == ring.desc)
        let off = r16(0x1E)
        w16(0x1C, 1)
        #expect(r16(0x1C) == 1)
        return caps.notify + UInt64(off) * UInt64(caps.notifyMultiplier)
    }

    func driverOK() { w8(0x14, 1 | 2 | 8 | 4) }
    func kick(_ doorbell: UInt64, queue: UInt16) { m.mmio.write(address: doorbell, width: 2, value: UInt64(queue)) }
}
