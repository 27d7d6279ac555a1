import CLinux
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// Why `KVM_RUN` returned. Port and MMIO exits carry a view of the data in the shared
/// `kvm_run` page; it is valid until the next `run()`.
public enum VCPUExit {
    case io(IOExit)
    case mmio(MMIOExit)
    case halt
    case shutdown
    /// `KVM_RUN` returned EINTR/EAGAIN, or `immediate_exit` was set: someone kicked the vCPU.
    case interrupted
    case systemEvent(type: UInt32, flags: UInt64)
    case internalError(suberror: UInt32, data: [UInt64])
    case failEntry(reason: UInt64, cpu: UInt32)
    case exception(number: UInt32, errorCode: UInt32)
    case irqWindowOpen
    case other(reason: UInt32)
}

public struct IOExit {
    public var port: UInt16
    public var size: Int
    public var isWrite: Bool
    public var count: Int
    /// size * count bytes inside the kvm_run page (the kernel places them; bounds-checked).
    public var data: UnsafeMutableRawBufferPointer
}

public struct MMIOExit {
    public var address: UInt64
    public var isWrite: Bool
    /// 1...8 bytes inside the kvm_run page.
    public var data: UnsafeMutableRawBufferPointer
}

/// A virtual CPU. Owned and driven by exactly one host thread; `kick()` may be called from any thread.
public final class VCPU: @unchecked Sendable {
    public let fd: OwnedFD
    public let id: Int
    private let runPage: UnsafeMutableRawPointer
    private let runSize: Int
    private let ioOffset = vireo_kvm_run_io_offset()
    private let mmioOffset = vireo_kvm_run_mmio_offset()
    private let mmioDataOffset = vireo_kvm_run_mmio_data_offset()

    init(fd: OwnedFD, id: Int, mmapSize: Int) throws {
        self.fd = fd
        self.id = id
        let p = mmap(nil, mmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd.rawValue, 0)
        guard let p, p != MAP_FAILED else { throw VireoError.system("cannot map the kvm_run page of vCPU \(id)") }
        runPage = p
        runSize = mmapSize
    }

    deinit { munmap(runPage, runSize) }

    private var runStruct: UnsafeMutablePointer<kvm_run> {
        // SAFETY: the mapping is at least sizeof(kvm_run) (KVM_GET_VCPU_MMAP_SIZE) and lives as long as self.
        runPage.assumingMemoryBound(to: kvm_run.self)
    }

    /// Sets or clears `immediate_exit`: while set, `KVM_RUN` returns at once with EINTR.
    public func setImmediateExit(_ on: Bool) {
        // SAFETY: a single byte store into the shared kvm_run page; KVM reads it on entry.
        runStruct.pointee.immediate_exit = on ? 1 : 0
    }

