import Synchronization
import VireoSupport

/// Snapshot state of a virtio-pci function: its registers (PCI config space, MSI-X table, the
/// common configuration), where the device stands in each ring, and the back end's own state.
/// Requests are never in flight in a saved state: back ends complete each request inside
/// `processQueue`, and a snapshot is taken with every device quiesced (`whileQuiesced`).
extension VirtioPCIDevice {
    public struct Saved: Codable, Sendable, Equatable {
        public struct Queue: Codable, Sendable, Equatable {
            public var size: UInt16
            public var vector: UInt16
            public var enabled: Bool
            public var desc: UInt64
            public var driver: UInt64
            public var device: UInt64
            /// Nil while the device is not active (the driver is still setting it up).
            public var position: VirtqueueSplit.Position?
        }
        /// The device type (PCI device id 0x1040 + type); a restore into another type is refused.
        public var deviceType: UInt16
        public var config: [UInt8]
        public var msixEntries: [MSIXTable.Entry]
        public var msixPending: [Bool]
        public var deviceFeatureSelect: UInt32
        public var driverFeatureSelect: UInt32
        public var driverFeatures: UInt64
        public var configVector: UInt16
        public var status: UInt8
        public var configGeneration: UInt8
        public var queueSelect: UInt16
        public var queues: [Queue]
        public var isr: UInt8
        public var active: Bool
        public var backend: VirtioBackendState

        enum CodingKeys: String, CodingKey {
            case deviceType = "device_type", config, msixEntries = "msix_entries", msixPending = "msix_pending"
            case deviceFeatureSelect = "device_feature_select", driverFeatureSelect = "driver_feature_select"
            case driverFeatures = "driver_features", configVector = "config_vector", status
            case configGeneration = "config_generation", queueSelect = "queue_select", queues, isr, active, backend
        }
    }

    /// The guest-physical ranges of the rings of every enabled queue while the device is active:
    /// the device writes the used rings through pointers it took at activation, which a live
    /// migration must send again at the end.
    public func activeRingRanges() -> [(address: UInt64, length: UInt64)] {
        state.withLock { s in
            guard s.active else { return [] }
            return s.queues.filter(\.enabled).flatMap { q -> [(address: UInt64, length: UInt64)] in
                let l = q.layout
                return [(l.descriptorTable, l.descriptorTableBytes), (l.availableRing, l.availableRingBytes), (l.usedRing, l.usedRingBytes)]
            }
        }
    }

    /// Runs `body` with the back end quiesced: no queue is processed (the event loop waits) and
    /// no register access reaches the back end until it returns. A snapshot saves every device
    /// and writes guest RAM inside this, so RAM and the saved ring positions agree.
    public func whileQuiesced(_ body: () throws -> Void) throws {
        try backendLock.withLock { _ in try body() }
    }

    /// The device's state. Call inside `whileQuiesced` (the back-end lock is held there).
    public func savedWhileQuiesced() -> Saved {
        let backend = device.saveState()
        let positions = liveQueues.map { $0?.position }
        return state.withLock { s in
            Saved(deviceType: deviceType.rawValue, config: s.config.bytes,
                  msixEntries: s.msix.entries, msixPending: s.msix.pending,
                  deviceFeatureSelect: s.deviceFeatureSelect, driverFeatureSelect: s.driverFeatureSelect,
                  driverFeatures: s.driverFeatures, configVector: s.configVector, status: s.status,
                  configGeneration: s.configGeneration, queueSelect: s.queueSelect,
                  queues: s.queues.enumerated().map { i, q in
                      Saved.Queue(size: q.size, vector: q.vector, enabled: q.enabled, desc: q.desc, driver: q.driver, device: q.device,
                                  position: i < positions.count ? positions[i] : nil)
                  },
                  isr: s.isr, active: s.active, backend: backend)
        }
    }

