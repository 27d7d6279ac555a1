import CLinux
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// A KVM virtual machine: memory slots, the in-kernel interrupt controllers, irqfd/ioeventfd.
public final class VirtualMachine: @unchecked Sendable {
    public let fd: OwnedFD
    public let system: KVMSystem

    init(fd: OwnedFD, system: KVMSystem) {
        self.fd = fd
        self.system = system
    }

    @inline(__always)
    func ioctl(_ request: UInt, _ arg: UnsafeMutableRawPointer?, _ what: @autoclosure () -> String) throws {
        _ = try retryingEINTR(what()) { vireo_ioctl_ptr(fd.rawValue, request, arg) }
    }

    public func check(_ capability: Int32) -> Int32 {
        max(0, vireo_ioctl(fd.rawValue, VIREO_KVM_CHECK_EXTENSION, UInt(capability)))
    }

    /// Maps host memory into the guest-physical address space as slot `slot`.
    public func setMemoryRegion(slot: UInt32, guestAddress: UInt64, size: UInt64, host: UnsafeMutableRawPointer,
                                logDirtyPages: Bool = false, readOnly: Bool = false) throws {
        var region = kvm_userspace_memory_region()
        region.slot = slot
        region.flags = (logDirtyPages ? UInt32(KVM_MEM_LOG_DIRTY_PAGES) : 0) | (readOnly ? UInt32(KVM_MEM_READONLY) : 0)
        region.guest_phys_addr = guestAddress
        region.memory_size = size
        region.userspace_addr = UInt64(UInt(bitPattern: host))
        try withUnsafeMutableBytes(of: &region) {
            try ioctl(VIREO_KVM_SET_USER_MEMORY_REGION, $0.baseAddress, "cannot map guest memory slot \(slot) at 0x\(String(guestAddress, radix: 16))")
        }
    }

    public func setTSSAddress(_ address: UInt64) throws {
        _ = try retryingEINTR("KVM_SET_TSS_ADDR failed") { vireo_ioctl(fd.rawValue, VIREO_KVM_SET_TSS_ADDR, UInt(address)) }
    }

    public func setIdentityMapAddress(_ address: UInt64) throws {
        var a = address
        try withUnsafeMutableBytes(of: &a) { try ioctl(VIREO_KVM_SET_IDENTITY_MAP_ADDR, $0.baseAddress, "KVM_SET_IDENTITY_MAP_ADDR failed") }
    }

    /// In-kernel PIC + IOAPIC + per-vCPU LAPIC.
    public func createIRQChip() throws {
        _ = try retryingEINTR("KVM_CREATE_IRQCHIP failed") { vireo_ioctl(fd.rawValue, VIREO_KVM_CREATE_IRQCHIP, 0) }
    }

    /// In-kernel i8254 PIT (also emulates port 0x61's speaker/timer-2 gate bits).
    public func createPIT2() throws {
        var config = kvm_pit_config()
        config.flags = UInt32(KVM_PIT_SPEAKER_DUMMY)
        try withUnsafeMutableBytes(of: &config) { try ioctl(VIREO_KVM_CREATE_PIT2, $0.baseAddress, "KVM_CREATE_PIT2 failed") }
    }

    /// Drives an interrupt line of the in-kernel PIC/IOAPIC.
    public func setIRQLine(_ irq: UInt32, level: Bool) throws {
        var line = kvm_irq_level()
        line.irq = irq
        line.level = level ? 1 : 0
        try withUnsafeMutableBytes(of: &line) { try ioctl(VIREO_KVM_IRQ_LINE, $0.baseAddress, "KVM_IRQ_LINE failed") }
    }

    /// Binds an eventfd to a GSI: writing the eventfd injects the interrupt without a VMM round trip.
    public func registerIRQFD(eventFD: Int32, gsi: UInt32, resampleFD: Int32? = nil) throws {
        var irqfd = kvm_irqfd()
        irqfd.fd = UInt32(bitPattern: eventFD)
        irqfd.gsi = gsi
        if let resampleFD {
            irqfd.flags = UInt32(KVM_IRQFD_FLAG_RESAMPLE)
            irqfd.resamplefd = UInt32(bitPattern: resampleFD)
        }
        try withUnsafeMutableBytes(of: &irqfd) { try ioctl(VIREO_KVM_IRQFD, $0.baseAddress, "KVM_IRQFD failed for GSI \(gsi)") }
    }

    /// Binds an eventfd to a guest write of `address` (MMIO, or a port when `pio`): the write
    /// signals the eventfd in the kernel, with no exit to user space.
    /// `deassign` removes a binding made with the same arguments (a BAR moved).
    public func registerIOEventFD(eventFD: Int32, address: UInt64, length: UInt32, pio: Bool = false, datamatch: UInt64? = nil, deassign: Bool = false) throws {
        var e = kvm_ioeventfd()
        e.addr = address
        e.len = length
        e.fd = eventFD
        var flags: UInt32 = 0
        if pio { flags |= UInt32(1) << UInt32(kvm_ioeventfd_flag_nr_pio) }
        if let datamatch { flags |= UInt32(1) << UInt32(kvm_ioeventfd_flag_nr_datamatch); e.datamatch = datamatch }
        if deassign { flags |= UInt32(1) << UInt32(kvm_ioeventfd_flag_nr_deassign) }
        e.flags = flags
        try withUnsafeMutableBytes(of: &e) { try ioctl(VIREO_KVM_IOEVENTFD, $0.baseAddress, "KVM_IOEVENTFD failed at 0x\(String(address, radix: 16))") }
    }

