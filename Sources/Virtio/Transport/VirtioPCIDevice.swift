import Devices
import GuestMemory
import Synchronization
import VireoSupport

/// The virtio 1.x modern PCI transport (no legacy interface) around one `VirtioDevice` back end.
///
/// PCI identity: vendor 0x1AF4, device 0x1040 + type, revision 1, subsystem 1AF4:1100.
/// BAR 0 (64-bit memory, 32 KiB; see `VirtioPCILayout`) holds the common configuration, ISR,
/// device configuration, notification doorbells (`notify_off_multiplier` 4, one doorbell per
/// queue) and the MSI-X table and PBA. Capabilities: MSI-X, then the virtio common / notify /
/// ISR / device / PCI-configuration-access capabilities.
///
/// Interrupts: with MSI-X enabled, queue and configuration interrupts go to their vectors through
/// `MSIDelivery` (masked vectors latch their pending bit and fire on unmask). With MSI-X disabled
/// the ISR bits are set and the optional INTx line is raised until the driver reads the ISR.
///
/// Guest faults (bad queue layout at DRIVER_OK, malformed chains, any error thrown by the back
/// end) set DEVICE_NEEDS_RESET (0x40), bump config_generation and raise the configuration
/// interrupt; the device then ignores notifications until the driver writes status 0.
///
/// Concurrency (`@unchecked Sendable`, two locks, always taken in this order):
/// 1. `backendLock` serialises every call into the back end (activate, processQueue, reset,
///    device-config access): vCPU threads (register writes, fallback doorbells) and the VMM's
///    event loop (`processQueue` on an ioeventfd) may both call in.
/// 2. `state` (a `Mutex`) guards the registers: common config, PCI config space, MSI-X table, ISR.
/// Interrupt delivery and observer callbacks run with neither lock held except `backendLock`
/// when they are caused by the back end.
public final class VirtioPCIDevice: PCIDevice, BusDevice, @unchecked Sendable {
    /// One interrupt source's current MSI-X routing, for the VMM's KVM GSI routes and irqfds.
    public struct InterruptRoute: Sendable, Equatable {
        public enum Source: Sendable, Equatable, Hashable { case config, queue(Int) }
        public var source: Source
        public var vector: UInt16
        /// nil when the vector is out of range or NO_VECTOR.
        public var message: MSIMessage?
        public var masked: Bool
        public init(source: Source, vector: UInt16, message: MSIMessage?, masked: Bool) {
            self.source = source; self.vector = vector; self.message = message; self.masked = masked
        }
    }

    struct QueueRegisters {
        let maxSize: UInt16
        var size: UInt16
        var vector = virtioNoVector
        var enabled = false
        var desc: UInt64 = 0
        var driver: UInt64 = 0
        var device: UInt64 = 0
        init(maxSize: UInt16) { self.maxSize = maxSize; self.size = maxSize }
        var layout: VirtqueueLayout { VirtqueueLayout(size: size, descriptorTable: desc, availableRing: driver, usedRing: device) }
    }

    struct State {
        var config: PCIConfigSpace
        var msix: MSIXTable
        var msixCap = 0
        var pciCfgCap = 0
        var deviceFeatureSelect: UInt32 = 0
        var driverFeatureSelect: UInt32 = 0
        var driverFeatures: UInt64 = 0
        var configVector = virtioNoVector
        var status: UInt8 = 0
        var configGeneration: UInt8 = 0
        var queueSelect: UInt16 = 0
        var queues: [QueueRegisters]
        var isr: UInt8 = 0
        var intxLevel = false
        var active = false
        var barAddress: UInt64? = nil
        var pciAddress = PCIAddress(device: 0)
        var routingObserver: (@Sendable () -> Void)? = nil
        var notifyHandler: (@Sendable (Int) -> Void)? = nil
        var lastFault: String? = nil
        var faults: UInt64 = 0
    }

    enum Delivery {
        case msi(UInt16, MSIMessage)
        case intx(Bool)
    }