    /// Puts a saved state back into a freshly built device of the same kind (restore, before any
    /// vCPU runs). Everything in `saved` is checked against this device; a mismatch throws and
    /// the device stays as built. An active device is re-activated: its queues are bound to
    /// the saved rings and continue from the saved positions, then the back end takes its own
    /// state. The VMM re-reads the MSI-X routes and the BAR mapping afterwards.
    public func restore(_ saved: Saved) throws {
        guard saved.deviceType == deviceType.rawValue else {
            throw VirtioStateError("saved state of a virtio device of type \(saved.deviceType) restored into a \(deviceType) device")
        }
        guard saved.queues.count == queueCount else {
            throw VirtioStateError("saved \(deviceType) device has \(saved.queues.count) queues, this one \(queueCount)")
        }
        guard saved.driverFeatures & ~offeredFeatures == 0 else {
            throw VirtioStateError("saved \(deviceType) device negotiated features this one does not offer")
        }
        try backendLock.withLock { _ in
            // Everything is checked and built first; the device changes only when all of it fits.
            var next = state.withLock { $0 }
            guard next.config.restoreBytes(saved.config) else {
                throw VirtioStateError("saved \(deviceType) device's PCI configuration is not this device's")
            }
            guard next.msix.restore(entries: saved.msixEntries, pending: saved.msixPending) else {
                throw VirtioStateError("saved \(deviceType) device has \(saved.msixEntries.count) MSI-X vectors, this one \(next.msix.count)")
            }
            let vectors = next.msix.count
            for (i, q) in saved.queues.enumerated() {
                guard q.size > 0, q.size <= next.queues[i].maxSize else {
                    throw VirtioStateError("saved \(deviceType) queue \(i) has size \(q.size), more than its \(next.queues[i].maxSize)")
                }
                next.queues[i].size = q.size
                next.queues[i].vector = Int(q.vector) < vectors ? q.vector : virtioNoVector
                next.queues[i].enabled = q.enabled
                next.queues[i].desc = q.desc; next.queues[i].driver = q.driver; next.queues[i].device = q.device
            }
            let ctl = next.config.get16(next.msixCap + 2)
            next.msix.enabled = ctl & 0x8000 != 0
            next.msix.functionMasked = ctl & 0x4000 != 0
            next.deviceFeatureSelect = saved.deviceFeatureSelect
            next.driverFeatureSelect = saved.driverFeatureSelect
            next.driverFeatures = saved.driverFeatures
            next.configVector = Int(saved.configVector) < vectors ? saved.configVector : virtioNoVector
            next.status = saved.status
            next.configGeneration = saved.configGeneration
            next.queueSelect = saved.queueSelect
            next.isr = saved.isr
            next.active = false
            var queues: [VirtqueueSplit?] = []
            if saved.active {
                let features = saved.driverFeatures
                for (i, q) in saved.queues.enumerated() {
                    guard q.enabled else { queues.append(nil); continue }
                    let layout = VirtqueueLayout(size: q.size, descriptorTable: q.desc, availableRing: q.driver, usedRing: q.device)
                    let vq: VirtqueueSplit
                    do {
                        vq = try VirtqueueSplit(layout: layout, maxSize: device.queueMaxSizes[i], memory: memory,
                                                eventIndex: features & VirtioFeature.eventIndex != 0,
                                                indirectDescriptors: features & VirtioFeature.indirectDescriptors != 0)
                    } catch {
                        throw VirtioStateError("saved \(deviceType) queue \(i): \(error)")
                    }
                    if let p = q.position { vq.restore(p) }
                    queues.append(vq)
                }
                guard let interruptHandle else { throw VirtioStateError("the \(deviceType) device is not wired") }
                do {
                    try device.activate(VirtioActivation(memory: memory, features: features, queues: queues, interrupt: interruptHandle))
                    try device.restoreState(saved.backend)
                } catch {
                    device.reset()
                    if let e = error as? VirtioStateError { throw e }
                    throw VirtioStateError("saved \(deviceType) device: \(error)")
                }
                next.active = true
            } else if saved.backend != .none && saved.backend.kind != device.saveState().kind {
                throw VirtioStateError("a \(deviceType) device has no state of kind \(saved.backend.kind)")
            }
            liveQueues = queues
            state.withLock { $0 = next }
        }
        notifyRoutingObserver()
    }
}
