import Devices
import Synchronization

/// The host bridge at 00:00.0: class 06/00 so Linux's `pci_sanity_check` accepts configuration
/// mechanism 1. No BARs. Vendor/device 1B36:0008 (the generic "QEMU PCIe host bridge" id, which
/// no Linux quirk keys on).
public final class PCIHostBridge: PCIDevice {
    private let config = Mutex(PCIConfigSpace(vendorID: 0x1B36, deviceID: 0x0008, revision: 0, classCode: 0x06, subclass: 0x00, progIF: 0))
    public init() {}
    public func configRead(offset: Int, size: Int) -> UInt32 { config.withLock { $0.read(offset: offset, size: size) } }
    public func configWrite(offset: Int, size: Int, value: UInt32) { config.withLock { $0.write(offset: offset, size: size, value: value) } }
    public var barDefinitions: [PCIConfigSpace.BAR] { [] }
    public func setBARAddress(index: Int, address: UInt64) {}
    public func decodedBARs() -> [(bar: PCIConfigSpace.BAR, address: UInt64)] { [] }
    public func barHandler(index: Int) -> (any BusDevice)? { nil }
}
