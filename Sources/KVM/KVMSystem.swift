import CLinux
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// `/dev/kvm`: the hypervisor's system-level handle. Creates VMs and answers capability queries.
public final class KVMSystem: @unchecked Sendable {
    public let fd: OwnedFD
    public let vcpuMmapSize: Int

    public static let defaultPath = "/dev/kvm"

    public init(path: String = KVMSystem.defaultPath) throws {
        let raw = Glibc.open(path, O_RDWR | O_CLOEXEC)
        if raw < 0 {
            let e = errno
            switch e {
            case ENOENT:
                throw VireoError(.notFound, "\(path) does not exist", hint: "load the KVM module (modprobe kvm_intel or kvm_amd) and enable VT-x/AMD-V in the firmware; `vireo host check` explains")
            case EACCES, EPERM:
                throw VireoError(.permissionDenied, "no permission to open \(path)", hint: "run as root or add your user to the 'kvm' group")
            default:
                throw VireoError.system("cannot open \(path)", errno: e)
            }
        }
        fd = OwnedFD(taking: raw)
        let version = vireo_ioctl(raw, VIREO_KVM_GET_API_VERSION, 0)
        guard version == 12 else {
            throw VireoError(.unsupported, "KVM API version \(version) is not the stable version 12", hint: "use a Linux kernel from the last decade")
        }
        let size = vireo_ioctl(raw, VIREO_KVM_GET_VCPU_MMAP_SIZE, 0)
        guard size > 0 else { throw VireoError.system("KVM_GET_VCPU_MMAP_SIZE failed") }
        vcpuMmapSize = Int(size)
    }

    /// KVM_CHECK_EXTENSION: 0 when absent, otherwise a capability-specific positive value.
    public func check(_ capability: Int32) -> Int32 {
        max(0, vireo_ioctl(fd.rawValue, VIREO_KVM_CHECK_EXTENSION, UInt(capability)))
    }

    /// The maximum number of vCPUs per VM KVM allows.
    public var maxVCPUs: Int {
        let m = check(KVM_CAP_MAX_VCPUS)
        return Int(m > 0 ? m : max(check(KVM_CAP_NR_VCPUS), 1))
    }

    /// True when this KVM is the page-table based "PVM" backend (nested, guest runs at CPL 3).
    public static var isPVM: Bool {
        access("/sys/module/kvm_pvm", F_OK) == 0
    }

    public func createVM() throws -> VirtualMachine {
        let raw = try retryingEINTR("KVM_CREATE_VM failed") { vireo_ioctl(fd.rawValue, VIREO_KVM_CREATE_VM, 0) }
        return VirtualMachine(fd: OwnedFD(taking: raw), system: self)
    }

    /// KVM_GET_SUPPORTED_CPUID: every leaf this host's KVM can expose.
    public func supportedCPUID() throws -> [CPUIDLeaf] {
        var n: UInt32 = 256
        while n <= 4096 {
            let size = vireo_kvm_cpuid2_size(n)
            let raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
            defer { raw.deallocate() }
            // SAFETY: `raw` has room for the header plus n entries; KVM writes at most n.
            raw.initializeMemory(as: UInt8.self, repeating: 0, count: size)
            let cpuid = raw.assumingMemoryBound(to: kvm_cpuid2.self)
            cpuid.pointee.nent = n
            if vireo_ioctl_ptr(fd.rawValue, VIREO_KVM_GET_SUPPORTED_CPUID, raw) == 0 {
                let count = Int(cpuid.pointee.nent)
                let entries = (raw + MemoryLayout<kvm_cpuid2>.size).assumingMemoryBound(to: kvm_cpuid_entry2.self)
                return (0..<count).map { CPUIDLeaf(entries[$0]) }
            }
            guard errno == E2BIG else { throw VireoError.system("KVM_GET_SUPPORTED_CPUID failed") }
            n *= 2
        }
        throw VireoError(.kvm, "KVM reports more than 4096 CPUID entries")
    }

    /// KVM_GET_MSR_INDEX_LIST: the MSRs KVM saves and restores.
    public func msrIndexList() throws -> [UInt32] {
        var n: UInt32 = 512
        while n <= 16384 {
            let size = vireo_kvm_msr_list_size(n)
            let raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
            defer { raw.deallocate() }
            let list = raw.assumingMemoryBound(to: kvm_msr_list.self)
            list.pointee.nmsrs = n
            if vireo_ioctl_ptr(fd.rawValue, VIREO_KVM_GET_MSR_INDEX_LIST, raw) == 0 {
                let indices = (raw + MemoryLayout<kvm_msr_list>.size).assumingMemoryBound(to: UInt32.self)
                return (0..<Int(list.pointee.nmsrs)).map { indices[$0] }
            }
            guard errno == E2BIG else { throw VireoError.system("KVM_GET_MSR_INDEX_LIST failed") }
            n *= 2
        }
        throw VireoError(.kvm, "KVM reports too many MSRs")
    }
}

/// One CPUID leaf as KVM describes it (struct kvm_cpuid_entry2).
public struct CPUIDLeaf: Sendable, Equatable {
    public var function: UInt32
    public var index: UInt32
    public var flags: UInt32
    public var eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32

    public init(function: UInt32, index: UInt32, flags: UInt32, eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32) {
        self.function = function; self.index = index; self.flags = flags
        self.eax = eax; self.ebx = ebx; self.ecx = ecx; self.edx = edx
    }

    init(_ e: kvm_cpuid_entry2) {
        self.init(function: e.function, index: e.index, flags: e.flags, eax: e.eax, ebx: e.ebx, ecx: e.ecx, edx: e.edx)
    }

    var raw: kvm_cpuid_entry2 {
        var e = kvm_cpuid_entry2()
        e.function = function; e.index = index; e.flags = flags
        e.eax = eax; e.ebx = ebx; e.ecx = ecx; e.edx = edx
        return e
    }
}
