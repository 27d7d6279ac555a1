import Devices
import GuestMemory
import Synchronization
import VireoSupport

/// PCI bus 0 with configuration mechanism 1, and the MMIO routing of its devices' BARs.
///
/// Register it on the port-I/O bus at 0xCF8, 8 ports (`register(on:)`). 0xCF8 is the 32-bit
/// address register (bit 31 enable, bus 23:16, device 15:11, function 10:8, register 7:2);
/// 0xCFC-0xCFF is the data window (sub-dword accesses select bytes of the dword). A one-byte
/// write to 0xCF9 is the PC reset control register: bit 2 (with bit 1 for a hard reset) asks
/// for a reset through `resetRequested`. Functions other than 0 and empty slots read all-ones.
///
/// BARs are allocated by `add(_:slot:)` from the MMIO window, naturally aligned, and mapped on the
/// `MMIOBus`. When the guest moves a BAR or toggles memory decoding the mapping follows, and
/// `onBARChange` tells the VMM (to move ioeventfds). A BAR moved onto an occupied range is left
/// unmapped (the guest's problem) rather than disturbing other devices.
///
/// Concurrency: thread-safe. The address register is per bus (as in hardware: concurrent
/// vCPUs must serialise their own 0xCF8/0xCFC pairs, as Linux does with `pci_config_lock`).
public final class PCIBus: BusDevice {
    public struct BARChange: Sendable {
        public var device: PCIAddress
        public var bar: Int
        public var oldAddress: UInt64?
        public var newAddress: UInt64?
    }

    struct Slot {
        var device: any PCIDevice
        var mapped: [Int: (address: UInt64, size: UInt64)] = [:]
    }

    struct State {
        var address: UInt32 = 0
        var resetControl: UInt8 = 0
        var slots: [Int: Slot] = [:]
        var nextFree: UInt64
        var onBARChange: (@Sendable (BARChange) -> Void)?
    }

    public let mmio: MMIOBus
    public let window: (base: UInt64, size: UInt64)
    let state: Mutex<State>
    private let routing = Mutex(())          // serialises BAR re-mapping
    private let resetRequested: @Sendable () -> Void

    /// `mmioWindow` is where BARs are allocated (e.g. 0xC000_0000 ..< 0xFEC0_0000).
    public init(mmio: MMIOBus, mmioWindow: (base: UInt64, size: UInt64), resetRequested: @escaping @Sendable () -> Void = {}) {
        self.mmio = mmio
        self.window = mmioWindow
        self.resetRequested = resetRequested
        self.state = Mutex(State(nextFree: mmioWindow.base))
    }

    /// A bus with the host bridge already at 00:00.0.
    public static func withHostBridge(mmio: MMIOBus, mmioWindow: (base: UInt64, size: UInt64), resetRequested: @escaping @Sendable () -> Void = {}) throws -> PCIBus {
        let bus = PCIBus(mmio: mmio, mmioWindow: mmioWindow, resetRequested: resetRequested)
        _ = try bus.add(PCIHostBridge(), slot: 0)
        return bus
    }

    public func register(on ports: PortIOBus) throws {
        try ports.register(self, port: 0xCF8, count: 8, name: "PCI config mechanism 1")
    }

    /// Called after any BAR mapping change (set before the guest runs).
    public func setBARChangeHandler(_ handler: @escaping @Sendable (BARChange) -> Void) {
        state.withLock { $0.onBARChange = handler }
    }

    /// Plugs `device` in at `slot` (or the first free slot 1...31), allocates and maps its BARs.
    @discardableResult
    public func add(_ device: any PCIDevice, slot: UInt8? = nil) throws -> PCIAddress {
        let address: PCIAddress = try state.withLock { s in
            let n: Int
            if let slot {
                guard slot < 32, s.slots[Int(slot)] == nil else {
                    throw VireoError(.conflict, "PCI slot \(slot) is taken or invalid")
                }
                n = Int(slot)
            } else {
                guard let free = (1..<32).first(where: { s.slots[$0] == nil }) else {
                    throw VireoError(.outOfRange, "all 31 PCI slots are in use")
                }
                n = free
            }
            // Allocate BARs, largest first, naturally aligned.
            var next = s.nextFree
            var assigned: [(Int, UInt64)] = []
            for bar in device.barDefinitions.sorted(by: { $0.size > $1.size }) {
                let mask = bar.size &- 1
                let (aligned, o1) = next.addingReportingOverflow(mask)
                let base = aligned & ~mask
                let (end, o2) = base.addingReportingOverflow(bar.size)
                guard !o1, !o2, end <= window.base &+ window.size, bar.kind == .memory64 || end <= 1 << 32 else {
                    throw VireoError(.outOfRange, "the PCI MMIO window has no room for a \(ByteSize.format(bar.size)) BAR")
                }
                assigned.append((bar.index, base))
                next = end
            }
            s.nextFree = next
            s.slots[n] = Slot(device: device)
            for (i, a) in assigned { device.setBARAddress(index: i, address: a) }
            return PCIAddress(device: UInt8(n))
        }
        device.attached(at: address)
        updateMappings(slot: Int(address.device))
        return address
    }

