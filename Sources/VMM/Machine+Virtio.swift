import CLinux
import Devices
import DiskImage
import GuestMemory
import KVM
import Synchronization
import VireoSupport
import VireoConfig
import Virtio
import X86Boot
#if canImport(Glibc)
import Glibc
#endif

/// One virtio-pci function wired into KVM: a doorbell eventfd per queue (KVM_IOEVENTFD at the
/// queue's notify address, served by the event loop) and MSI-X through `KVMMSIRouter`.
/// Doorbell writes that still reach user space (no ioeventfd, or a BAR the guest moved) are
/// forwarded to the same eventfds, so back ends only ever run on the event-loop thread.
final class VirtioPCISlot: @unchecked Sendable {
    let name: String
    /// The device's stable id in snapshots: "rng", "disk:ID", "net:ID", "console", "balloon", "vsock".
    let id: String
    let address: PCIAddress
    let transport: VirtioPCIDevice
    let doorbells: [EventFD]
    private let vm: VirtualMachine
    private let bound = Mutex<[(queue: Int, address: UInt64, length: UInt32)]>([])

    init(name: String, id: String, address: PCIAddress, transport: VirtioPCIDevice, vm: VirtualMachine) throws {
        self.name = name
        self.id = id
        self.address = address
        self.transport = transport
        self.vm = vm
        doorbells = try (0..<transport.numberOfQueues).map { _ in try EventFD() }
    }

    /// (Re)binds the ioeventfds to the current notify addresses.
    func bindDoorbells() {
        bound.withLock { b in
            for old in b {
                try? vm.registerIOEventFD(eventFD: doorbells[old.queue].fd, address: old.address, length: old.length, deassign: true)
            }
            b.removeAll()
            for (q, address) in transport.notifyAddresses() {
                // Length 0 matches any write size (KVM_CAP_IOEVENTFD_ANY_LENGTH); Linux writes 16 bits.
                for length: UInt32 in [0, 2] {
                    do {
                        try vm.registerIOEventFD(eventFD: doorbells[q].fd, address: address, length: length)
                        b.append((q, address, length))
                        break
                    } catch {
                        if length == 2 { DebugLog.log("\(name): no ioeventfd for queue \(q) (\(error)); doorbells exit to user space") }
                    }
                }
            }
        }
    }
}

/// What attaching a virtio device needs: the bus, the event loop and the MSI router.
final class VirtioWiring: @unchecked Sendable {
    let vm: VirtualMachine
    let memory: GuestMemory
    let pci: PCIBus
    let loop: EventLoop
    let router: KVMMSIRouter
    private(set) var slots: [VirtioPCISlot] = []

    init(vm: VirtualMachine, memory: GuestMemory, pci: PCIBus, loop: EventLoop) {
        self.vm = vm; self.memory = memory; self.pci = pci; self.loop = loop
        router = KVMMSIRouter(vm: vm)
    }

    /// Plugs `device` into the next PCI slot; its doorbells run `processQueue` on the event loop.
    /// With a `limiter`, a throttled queue is re-kicked once the limiter allows more.
    func attach(_ device: any VirtioDevice, name: String, id: String, limiter: RateLimiter? = nil) throws -> VirtioPCISlot {
        guard !slots.contains(where: { $0.id == id }) else {
            throw VireoError(.invalidArgument, "two virtio devices have the id \(id)", hint: "give each disk and NIC its own id")
        }
        let transport = try VirtioPCIDevice(device: device, memory: memory, msi: router, intx: nil)
        let address = try pci.add(transport)
        let slot = try VirtioPCISlot(name: name, id: id, address: address, transport: transport, vm: vm)
        let source = address.msiSource
        let router = self.router
        transport.setRoutingObserver { [unowned transport] in router.update(source: source, routes: transport.interruptRoutes()) }
        let doorbells = slot.doorbells
        transport.setNotifyHandler { q in if q >= 0, q < doorbells.count { doorbells[q].signal() } }
        let loop = self.loop
        for (q, bell) in doorbells.enumerated() {
            let retryPending = AtomicFlag()
            try loop.add(fd: bell.fd) { [unowned transport] _ in
                bell.drain()
                let more = transport.processQueue(q)
                if let limiter {
                    let wait = limiter.nanosUntilAvailable
                    if wait > 0, !retryPending.value.exchange(true, ordering: .acquiringAndReleasing) {
                        loop.after(nanoseconds: wait) { retryPending.value.store(false, ordering: .releasing); bell.signal() }
                    }
                }
                return more
            }
        }
        slot.bindDoorbells()
        slots.append(slot)
        DebugLog.log("virtio: \(name) at PCI \(address)")
        return slot
    }
}

