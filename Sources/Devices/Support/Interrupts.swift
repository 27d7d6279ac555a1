/// A wired (INTx / ISA) interrupt input of the interrupt controllers.
///
/// The VMM implements it with KVM_IRQ_LINE (level) or an irqfd (edge; `set(level: true)`
/// then may simply trigger). Devices call it from vCPU threads and from the event loop;
/// implementations must be thread-safe.
public protocol InterruptLine: AnyObject, Sendable {
    /// Drives the line to `level` (true = asserted). Devices call this on every change of their
    /// interrupt condition; calling it with an unchanged level is allowed and harmless.
    func set(level: Bool)
    /// An edge: assert then deassert.
    func pulse()
}

extension InterruptLine {
    public func pulse() { set(level: true); set(level: false) }
}

/// One MSI message: what the device writes, and where, to raise an interrupt.
public struct MSIMessage: Sendable, Equatable, Hashable {
    public var address: UInt64
    public var data: UInt32
    public init(address: UInt64, data: UInt32) { self.address = address; self.data = data }
}

/// Sends MSI messages to the local APICs. The VMM implements it with KVM_SIGNAL_MSI, or by
/// writing the irqfd it bound (through a KVM GSI route) to the vector.
/// Called from the event-loop thread and from vCPU threads (unmasking a pending vector):
/// implementations must be thread-safe.
public protocol MSIDelivery: AnyObject, Sendable {
    /// `vector` identifies the MSI-X table entry within `source` so an irqfd-based implementation
    /// can pick the right eventfd; `message` is the entry's current address/data.
    func deliver(source: MSISource, vector: UInt16, message: MSIMessage)
}

/// Identifies the device raising an MSI (PCI bus/device/function), for routing tables.
public struct MSISource: Sendable, Hashable, CustomStringConvertible {
    public var bus: UInt8
    public var device: UInt8
    public var function: UInt8
    public init(bus: UInt8 = 0, device: UInt8, function: UInt8 = 0) {
        self.bus = bus; self.device = device; self.function = function
    }
    /// The PCI requester id (bus << 8 | device << 3 | function), what KVM's MSI `devid` wants.
    public var requesterID: UInt16 { UInt16(bus) << 8 | UInt16(device & 0x1F) << 3 | UInt16(function & 7) }
    public var description: String {
        let d = String(device, radix: 16), f = String(function, radix: 16)
        return "00:\(d.count < 2 ? "0" + d : d).\(f)"
    }
}

/// An interrupt line that goes nowhere (devices created before the VMM wires them).
public final class NullInterruptLine: InterruptLine {
    public init() {}
    public func set(level: Bool) {}
}