    public let device: any VirtioDevice
    public let memory: GuestMemory
    public let offeredFeatures: UInt64
    public let deviceType: VirtioDeviceType
    let queueCount: Int
    private let configSize: Int
    private let msi: any MSIDelivery
    private let intx: (any InterruptLine)?
    let backendLock = Mutex(())
    let state: Mutex<State>
    /// The queues handed to the back end at activation (guarded by `backendLock`), kept so a
    /// snapshot can read where the device stands in each ring.
    var liveQueues: [VirtqueueSplit?] = []
    private(set) var interruptHandle: TransportInterrupt? = nil   // set once in init

    /// - Parameters:
    ///   - intx: the INTx line (for drivers that do not enable MSI-X); nil advertises no pin.
    public init(device: any VirtioDevice, memory: GuestMemory, msi: any MSIDelivery, intx: (any InterruptLine)? = nil) throws {
        let maxSizes = device.queueMaxSizes
        guard !maxSizes.isEmpty, maxSizes.count <= VirtioPCILayout.maxQueues,
              maxSizes.allSatisfy({ $0 > 0 && $0 <= 32768 && $0 & ($0 - 1) == 0 }) else {
            throw VireoError(.invalidArgument, "virtio device declares invalid queues \(maxSizes)")
        }
        guard device.configSize >= 0, UInt64(device.configSize) <= VirtioPCILayout.deviceConfigMaxLength else {
            throw VireoError(.invalidArgument, "virtio device config space of \(device.configSize) bytes is too large")
        }
        self.device = device
        self.memory = memory
        self.msi = msi
        self.intx = intx
        self.deviceType = device.deviceType
        self.queueCount = maxSizes.count
        self.configSize = device.configSize
        self.offeredFeatures = (device.deviceFeatures | VirtioFeature.transportOffered) & ~VirtioFeature.accessPlatform & ~VirtioFeature.ringPacked
        let vectors = min(maxSizes.count + 1, VirtioPCILayout.maxVectors)
        let cls = device.deviceType.pciClass
        var cfg = PCIConfigSpace(vendorID: 0x1AF4, deviceID: device.deviceType.pciDeviceID, revision: 1,
                                 classCode: cls.base, subclass: cls.sub, progIF: cls.progIF,
                                 subsystemVendorID: 0x1AF4, subsystemID: 0x1100, interruptPin: intx == nil ? 0 : 1)
        _ = cfg.defineBAR(index: VirtioPCILayout.bar, size: VirtioPCILayout.barSize, kind: .memory64)
        var st = State(config: cfg, msix: MSIXTable(vectors: vectors), queues: maxSizes.map { QueueRegisters(maxSize: $0) })
        Self.buildCapabilities(&st, vectors: vectors, queues: maxSizes.count, configSize: device.configSize)
        self.state = Mutex(st)
        self.interruptHandle = TransportInterrupt(self)
    }