extension Machine {
    /// The PCI host bridge (always: Linux probes it through the DSDT's PCI0) and the configured
    /// virtio devices, each on its own slot, with their back ends on one event-loop thread.
    func setUpVirtio(platform: PlatformDevices) throws {
        let stop = self.stop
        let window = (base: X86MemoryLayout.mmioHoleStart, size: X86MemoryLayout.ioapicAddress - X86MemoryLayout.mmioHoleStart)
        let pci = try PCIBus.withHostBridge(mmio: platform.mmio, mmioWindow: window,
                                            resetRequested: { stop.request(.reset("PCI reset control (0xCF9)")) })
        try pci.register(on: platform.ports)
        pciBus = pci
        let v = config.virtio
        guard !v.isEmpty else { return }

        let wiring = VirtioWiring(vm: vm, memory: memory, pci: pci, loop: try EventLoop(stopFD: stop.eventFD))

        if v.rng { _ = try wiring.attach(VirtioRNG(), name: "virtio-rng", id: "rng") }
        for (i, disk) in v.disks.enumerated() {
            let (backend, format) = try openDisk(disk, index: i)
            if vmConfig?.disks.indices.contains(i) == true { vmConfig?.disks[i].format = DiskFormat(rawValue: format.rawValue) }
            let tracker = disk.isReadOnly ? nil : DirtyTrackingBlockBackend(backend)
            let block = VirtioBlock(backend: tracker ?? backend)
            block.limiter = disk.rateLimit.flatMap(Self.limiter)
            _ = try wiring.attach(block, name: "virtio-blk \(disk.id ?? disk.path)", id: "disk:" + (disk.id ?? "disk\(i)"), limiter: block.limiter)
            diskCounters.append((disk.id ?? "disk\(i)", disk.path, block.counters))
            openDisks.append(OpenDisk(id: disk.id ?? "disk\(i)", path: disk.path, format: format, readOnly: disk.isReadOnly, backend: backend, tracker: tracker))
        }
        if let console = v.console {
            let sink = try virtioConsoleSink(console)
            _ = try wiring.attach(VirtioConsole(output: sink), name: "virtio-console", id: "console")
        }
        try setUpBalloon(v.balloon, wiring: wiring)
        for (i, net) in v.nets.enumerated() { try setUpNet(net, index: i, wiring: wiring) }
        try setUpVsock(v.vsock, wiring: wiring)

        let all = wiring.slots
        pci.setBARChangeHandler { _ in for s in all { s.bindDoorbells() } }
        resources.append(wiring)
        virtioWiring = wiring
        eventLoop = wiring.loop
    }

    static func limiter(_ c: RateLimitConfig) -> RateLimiter? {
        c.isUnlimited ? nil : RateLimiter(bytesPerSecond: c.bytesPerSecond, bytesBurst: c.bytesBurst,
                                          opsPerSecond: c.opsPerSecond, opsBurst: c.opsBurst)
    }