    public func device(at slot: UInt8) -> (any PCIDevice)? { state.withLock { $0.slots[Int(slot)]?.device } }

    // MARK: Port I/O

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        switch offset {
        case 0...3:
            let (addr, reset) = state.withLock { ($0.address, $0.resetControl) }
            if data.count == 1 && offset == 1 { data[0] = reset; return }
            let shifted = UInt64(addr) >> (8 * offset)
            data.storeLittleEndian(shifted)
        case 4...7:
            guard let (dev, reg) = selected() else { return }    // bus pre-filled all-ones
            let off = reg + Int(offset - 4)
            guard off % data.count == 0 || data.count == 1 else { return }
            data.storeLittleEndian(UInt64(dev.configRead(offset: off, size: data.count)))
        default:
            break
        }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        let value = data.littleEndianValue
        switch offset {
        case 0 where data.count == 4:
            state.withLock { $0.address = UInt32(truncatingIfNeeded: value) & 0x80FF_FFFC }
        case 1 where data.count == 1:
            // 0xCF9: reset control. Bit 2 (RST_CPU) triggers; bit 1 selects hard reset.
            let v = UInt8(truncatingIfNeeded: value)
            state.withLock { $0.resetControl = v & 0x0A }
            if v & 0x04 != 0 { resetRequested() }
        case 4...7:
            guard let (dev, reg) = selected() else { return }
            let off = reg + Int(offset - 4)
            guard off % data.count == 0 || data.count == 1 else { return }
            dev.configWrite(offset: off, size: data.count, value: UInt32(truncatingIfNeeded: value))
            if let slot = selectedSlot() { updateMappings(slot: slot) }
        default:
            break   // other sub-dword writes to the address register are ignored
        }
    }

    private func selectedSlot() -> Int? {
        state.withLock { s in
            let a = s.address
            guard a & 0x8000_0000 != 0, (a >> 16) & 0xFF == 0, (a >> 8) & 0x7 == 0 else { return nil }
            return Int((a >> 11) & 0x1F)
        }
    }

    private func selected() -> (any PCIDevice, Int)? {
        state.withLock { s in
            let a = s.address
            guard a & 0x8000_0000 != 0, (a >> 16) & 0xFF == 0, (a >> 8) & 0x7 == 0,
                  let slot = s.slots[Int((a >> 11) & 0x1F)] else { return nil }
            return (slot.device, Int(a & 0xFC))
        }
    }

    // MARK: BAR routing

    /// Re-derives the MMIO mappings of the device in `slot` from its config space.
    public func updateMappings(slot: Int) {
        routing.withLock { _ in
            guard let (device, current, handler) = state.withLock({ s -> (any PCIDevice, [Int: (address: UInt64, size: UInt64)], (@Sendable (BARChange) -> Void)?)? in
                guard let sl = s.slots[slot] else { return nil }
                return (sl.device, sl.mapped, s.onBARChange)
            }) else { return }
            var wanted: [Int: (address: UInt64, size: UInt64)] = [:]
            for (bar, address) in device.decodedBARs() { wanted[bar.index] = (address, bar.size) }
            var mapped = current
            var changes: [BARChange] = []
            let pci = PCIAddress(device: UInt8(slot))
            for (index, old) in current where wanted[index].map({ $0.address != old.address }) ?? true {
                mmio.unregister(address: old.address)
                mapped[index] = nil
                changes.append(BARChange(device: pci, bar: index, oldAddress: old.address, newAddress: nil))
            }
            for (index, want) in wanted.sorted(by: { $0.key < $1.key }) where mapped[index] == nil {
                guard let h = device.barHandler(index: index) else { continue }
                do {
                    try mmio.register(h, address: want.address, length: want.size, name: "PCI \(pci) BAR\(index)")
                    mapped[index] = want
                    if let i = changes.firstIndex(where: { $0.bar == index }) {
                        changes[i].newAddress = want.address
                    } else {
                        changes.append(BARChange(device: pci, bar: index, oldAddress: nil, newAddress: want.address))
                    }
                } catch {
                    // Overlaps another range: stays unmapped until the guest fixes it.
                }
            }
            state.withLock { $0.slots[slot]?.mapped = mapped }
            for c in changes {
                device.barMapped(index: c.bar, address: c.newAddress)
                handler?(c)
            }
        }
    }
}

extension PCIBus {
    /// The bus's own registers (the CONFIG_ADDRESS latch at 0xCF8, the reset control at 0xCF9),
    /// for snapshots. Functions' config spaces are saved with their devices.
    public struct Saved: Codable, Sendable, Equatable {
        public var address: UInt32
        public var resetControl: UInt8
    }

    public func save() -> Saved { state.withLock { Saved(address: $0.address, resetControl: $0.resetControl) } }

    public func restore(_ v: Saved) { state.withLock { $0.address = v.address; $0.resetControl = v.resetControl } }

    /// How many functions are on the bus besides the host bridge.
    public var functionsBesidesHostBridge: Int { state.withLock { $0.slots.keys.filter { $0 != 0 }.count } }
}