    private static func buildCapabilities(_ s: inout State, vectors: Int, queues: Int, configSize: Int) {
        func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8)] }
        func le32(_ v: UInt64) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }
        let bir = UInt64(VirtioPCILayout.bar)
        s.msixCap = s.config.addCapability(
            id: 0x11,
            body: le16(UInt16(vectors - 1)) + le32(VirtioPCILayout.msixTableOffset | bir) + le32(VirtioPCILayout.msixPBAOffset | bir),
            writable: [0, 0, 0, 0xC0]) ?? 0
        func virtioCap(_ type: UInt8, offset: UInt64, length: UInt64, extra: [UInt8] = [], writable: [UInt8] = []) -> Int {
            let body: [UInt8] = [UInt8(16 + extra.count), type, UInt8(VirtioPCILayout.bar), 0, 0, 0] + le32(offset) + le32(length) + extra
            return s.config.addCapability(id: 0x09, body: body, writable: writable) ?? 0
        }
        _ = virtioCap(VirtioPCILayout.CapabilityType.common, offset: VirtioPCILayout.commonOffset, length: VirtioPCILayout.commonLength)
        _ = virtioCap(VirtioPCILayout.CapabilityType.notify, offset: VirtioPCILayout.notifyOffset,
                      length: UInt64(max(queues, 1)) * VirtioPCILayout.notifyOffMultiplier, extra: le32(VirtioPCILayout.notifyOffMultiplier))
        _ = virtioCap(VirtioPCILayout.CapabilityType.isr, offset: VirtioPCILayout.isrOffset, length: VirtioPCILayout.isrLength)
        if configSize > 0 {
            _ = virtioCap(VirtioPCILayout.CapabilityType.device, offset: VirtioPCILayout.deviceConfigOffset, length: UInt64(configSize))
        }
        // VIRTIO_PCI_CAP_PCI_CFG: bar, offset, length and the data window are driver-writable.
        s.pciCfgCap = virtioCap(VirtioPCILayout.CapabilityType.pciConfig, offset: 0, length: 0, extra: [0, 0, 0, 0],
                                writable: [0, 0, 0, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])
    }

    // MARK: - VMM-facing API

    /// The guest-physical doorbell address of queue `index` (register an ioeventfd there, any
    /// length, no datamatch), or nil while BAR 0 is not mapped.
    public func notifyAddress(queue index: Int) -> UInt64? {
        guard index >= 0, index < queueCount else { return nil }
        return state.withLock { s in
            s.barAddress.map { $0 &+ VirtioPCILayout.notifyOffset &+ UInt64(index) &* VirtioPCILayout.notifyOffMultiplier }
        }
    }

    /// All doorbells (queue index, address) while BAR 0 is mapped.
    public func notifyAddresses() -> [(queue: Int, address: UInt64)] {
        (0..<queueCount).compactMap { q in notifyAddress(queue: q).map { (q, $0) } }
    }

    public var numberOfQueues: Int { queueCount }

    /// The MSI-X routing of the configuration vector and every queue.
    public func interruptRoutes() -> [InterruptRoute] {
        state.withLock { s in
            func route(_ src: InterruptRoute.Source, _ v: UInt16) -> InterruptRoute {
                let e = Int(v) < s.msix.count ? s.msix.entries[Int(v)] : nil
                return InterruptRoute(source: src, vector: v, message: e?.message, masked: e.map { $0.masked || s.msix.functionMasked || !s.msix.enabled } ?? true)
            }
            return [route(.config, s.configVector)] + s.queues.indices.map { route(.queue($0), s.queues[$0].vector) }
        }
    }

    /// Called (on a vCPU thread, no lock held) whenever MSI-X entries, masks, the enable bit or the
    /// queue/config vector assignments change: re-read `interruptRoutes()` and update GSI routes.
    public func setRoutingObserver(_ observer: @escaping @Sendable () -> Void) {
        state.withLock { $0.routingObserver = observer }
    }

    /// Where doorbell writes that reach user space go (the fallback when no ioeventfd is
    /// registered). Default: process the queue inline on the vCPU thread. A VMM with an event loop
    /// sets a handler that wakes the loop, which then calls `processQueue(_:)`.
    public func setNotifyHandler(_ handler: @escaping @Sendable (Int) -> Void) {
        state.withLock { $0.notifyHandler = handler }
    }

    /// Runs the back end for queue `index` (the ioeventfd fired). No-op unless the device is
    /// live (DRIVER_OK, not needing reset). A thrown error puts the device in NEEDS_RESET.
    /// Returns true when buffers are still pending after the back end's per-call budget: the
    /// event loop should call again after serving its other sources (fairness between devices).
    @discardableResult
    public func processQueue(_ index: Int) -> Bool {
        guard index >= 0, index < queueCount else { return false }
        return backendLock.withLock { _ -> Bool in
            let live = state.withLock { s in s.active && s.status & VirtioStatus.needsReset == 0 && s.queues[index].enabled }
            guard live else { return false }
            do {
                return try device.processQueue(index)
            } catch {
                deviceFault("queue \(index): \(error)")
                return false
            }
        }
    }

    /// Device status as the guest sees it.
    public var status: UInt8 { state.withLock { $0.status } }
    /// Whether the driver finished initialisation and the back end is active.
    public var isActive: Bool { state.withLock { $0.active } }
    /// Negotiated features (valid once FEATURES_OK is set).
    public var negotiatedFeatures: UInt64 { state.withLock { $0.driverFeatures } }
    /// The last guest fault that forced NEEDS_RESET, for logs.
    public var lastFault: String? { state.withLock { $0.lastFault } }
    public var pciAddress: PCIAddress { state.withLock { $0.pciAddress } }

    // MARK: - PCIDevice

    public var barDefinitions: [PCIConfigSpace.BAR] { state.withLock { $0.config.bars } }

    public func setBARAddress(index: Int, address: UInt64) {
        state.withLock { s in
            if let bar = s.config.bars.first(where: { $0.index == index }) { s.config.setBARAddress(bar, address) }
            // Like firmware would, turn memory decoding on so the BAR is live without a BIOS.
            s.config.set16(PCIConfigSpace.Offset.command, s.config.command | PCIConfigSpace.Command.memorySpace)
        }
    }

    public func decodedBARs() -> [(bar: PCIConfigSpace.BAR, address: UInt64)] {
        state.withLock { $0.config.decodedBARs() }
    }

    public func barHandler(index: Int) -> (any BusDevice)? { index == VirtioPCILayout.bar ? self : nil }

    public func attached(at address: PCIAddress) { state.withLock { $0.pciAddress = address } }

    public func barMapped(index: Int, address: UInt64?) {
        guard index == VirtioPCILayout.bar else { return }
        state.withLock { $0.barAddress = address }
    }

    public func configRead(offset: Int, size: Int) -> UInt32 {
        let (value, window) = state.withLock { s -> (UInt32, (bar: UInt8, offset: UInt32, length: UInt32)?) in
            let data = s.pciCfgCap + 16
            if s.pciCfgCap != 0, offset >= data, offset < data + 4 {
                return (0, Self.pciCfgWindow(s))
            }
            return (s.config.read(offset: offset, size: size), nil)
        }
        guard let window else { return value }
        // VIRTIO_PCI_CAP_PCI_CFG: the data field reads `length` bytes of BAR `bar` at `offset`.
        guard let bytes = windowAccess(window, write: nil) else { return 0 }
        return bytes >> (8 * UInt32(offset - (state.withLock { $0.pciCfgCap }) - 16))
    }

    public func configWrite(offset: Int, size: Int, value: UInt32) {
        let (window, deliveries, routingChanged) = state.withLock { s -> ((bar: UInt8, offset: UInt32, length: UInt32)?, [Delivery], Bool) in
            let data = s.pciCfgCap + 16
            if s.pciCfgCap != 0, offset >= data, offset < data + 4 {
                return (Self.pciCfgWindow(s), [], false)
            }
            s.config.write(offset: offset, size: size, value: value)
            // MSI-X enable / function mask live in the capability's message control.
            let ctl = s.config.get16(s.msixCap + 2)
            let before = (s.msix.enabled, s.msix.functionMasked)
            s.msix.enabled = ctl & 0x8000 != 0
            s.msix.functionMasked = ctl & 0x4000 != 0
            var out = s.msix.takeDeliverable().map { Delivery.msi($0.0, $0.1) }
            if s.msix.enabled && s.intxLevel { s.intxLevel = false; out.append(.intx(false)) }
            return (nil, out, before != (s.msix.enabled, s.msix.functionMasked))
        }
        if let window {
            let shift = 8 * UInt32(offset - (state.withLock { $0.pciCfgCap }) - 16)
            _ = windowAccess(window, write: value << shift)
        }
        deliver(deliveries)
        if routingChanged { notifyRoutingObserver() }
    }

    private static func pciCfgWindow(_ s: State) -> (bar: UInt8, offset: UInt32, length: UInt32) {
        let c = s.pciCfgCap
        return (UInt8(truncatingIfNeeded: s.config.read(offset: c + 4, size: 1)), s.config.get32(c + 8), s.config.get32(c + 12))
    }

    /// Performs a PCI_CFG window access; returns the value read (for reads).
    private func windowAccess(_ w: (bar: UInt8, offset: UInt32, length: UInt32), write value: UInt32?) -> UInt32? {
        guard Int(w.bar) == VirtioPCILayout.bar, [1, 2, 4].contains(w.length), w.offset % w.length == 0,
              UInt64(w.offset) + UInt64(w.length) <= VirtioPCILayout.barSize else { return nil }
        var buf: UInt32 = value ?? 0
        return withUnsafeMutableBytes(of: &buf) { raw in
            let b = UnsafeMutableRawBufferPointer(rebasing: raw[0..<Int(w.length)])
            if value != nil {
                write(offset: UInt64(w.offset), data: UnsafeRawBufferPointer(b))
                return nil
            }
            read(offset: UInt64(w.offset), data: b)
            return UInt32(truncatingIfNeeded: UnsafeRawBufferPointer(b).littleEndianValue)
        }
    }

    // MARK: - BAR 0 (BusDevice)

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        for i in data.indices { data[i] = 0 }
        switch offset {
        case VirtioPCILayout.commonOffset..<(VirtioPCILayout.commonOffset + VirtioPCILayout.commonLength):
            let v = state.withLock { s in readCommon(&s, offset: Int(offset - VirtioPCILayout.commonOffset), size: data.count) }
            data.storeLittleEndian(v)
        case VirtioPCILayout.isrOffset..<(VirtioPCILayout.isrOffset + VirtioPCILayout.isrLength):
            let (isr, lower) = state.withLock { s -> (UInt8, Bool) in
                let v = s.isr
                s.isr = 0
                Self.setPCIInterruptStatus(&s, false)
                let lower = s.intxLevel
                s.intxLevel = false
                return (v, lower)
            }
            if offset == VirtioPCILayout.isrOffset { data[0] = isr }
            if lower { intx?.set(level: false) }
        case VirtioPCILayout.deviceConfigOffset..<(VirtioPCILayout.deviceConfigOffset + VirtioPCILayout.deviceConfigMaxLength):
            let o = Int(offset - VirtioPCILayout.deviceConfigOffset)
            guard o + data.count <= configSize else { return }
            backendLock.withLock { _ in device.readConfig(offset: o, into: data) }
        case VirtioPCILayout.msixTableOffset..<VirtioPCILayout.msixPBAOffset:
            let o = offset - VirtioPCILayout.msixTableOffset
            guard o % 4 == 0, data.count == 4 || data.count == 8 else { return }
            let v = state.withLock { s in
                UInt64(s.msix.readTable(dword: o)) | (data.count == 8 ? UInt64(s.msix.readTable(dword: o + 4)) << 32 : 0)
            }
            data.storeLittleEndian(v)
        case VirtioPCILayout.msixPBAOffset..<VirtioPCILayout.barSize:
            let o = offset - VirtioPCILayout.msixPBAOffset
            guard o % 4 == 0, data.count == 4 || data.count == 8 else { return }
            let v = state.withLock { s in
                UInt64(s.msix.readPBA(dword: o)) | (data.count == 8 ? UInt64(s.msix.readPBA(dword: o + 4)) << 32 : 0)
            }
            data.storeLittleEndian(v)
        default:
            break   // notify region and holes read as zero
        }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        let value = data.littleEndianValue
        switch offset {
        case VirtioPCILayout.commonOffset..<(VirtioPCILayout.commonOffset + VirtioPCILayout.commonLength):
            writeCommon(offset: Int(offset - VirtioPCILayout.commonOffset), size: data.count, value: value)
        case VirtioPCILayout.deviceConfigOffset..<(VirtioPCILayout.deviceConfigOffset + VirtioPCILayout.deviceConfigMaxLength):
            let o = Int(offset - VirtioPCILayout.deviceConfigOffset)
            guard o + data.count <= configSize else { return }
            backendLock.withLock { _ in device.writeConfig(offset: o, data: data) }
        case VirtioPCILayout.notifyOffset..<(VirtioPCILayout.notifyOffset + UInt64(queueCount) * VirtioPCILayout.notifyOffMultiplier):
            let q = Int((offset - VirtioPCILayout.notifyOffset) / VirtioPCILayout.notifyOffMultiplier)
            let handler = state.withLock { $0.notifyHandler }
            if let handler {
                handler(q)
            } else {
                // Inline fallback on the vCPU thread: a bounded number of rounds.
                var rounds = 0
                while processQueue(q) && rounds < 16 { rounds += 1 }
            }
        case VirtioPCILayout.msixTableOffset..<VirtioPCILayout.msixPBAOffset:
            let o = offset - VirtioPCILayout.msixTableOffset
            guard o % 4 == 0, data.count == 4 || data.count == 8 else { return }
            let (deliveries, changed) = state.withLock { s -> ([Delivery], Bool) in
                var changed = s.msix.writeTable(dword: o, value: UInt32(truncatingIfNeeded: value))
                if data.count == 8 { changed = s.msix.writeTable(dword: o + 4, value: UInt32(truncatingIfNeeded: value >> 32)) || changed }
                return (s.msix.takeDeliverable().map { .msi($0.0, $0.1) }, changed)
            }
            deliver(deliveries)
            if changed { notifyRoutingObserver() }
        default:
            break   // ISR and PBA are read-only
        }
    }

    // MARK: - Interrupts

    /// Raises `vector` (MSI-X) or ISR bit `isrBit` + INTx.
    func raise(vector: UInt16, isrBit: UInt8) {
        let d = state.withLock { s -> Delivery? in
            if s.msix.enabled {
                guard vector != virtioNoVector, let m = s.msix.fire(vector) else { return nil }
                return .msi(vector, m)
            }
            s.isr |= isrBit
            Self.setPCIInterruptStatus(&s, true)
            guard intx != nil, !s.intxLevel, s.config.command & PCIConfigSpace.Command.interruptDisable == 0 else { return nil }
            s.intxLevel = true
            return .intx(true)
        }
        if let d { deliver([d]) }
    }

    func queueVector(_ index: Int) -> UInt16 {
        state.withLock { s in index >= 0 && index < s.queues.count ? s.queues[index].vector : virtioNoVector }
    }

    func configChanged() {
        let v = state.withLock { s -> UInt16 in
            s.configGeneration &+= 1
            return s.configVector
        }
        raise(vector: v, isrBit: 2)
    }

    private func deliver(_ deliveries: [Delivery]) {
        guard !deliveries.isEmpty else { return }
        let source = state.withLock { $0.pciAddress.msiSource }
        for d in deliveries {
            switch d {
            case let .msi(v, m): msi.deliver(source: source, vector: v, message: m)
            case let .intx(level): intx?.set(level: level)
            }
        }
    }

    private static func setPCIInterruptStatus(_ s: inout State, _ on: Bool) {
        let st = s.config.get16(PCIConfigSpace.Offset.status)
        s.config.set16(PCIConfigSpace.Offset.status, on ? st | 0x08 : st & ~0x08)
    }

    func notifyRoutingObserver() {
        state.withLock { $0.routingObserver }?()
    }

    /// Puts the device in NEEDS_RESET after a guest fault. Caller holds `backendLock`.
    func deviceFault(_ reason: String) {
        let v = state.withLock { s -> UInt16? in
            s.lastFault = reason
            s.faults &+= 1
            guard s.status & VirtioStatus.needsReset == 0 else { return nil }
            s.status |= VirtioStatus.needsReset
            s.configGeneration &+= 1
            return s.configVector
        }
        if let v { raise(vector: v, isrBit: 2) }
    }

    // MARK: - Common configuration

    private func readCommon(_ s: inout State, offset: Int, size: Int) -> UInt64 {
        typealias C = VirtioPCILayout.Common
        let q = Int(s.queueSelect) < s.queues.count ? s.queues[Int(s.queueSelect)] : nil
        func field(_ at: Int) -> (UInt64, Int)? {
            switch at {
            case C.deviceFeatureSelect: return (UInt64(s.deviceFeatureSelect), 4)
            case C.deviceFeature:
                let f: UInt64 = s.deviceFeatureSelect == 0 ? offeredFeatures & 0xFFFF_FFFF : s.deviceFeatureSelect == 1 ? offeredFeatures >> 32 : 0
                return (f, 4)
            case C.driverFeatureSelect: return (UInt64(s.driverFeatureSelect), 4)
            case C.driverFeature:
                let f: UInt64 = s.driverFeatureSelect == 0 ? s.driverFeatures & 0xFFFF_FFFF : s.driverFeatureSelect == 1 ? s.driverFeatures >> 32 : 0
                return (f, 4)
            case C.msixConfig: return (UInt64(s.configVector), 2)
            case C.numQueues: return (UInt64(s.queues.count), 2)
            case C.deviceStatus: return (UInt64(s.status), 1)
            case C.configGeneration: return (UInt64(s.configGeneration), 1)
            case C.queueSelect: return (UInt64(s.queueSelect), 2)
            case C.queueSize: return (UInt64(q?.size ?? 0), 2)
            case C.queueMSIXVector: return (UInt64(q?.vector ?? virtioNoVector), 2)
            case C.queueEnable: return (q?.enabled == true ? 1 : 0, 2)
            case C.queueNotifyOff: return (q == nil ? 0 : UInt64(s.queueSelect), 2)
            case C.queueDesc: return (q?.desc ?? 0, 8)
            case C.queueDriver: return (q?.driver ?? 0, 8)
            case C.queueDevice: return (q?.device ?? 0, 8)
            case C.queueNotifyData, C.queueReset: return (0, 2)
            default: return nil
            }
        }
        // Exact field reads, and 32-bit halves of the 64-bit queue addresses.
        if let (v, width) = field(offset), width == size || (width == 8 && size == 4) { return v & mask(size) }
        if size == 4, offset >= C.queueDesc, offset < C.queueNotifyData, offset % 8 == 4, let (v, _) = field(offset - 4) {
            return v >> 32
        }
        return 0
    }

    private func mask(_ size: Int) -> UInt64 { size >= 8 ? ~0 : (UInt64(1) << (8 * UInt64(size))) &- 1 }

    private func writeCommon(offset: Int, size: Int, value: UInt64) {
        typealias C = VirtioPCILayout.Common
        // Status writes may reset or activate the back end, so take the back-end lock first.
        if offset == C.deviceStatus && size == 1 {
            backendLock.withLock { _ in writeStatus(UInt8(truncatingIfNeeded: value)) }
            return
        }
        var routing = false
        state.withLock { s in
            let qi = Int(s.queueSelect)
            let queueWritable = qi < s.queues.count && !s.queues[qi].enabled && !s.active
            let v32 = UInt32(truncatingIfNeeded: value)
            let v16 = UInt16(truncatingIfNeeded: value)
            switch (offset, size) {
            case (C.deviceFeatureSelect, 4): s.deviceFeatureSelect = v32
            case (C.driverFeatureSelect, 4): s.driverFeatureSelect = v32
            case (C.driverFeature, 4):
                guard s.status & VirtioStatus.featuresOK == 0 else { return }
                if s.driverFeatureSelect == 0 { s.driverFeatures = (s.driverFeatures & ~0xFFFF_FFFF) | UInt64(v32) }
                else if s.driverFeatureSelect == 1 { s.driverFeatures = (s.driverFeatures & 0xFFFF_FFFF) | UInt64(v32) << 32 }
            case (C.msixConfig, 2):
                s.configVector = Int(v16) < s.msix.count ? v16 : virtioNoVector
                routing = true
            case (C.queueSelect, 2): s.queueSelect = v16
            case (C.queueSize, 2): if queueWritable { s.queues[qi].size = v16 }
            case (C.queueMSIXVector, 2):
                guard qi < s.queues.count else { return }
                s.queues[qi].vector = Int(v16) < s.msix.count ? v16 : virtioNoVector
                routing = true
            case (C.queueEnable, 2):
                if queueWritable && v16 == 1 { s.queues[qi].enabled = true }
            case (C.queueDesc, 8), (C.queueDesc, 4), (C.queueDesc + 4, 4),
                 (C.queueDriver, 8), (C.queueDriver, 4), (C.queueDriver + 4, 4),
                 (C.queueDevice, 8), (C.queueDevice, 4), (C.queueDevice + 4, 4):
                guard queueWritable else { return }
                let base = offset & ~7
                let high = offset % 8 == 4
                func merge(_ old: UInt64) -> UInt64 {
                    if size == 8 { return value }
                    return high ? (old & 0xFFFF_FFFF) | UInt64(v32) << 32 : (old & ~0xFFFF_FFFF) | UInt64(v32)
                }
                switch base {
                case C.queueDesc: s.queues[qi].desc = merge(s.queues[qi].desc)
                case C.queueDriver: s.queues[qi].driver = merge(s.queues[qi].driver)
                default: s.queues[qi].device = merge(s.queues[qi].device)
                }
            default:
                break   // read-only or wrongly sized: ignored
            }
        }
        if routing { notifyRoutingObserver() }
    }

    /// Caller holds `backendLock`.
    private func writeStatus(_ value: UInt8) {
        if value == 0 {
            resetDevice()
            return
        }
        enum Action { case none, activate(UInt64, [VirtqueueLayout?], [UInt16]) }
        let action = state.withLock { s -> Action in
            let old = s.status
            var new = value | (old & VirtioStatus.needsReset)
            if new & VirtioStatus.featuresOK != 0 && old & VirtioStatus.featuresOK == 0 {
                let f = s.driverFeatures
                if f & ~offeredFeatures != 0 || f & VirtioFeature.version1 == 0 {
                    new &= ~VirtioStatus.featuresOK   // refuse: the driver sees FEATURES_OK clear
                }
            }
            s.status = new
            if new & VirtioStatus.driverOK != 0 && old & VirtioStatus.driverOK == 0 && !s.active {
                guard new & VirtioStatus.featuresOK != 0 else { return .none }
                return .activate(s.driverFeatures, s.queues.map { $0.enabled ? $0.layout : nil }, s.queues.map(\.maxSize))
            }
            return .none
        }
        guard case let .activate(features, layouts, maxSizes) = action else {
            if value & VirtioStatus.driverOK != 0 && state.withLock({ !$0.active && $0.status & VirtioStatus.featuresOK == 0 }) {
                deviceFault("DRIVER_OK without FEATURES_OK")
            }
            return
        }
        do {
            var queues: [VirtqueueSplit?] = []
            for (i, l) in layouts.enumerated() {
                guard let l else { queues.append(nil); continue }
                do {
                    queues.append(try VirtqueueSplit(layout: l, maxSize: maxSizes[i], memory: memory,
                                                     eventIndex: features & VirtioFeature.eventIndex != 0,
                                                     indirectDescriptors: features & VirtioFeature.indirectDescriptors != 0))
                } catch {
                    throw VireoError(.guest, "queue \(i): \(error)")
                }
            }
            guard let interruptHandle else { return }
            try device.activate(VirtioActivation(memory: memory, features: features, queues: queues, interrupt: interruptHandle))
            liveQueues = queues
            state.withLock { $0.active = true }
        } catch {
            deviceFault("activation: \(error)")
        }
    }

    /// Caller holds `backendLock`.
    private func resetDevice() {
        device.reset()
        liveQueues = []
        let lower = state.withLock { s -> Bool in
            s.status = 0
            s.active = false
            s.driverFeatures = 0
            s.deviceFeatureSelect = 0
            s.driverFeatureSelect = 0
            s.configVector = virtioNoVector
            s.queueSelect = 0
            s.queues = s.queues.map { QueueRegisters(maxSize: $0.maxSize) }
            s.isr = 0
            Self.setPCIInterruptStatus(&s, false)
            let l = s.intxLevel
            s.intxLevel = false
            return l
        }
        if lower { intx?.set(level: false) }
        notifyRoutingObserver()
    }
}

/// The `VirtioInterrupt` handed to the back end: routes to the transport's vectors.
final class TransportInterrupt: VirtioInterrupt, @unchecked Sendable {
    // weak: the transport owns the back end, which holds this object.
    private weak var transport: VirtioPCIDevice?
    init(_ t: VirtioPCIDevice) { transport = t }

    func signalQueue(_ index: Int) {
        guard let t = transport else { return }
        t.raise(vector: t.queueVector(index), isrBit: 1)
    }

    func signalConfigChange() { transport?.configChanged() }
}