    /// Opens a disk in its declared format after checking the file's signature against it
    /// (DiskImage.checkFormat: a file is never opened as raw when it carries an image
    /// signature, nor as qcow2 without one). A disk given without a format (`vireo run --disk
    /// path=F`) is detected by signature, and the format used is said on stderr.
    private func openDisk(_ disk: VirtioConfig.Disk, index: Int) throws -> (any BlockBackend, DiskImageFormat) {
        let declared = disk.format.flatMap { DiskImageFormat(name: $0.rawValue) }
        let decision: DiskImage.FormatDecision
        do { decision = try DiskImage.checkFormat(path: disk.path, declared: declared) } catch {
            throw VireoError(error.code, "--disk \(disk.id ?? "disk\(index)"): \(error.message)", hint: error.hint, errno: error.errno)
        }
        if decision.detected {
            let what = decision.format == .raw ? "no image signature, opened as raw" : "detected \(decision.format) by its signature"
            writeStderrLine("vireo: --disk \(disk.path): \(what) (give format=\(decision.format.rawValue) to say so)")
        }
        switch decision.format {
        case .qcow2:
            // The whole backing chain opens with it (a linked clone reads through to its base),
            // each backing file named as the disk's backing rule allows.
            let policy: BackingPolicy
            switch disk.backing ?? .any {
            case .any: policy = .any
            case .confined: policy = .confined
            case .forbidden: policy = .forbidden
            }
            let image = try DiskImage.open(path: disk.path, format: .qcow2, readOnly: disk.isReadOnly,
                                           options: { var o = OpenOptions(readOnly: disk.isReadOnly, backingPolicy: policy); o.locking = true; return o }())
            guard image.virtualSize >= 512 else {
                throw VireoError(.invalidArgument, "--disk \(disk.path) is smaller than one 512-byte sector", hint: "grow it with vireo disk resize \(disk.path) 1G")
            }
            try revertForRestore(image, disk: disk, index: index)
            return (DiskImageBlockBackend(image: image, identifier: disk.id ?? "vireo-disk\(index)"), .qcow2)
        case .raw:
            if isRestoring && !disk.isReadOnly && !disksTakenAsGiven.contains(disk.id ?? "disk\(index)") {
                throw VireoError(.corrupt, "snapshot: it holds no contents for the read-write raw disk \(disk.id ?? "disk\(index)")",
                                 hint: "restore with the configuration the snapshot was taken with")
            }
            var st = stat()
            guard stat(disk.path, &st) == 0 else {
                throw VireoError.system("--disk \(disk.path): cannot open the disk image", hint: "give an existing file (create one with truncate -s 1G FILE)")
            }
            guard (st.st_mode & S_IFMT) == S_IFREG || (st.st_mode & S_IFMT) == S_IFBLK else {
                throw VireoError(.invalidArgument, "--disk \(disk.path) is not a regular file or block device")
            }
            let backend = try FileBlockBackend(path: disk.path, readOnly: disk.isReadOnly, identifier: disk.id ?? "vireo-disk\(index)", locking: true)
            guard backend.size >= 512 else {
                throw VireoError(.invalidArgument, "--disk \(disk.path) is smaller than one 512-byte sector", hint: "grow it with truncate -s 1G \(disk.path)")
            }
            return (backend, .raw)
        default:
            throw VireoError(.unsupported, "--disk \(disk.path) is a \(decision.format) image; a VM runs on qcow2 or raw disks",
                             hint: "convert it: vireo disk convert -O qcow2 \(disk.path) OUT.qcow2")
        }
    }

    /// On restore, a read-write disk goes back to the internal snapshot the machine snapshot
    /// made of it, so the disk holds what the restored guest's memory expects.
    private func revertForRestore(_ opened: any BlockImage, disk: VirtioConfig.Disk, index: Int) throws {
        guard isRestoring, !disk.isReadOnly, !disksTakenAsGiven.contains(disk.id ?? "disk\(index)") else { return }
        guard let image = opened as? Qcow2Image else {
            throw VireoError(.corrupt, "snapshot: disk \(disk.id ?? "disk\(index)") is not a qcow2 image, so it cannot go back to its contents at the snapshot")
        }
        let id = disk.id ?? "disk\(index)"
        guard let record = restoredDisks.first(where: { $0.id == id }), let tag = record.diskSnapshot else {
            throw VireoError(.corrupt, "snapshot: it holds no contents for the read-write disk \(id)",
                             hint: "restore with the configuration the snapshot was taken with")
        }
        do {
            try image.applySnapshot(name: tag)
        } catch {
            throw VireoError(error.code, "disk \(id) (\(disk.path)): cannot go back to its contents at the snapshot: \(error.message)",
                             hint: error.code == .notFound ? "the disk's internal snapshot \(tag) was deleted (vireo disk snapshot -l \(disk.path) lists them); this machine snapshot cannot be restored" : error.hint)
        }
    }

    private func virtioConsoleSink(_ console: VirtioConfig.Console) throws -> VirtioConsole.OutputSink {
        switch console {
        case .stdout:
            return { bytes in _ = write(1, bytes.baseAddress, bytes.count) }
        case let .file(path):
            let fd = try OwnedFD.open(path, flags: O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, purpose: "write the virtio console log to")
            resources.append(fd)
            let raw = fd.rawValue
            return { bytes in _ = write(raw, bytes.baseAddress, bytes.count) }
        }
    }
}

/// A shareable atomic boolean.
final class AtomicFlag: Sendable {
    let value = Atomic<Bool>(false)
}