    /// Runs the vCPU until the next exit that needs user space.
    @inline(__always)
    public func run() throws -> VCPUExit {
        let r = vireo_ioctl(fd.rawValue, VIREO_KVM_RUN, 0)
        if r < 0 {
            let e = errno
            if e == EINTR || e == EAGAIN { return .interrupted }
            throw VireoError.system("KVM_RUN failed on vCPU \(id)", errno: e)
        }
        let k = runStruct
        switch Int32(bitPattern: k.pointee.exit_reason) {
        case KVM_EXIT_IO:
            let io = (runPage + ioOffset).assumingMemoryBound(to: UInt8.self)
            // struct { __u8 direction; __u8 size; __u16 port; __u32 count; __u64 data_offset; }
            let raw = UnsafeRawPointer(io)
            let direction = raw.load(as: UInt8.self)
            let size = Int(raw.load(fromByteOffset: 1, as: UInt8.self))
            let port = raw.load(fromByteOffset: 2, as: UInt16.self)
            let count = Int(raw.load(fromByteOffset: 4, as: UInt32.self))
            let dataOffset = raw.load(fromByteOffset: 8, as: UInt64.self)
            let total = size &* count
            guard dataOffset < UInt64(runSize), total >= 0, UInt64(total) <= UInt64(runSize) &- dataOffset else {
                throw VireoError(.kvm, "KVM reported an I/O exit with data outside the kvm_run page")
            }
            // SAFETY: checked above that [dataOffset, dataOffset+total) lies inside the kvm_run mapping.
            let data = UnsafeMutableRawBufferPointer(start: runPage + Int(dataOffset), count: total)
            return .io(IOExit(port: port, size: size, isWrite: direction == UInt8(KVM_EXIT_IO_OUT), count: count, data: data))
        case KVM_EXIT_MMIO:
            let raw = UnsafeRawPointer(runPage + mmioOffset)
            // struct { __u64 phys_addr; __u8 data[8]; __u32 len; __u8 is_write; }
            let address = raw.load(as: UInt64.self)
            let len = Int(min(8, raw.load(fromByteOffset: 16, as: UInt32.self)))
            let isWrite = raw.load(fromByteOffset: 20, as: UInt8.self) != 0
            // SAFETY: mmio.data is an 8-byte array inside kvm_run; len is clamped to 8.
            let data = UnsafeMutableRawBufferPointer(start: runPage + mmioDataOffset, count: len)
            return .mmio(MMIOExit(address: address, isWrite: isWrite, data: data))
        case KVM_EXIT_HLT:
            return .halt
        case KVM_EXIT_SHUTDOWN:
            return .shutdown
        case KVM_EXIT_INTR:
            return .interrupted
        case KVM_EXIT_IRQ_WINDOW_OPEN:
            return .irqWindowOpen
        case KVM_EXIT_SYSTEM_EVENT:
            let ev = k.pointee.system_event
            return .systemEvent(type: ev.type, flags: ev.flags)
        case KVM_EXIT_INTERNAL_ERROR:
            let ie = k.pointee.internal
            let n = Int(min(ie.ndata, 16))
            let data = withUnsafeBytes(of: ie.data) { buf in (0..<n).map { buf.load(fromByteOffset: $0 * 8, as: UInt64.self) } }
            return .internalError(suberror: ie.suberror, data: data)
        case KVM_EXIT_FAIL_ENTRY:
            let f = k.pointee.fail_entry
            return .failEntry(reason: f.hardware_entry_failure_reason, cpu: f.cpu)
        case KVM_EXIT_EXCEPTION:
            let ex = k.pointee.ex
            return .exception(number: ex.exception, errorCode: ex.error_code)
        default:
            return .other(reason: k.pointee.exit_reason)
        }
    }

    // MARK: - Register state

    @inline(__always)
    func ioctl(_ request: UInt, _ arg: UnsafeMutableRawPointer?, _ what: @autoclosure () -> String) throws {
        _ = try retryingEINTR("vCPU \(id): " + what()) { vireo_ioctl_ptr(fd.rawValue, request, arg) }
    }

    public func registers() throws -> kvm_regs {
        var r = kvm_regs()
        try withUnsafeMutableBytes(of: &r) { try ioctl(VIREO_KVM_GET_REGS, $0.baseAddress, "KVM_GET_REGS failed") }
        return r
    }

    public func setRegisters(_ regs: kvm_regs) throws {
        var r = regs
        try withUnsafeMutableBytes(of: &r) { try ioctl(VIREO_KVM_SET_REGS, $0.baseAddress, "KVM_SET_REGS failed") }
    }

    public func specialRegisters() throws -> kvm_sregs {
        var r = kvm_sregs()
        try withUnsafeMutableBytes(of: &r) { try ioctl(VIREO_KVM_GET_SREGS, $0.baseAddress, "KVM_GET_SREGS failed") }
        return r
    }

    public func setSpecialRegisters(_ sregs: kvm_sregs) throws {
        var r = sregs
        try withUnsafeMutableBytes(of: &r) { try ioctl(VIREO_KVM_SET_SREGS, $0.baseAddress, "KVM_SET_SREGS failed") }
    }

    public func fpu() throws -> kvm_fpu {
        var f = kvm_fpu()
        try withUnsafeMutableBytes(of: &f) { try ioctl(VIREO_KVM_GET_FPU, $0.baseAddress, "KVM_GET_FPU failed") }
        return f
    }

    public func setFPU(_ fpu: kvm_fpu) throws {
        var f = fpu
        try withUnsafeMutableBytes(of: &f) { try ioctl(VIREO_KVM_SET_FPU, $0.baseAddress, "KVM_SET_FPU failed") }
    }

