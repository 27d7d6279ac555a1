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
}
