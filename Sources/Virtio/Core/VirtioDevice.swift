import GuestMemory

/// How a back end raises interrupts; implemented by the transport (MSI-X, or INTx + ISR).
/// Safe to call from the back end's thread at any time.
public protocol VirtioInterrupt: AnyObject, Sendable {
    /// The device used buffers on queue `index` and the queue wants an interrupt
    /// (call after `VirtqueueSplit.needsNotification()` returned true).
    func signalQueue(_ index: Int)
    /// The device configuration changed (bumps config_generation, raises the config vector).
    func signalConfigChange()
}

/// What a back end receives when the driver sets DRIVER_OK.
public struct VirtioActivation: @unchecked Sendable {
    public let memory: GuestMemory
    /// Negotiated features (driver-acknowledged, a subset of what was offered).
    public let features: UInt64
    /// One entry per queue the device declared; nil where the driver left the queue disabled.
    public let queues: [VirtqueueSplit?]
    public let interrupt: any VirtioInterrupt

    public init(memory: GuestMemory, features: UInt64, queues: [VirtqueueSplit?], interrupt: any VirtioInterrupt) {
        self.memory = memory; self.features = features; self.queues = queues; self.interrupt = interrupt
    }
}

/// A virtio device back end (rng, block, net, ...), transport-independent.
///
/// Concurrency: the transport calls every method with its back-end lock held, so a back end sees
/// one call at a time and needs no locking of its own for state touched only here. The calls come
/// from vCPU threads (config accesses, status writes, fallback notifications) and from the VMM's
/// event loop (`processQueue` on an ioeventfd). A back end with other threads (an I/O thread) must
/// synchronise those itself.
///
/// Errors: anything `activate` or `processQueue` throws is treated as a guest fault: the
/// transport sets DEVICE_NEEDS_RESET and stops processing until the driver resets the device.
/// Host-side failures the guest should see (disk I/O errors) must be reported in-band instead.
public protocol VirtioDevice: AnyObject {
    var deviceType: VirtioDeviceType { get }
    /// Device-specific feature bits offered. The transport adds VERSION_1, EVENT_IDX and INDIRECT_DESC.
    var deviceFeatures: UInt64 { get }
    /// Maximum size of each queue (the number of queues is the count).
    var queueMaxSizes: [UInt16] { get }
    /// Bytes of device-specific configuration space (0 for none).
    var configSize: Int { get }
    /// Reads `data.count` bytes of device configuration at `offset` (already bounds-checked).
    func readConfig(offset: Int, into data: UnsafeMutableRawBufferPointer)
    /// Writes device configuration (already bounds-checked); ignore read-only fields.
    func writeConfig(offset: Int, data: UnsafeRawBufferPointer)
    /// The driver finished initialisation (DRIVER_OK).
    func activate(_ activation: VirtioActivation) throws
    /// The driver notified queue `index`, or the VMM polls it. Returns true when the back end
    /// stopped early (its per-call budget, so a guest that keeps the ring full cannot monopolise
    /// the thread) with buffers still pending: the caller must call again soon.
    func processQueue(_ index: Int) throws -> Bool
    /// Return to the initial state; drop queues and activation.
    func reset()
    /// The back end's own state for a snapshot, beyond its queues' positions (which the
    /// transport saves). Called with the device quiesced (no `processQueue` running).
    func saveState() -> VirtioBackendState
    /// Puts saved state back, right after `activate` on restore (the queues already continue
    /// from their saved positions). Throws when the state is not this kind of device's.
    func restoreState(_ state: VirtioBackendState) throws
}

extension VirtioDevice {
    /// Back ends whose whole state is their queues.
    public func saveState() -> VirtioBackendState { .none }
    public func restoreState(_ state: VirtioBackendState) throws {
        guard state == .none else { throw VirtioStateError("a \(deviceType) device has no state of kind \(state.kind)") }
    }
}

/// A back end's state beyond its queues, in a snapshot (docs/snapshots.md). Descriptor chains a
/// back end had taken from a ring and still holds are saved as their head indices and walked
/// again on restore (the driver leaves them untouched while the device owns them).
public enum VirtioBackendState: Codable, Sendable, Equatable {
    case none
    /// virtio-net: receive buffers taken and not yet filled. A frame read from the host side
    /// and not yet delivered is not saved (a dropped frame, which networks tolerate).
    case net(heldHeads: [UInt16])
    /// virtio-balloon: the host's target, the driver's `actual`, the stats buffer held for the
    /// next request.
    case balloon(targetPages: UInt32, actualPages: UInt32, statsHead: UInt16?)
    /// virtio-console: host input not yet delivered, and the console size.
    case console(input: [UInt8], cols: UInt16, rows: UInt16)
    /// virtio-vsock: a receive buffer held. Connections do not survive a restore: the guest is
    /// told with a transport-reset event and its sockets see the reset.
    case vsock(heldHead: UInt16?)

    public var kind: String {
        switch self {
        case .none: return "none"
        case .net: return "net"
        case .balloon: return "balloon"
        case .console: return "console"
        case .vsock: return "vsock"
        }
    }
}

/// A snapshot's device state that does not fit the device it is restored into.
public struct VirtioStateError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}