    /// Replaces the whole GSI routing table.
    public func setGSIRouting(_ routes: [GSIRoute]) throws {
        let size = vireo_kvm_irq_routing_size(UInt32(routes.count))
        let raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
        defer { raw.deallocate() }
        // SAFETY: `raw` holds the header plus routes.count entries, zeroed before use.
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        let table = raw.assumingMemoryBound(to: kvm_irq_routing.self)
        table.pointee.nr = UInt32(routes.count)
        let entries = (raw + MemoryLayout<kvm_irq_routing>.size).assumingMemoryBound(to: kvm_irq_routing_entry.self)
        for (i, r) in routes.enumerated() {
            entries[i].gsi = r.gsi
            switch r.kind {
            case let .irqchip(chip, pin):
                entries[i].type = UInt32(KVM_IRQ_ROUTING_IRQCHIP)
                entries[i].u.irqchip.irqchip = chip
                entries[i].u.irqchip.pin = pin
            case let .msi(address, data):
                entries[i].type = UInt32(KVM_IRQ_ROUTING_MSI)
                entries[i].u.msi.address_lo = UInt32(truncatingIfNeeded: address)
                entries[i].u.msi.address_hi = UInt32(truncatingIfNeeded: address >> 32)
                entries[i].u.msi.data = data
            }
        }
        try ioctl(VIREO_KVM_SET_GSI_ROUTING, raw, "KVM_SET_GSI_ROUTING failed")
    }

    /// Injects one MSI directly.
    public func signalMSI(address: UInt64, data: UInt32) throws {
        var msi = kvm_msi()
        msi.address_lo = UInt32(truncatingIfNeeded: address)
        msi.address_hi = UInt32(truncatingIfNeeded: address >> 32)
        msi.data = data
        try withUnsafeMutableBytes(of: &msi) { try ioctl(VIREO_KVM_SIGNAL_MSI, $0.baseAddress, "KVM_SIGNAL_MSI failed") }
    }

    /// KVM_GET_DIRTY_LOG for `slot` into `bitmap` (one bit per 4 KiB page; the caller sizes it).
    public func dirtyLog(slot: UInt32, into bitmap: UnsafeMutableRawBufferPointer) throws {
        var log = kvm_dirty_log()
        log.slot = slot
        log.dirty_bitmap = bitmap.baseAddress
        try withUnsafeMutableBytes(of: &log) { try ioctl(VIREO_KVM_GET_DIRTY_LOG, $0.baseAddress, "KVM_GET_DIRTY_LOG failed for slot \(slot)") }
    }

    public func enableCapability(_ cap: UInt32, args: [UInt64] = []) throws {
        var c = kvm_enable_cap()
        c.cap = cap
        withUnsafeMutableBytes(of: &c.args) { buf in
            for (i, a) in args.prefix(4).enumerated() { buf.storeBytes(of: a, toByteOffset: i * 8, as: UInt64.self) }
        }
        try withUnsafeMutableBytes(of: &c) { try ioctl(VIREO_KVM_ENABLE_CAP, $0.baseAddress, "KVM_ENABLE_CAP(\(cap)) failed") }
    }

    public func createVCPU(id: Int) throws -> VCPU {
        let raw = try retryingEINTR("cannot create vCPU \(id)") { vireo_ioctl(fd.rawValue, VIREO_KVM_CREATE_VCPU, UInt(id)) }
        return try VCPU(fd: OwnedFD(taking: raw), id: id, mmapSize: system.vcpuMmapSize)
    }
}

/// One entry of the GSI routing table.
public struct GSIRoute: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case irqchip(chip: UInt32, pin: UInt32)
        case msi(address: UInt64, data: UInt32)
    }
    public var gsi: UInt32
    public var kind: Kind
    public init(gsi: UInt32, kind: Kind) { self.gsi = gsi; self.kind = kind }

    /// The default x86 routes: GSIs 0-15 to the PIC (0-7 master, 8-15 slave) and IOAPIC, 16-23 to the IOAPIC.
    public static func defaultX86() -> [GSIRoute] {
        var routes: [GSIRoute] = []
        for gsi in UInt32(0)..<24 {
            if gsi < 16 {
                routes.append(GSIRoute(gsi: gsi, kind: .irqchip(chip: gsi < 8 ? 0 : 1, pin: gsi % 8)))
            }
            if gsi != 2 {   // IOAPIC pin 2 is the timer's (GSI 0 routes to pin 2 in real hardware; KVM maps 0->2 itself)
                routes.append(GSIRoute(gsi: gsi, kind: .irqchip(chip: 2, pin: gsi)))
            }
        }
        return routes
    }
}