    /// Sets XCR0 (KVM_SET_XCRS with the one register).
    public func setXCR0(_ value: UInt64) throws {
        var x = kvm_xcrs()
        x.nr_xcrs = 1
        x.xcrs.0.xcr = 0
        x.xcrs.0.value = value
        try withUnsafeMutableBytes(of: &x) { try ioctl(VIREO_KVM_SET_XCRS, $0.baseAddress, "KVM_SET_XCRS failed") }
    }

    public func setCPUID(_ leaves: [CPUIDLeaf]) throws {
        let size = vireo_kvm_cpuid2_size(UInt32(leaves.count))
        let raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
        defer { raw.deallocate() }
        // SAFETY: room for the header and leaves.count entries; zeroed first.
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        raw.assumingMemoryBound(to: kvm_cpuid2.self).pointee.nent = UInt32(leaves.count)
        let entries = (raw + MemoryLayout<kvm_cpuid2>.size).assumingMemoryBound(to: kvm_cpuid_entry2.self)
        for (i, l) in leaves.enumerated() { entries[i] = l.raw }
        try ioctl(VIREO_KVM_SET_CPUID2, raw, "KVM_SET_CPUID2 failed")
    }

    /// Writes MSRs; returns how many KVM accepted (it stops at the first it refuses).
    @discardableResult
    public func setMSRs(_ msrs: [(index: UInt32, value: UInt64)]) throws -> Int {
        let size = vireo_kvm_msrs_size(UInt32(msrs.count))
        let raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
        defer { raw.deallocate() }
        // SAFETY: room for the header and msrs.count entries; zeroed first.
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        raw.assumingMemoryBound(to: kvm_msrs.self).pointee.nmsrs = UInt32(msrs.count)
        let entries = (raw + MemoryLayout<kvm_msrs>.size).assumingMemoryBound(to: kvm_msr_entry.self)
        for (i, m) in msrs.enumerated() { entries[i].index = m.index; entries[i].data = m.value }
        return Int(try retryingEINTR("vCPU \(id): KVM_SET_MSRS failed") { vireo_ioctl_ptr(fd.rawValue, VIREO_KVM_SET_MSRS, raw) })
    }

    public func getMSRs(_ indices: [UInt32]) throws -> [(index: UInt32, value: UInt64)] {
        let size = vireo_kvm_msrs_size(UInt32(indices.count))
        let raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
        defer { raw.deallocate() }
        // SAFETY: room for the header and indices.count entries; zeroed first.
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        raw.assumingMemoryBound(to: kvm_msrs.self).pointee.nmsrs = UInt32(indices.count)
        let entries = (raw + MemoryLayout<kvm_msrs>.size).assumingMemoryBound(to: kvm_msr_entry.self)
        for (i, idx) in indices.enumerated() { entries[i].index = idx }
        let n = Int(try retryingEINTR("vCPU \(id): KVM_GET_MSRS failed") { vireo_ioctl_ptr(fd.rawValue, VIREO_KVM_GET_MSRS, raw) })
        return (0..<min(n, indices.count)).map { (entries[$0].index, entries[$0].data) }
    }

    public func mpState() throws -> UInt32 {
        var s = kvm_mp_state()
        try withUnsafeMutableBytes(of: &s) { try ioctl(VIREO_KVM_GET_MP_STATE, $0.baseAddress, "KVM_GET_MP_STATE failed") }
        return s.mp_state
    }

    public func setMPState(_ state: UInt32) throws {
        var s = kvm_mp_state(mp_state: state)
        try withUnsafeMutableBytes(of: &s) { try ioctl(VIREO_KVM_SET_MP_STATE, $0.baseAddress, "KVM_SET_MP_STATE failed") }
    }

    /// LAPIC register page (KVM_GET_LAPIC), 1 KiB.
    public func lapic() throws -> kvm_lapic_state {
        var s = kvm_lapic_state()
        try withUnsafeMutableBytes(of: &s) { try ioctl(VIREO_KVM_GET_LAPIC, $0.baseAddress, "KVM_GET_LAPIC failed") }
        return s
    }

    public func setLAPIC(_ state: kvm_lapic_state) throws {
        var s = state
        try withUnsafeMutableBytes(of: &s) { try ioctl(VIREO_KVM_SET_LAPIC, $0.baseAddress, "KVM_SET_LAPIC failed") }
    }
}
