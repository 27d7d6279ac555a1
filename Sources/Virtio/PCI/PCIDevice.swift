import Devices

/// A PCI function on the bus.
///
/// Concurrency: called from vCPU threads (config cycles, BAR MMIO), possibly concurrently;
/// implementations lock their own state.
public protocol PCIDevice: AnyObject, Sendable {
    /// Configuration read of 1, 2 or 4 bytes at `offset` (0..<256, size-aligned).
    func configRead(offset: Int, size: Int) -> UInt32
    /// Configuration write; after it returns the bus re-reads `decodedBARs()` to follow BAR moves.
    func configWrite(offset: Int, size: Int, value: UInt32)
    /// The BARs the device has (index, size), for the VMM's initial allocation.
    var barDefinitions: [PCIConfigSpace.BAR] { get }
    /// Device-side programming of a BAR's address (allocation before the guest runs).
    func setBARAddress(index: Int, address: UInt64)
    /// The BARs currently decoded (memory space enabled), with their guest addresses.
    func decodedBARs() -> [(bar: PCIConfigSpace.BAR, address: UInt64)]
    /// The MMIO handler of BAR `index` (offsets relative to the BAR base).
    func barHandler(index: Int) -> (any BusDevice)?
    /// The bus tells the device where it sits (for MSI requester ids, notify addresses).
    func attached(at address: PCIAddress)
    /// Called after the bus (un)mapped one of the device's BARs.
    func barMapped(index: Int, address: UInt64?)
}

extension PCIDevice {
    public func attached(at address: PCIAddress) {}
    public func barMapped(index: Int, address: UInt64?) {}
}

/// Bus/device/function.
public struct PCIAddress: Sendable, Hashable, CustomStringConvertible {
    public var bus: UInt8
    public var device: UInt8
    public var function: UInt8
    public init(bus: UInt8 = 0, device: UInt8, function: UInt8 = 0) { self.bus = bus; self.device = device; self.function = function }
    public var msiSource: MSISource { MSISource(bus: bus, device: device, function: function) }
    public var description: String { msiSource.description }
}
