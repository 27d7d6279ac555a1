import VireoSupport

/// Bytes to copy into guest RAM at `address` before the first vCPU runs.
public struct GuestBlob: Sendable, Equatable {
    public var address: UInt64
    public var bytes: [UInt8]
    /// What it is, for logs and errors ("zero page", "page tables", ...).
    public var label: String
    public init(address: UInt64, bytes: [UInt8], label: String = "") {
        self.address = address; self.bytes = bytes; self.label = label
    }
    public var end: UInt64 { address &+ UInt64(bytes.count) }
}

/// How the boot CPU enters the kernel.
public enum BootEntry: Sendable, Equatable {
    /// Linux 64-bit boot protocol: long mode, identity paging, RSI = zero page.
    case linux64(rip: UInt64)
    /// Linux 32-bit boot protocol (bzImages without the 64-bit entry): flat protected mode, ESI = zero page.
    case linux32(eip: UInt64)
    /// PVH: flat 32-bit protected mode, paging off, EBX = hvm_start_info.
    case pvh(eip: UInt64)

    public var address: UInt64 {
        switch self {
        case .linux64(let a), .linux32(let a), .pvh(let a): return a
        }
    }
}

/// Initial register state of the boot CPU (the application processors start in the wait-for-SIPI
/// state KVM gives them). Maps onto KVM_SET_REGS / KVM_SET_SREGS / KVM_SET_FPU / KVM_SET_MSRS.
public struct VCPUBootState: Sendable, Equatable {
    public var rip: UInt64
    public var rsp: UInt64
    public var rbp: UInt64
    public var rsi: UInt64
    public var rbx: UInt64
    public var rflags: UInt64
    public var cr0: UInt64
    public var cr3: UInt64
    public var cr4: UInt64
    public var efer: UInt64
    public var cs: SegmentRegister
    public var ds: SegmentRegister
    public var es: SegmentRegister
    public var fs: SegmentRegister
    public var gs: SegmentRegister
    public var ss: SegmentRegister
    public var tr: SegmentRegister
    public var ldt: SegmentRegister
    public var gdt: DescriptorTable
    public var idt: DescriptorTable
    /// x87 control word and MXCSR for KVM_SET_FPU (the power-on defaults Linux expects).
    public var fpuControlWord: UInt16 = 0x37F
    public var mxcsr: UInt32 = 0x1F80
    /// MSRs to set on every vCPU (index, value) before it runs.
    public var msrs: [MSREntry] = BootMSRs.defaults

    /// GDTR/IDTR contents.
    public struct DescriptorTable: Sendable, Equatable {
        public var base: UInt64
        public var limit: UInt16
        public init(base: UInt64, limit: UInt16) { self.base = base; self.limit = limit }
    }
}

/// One model-specific register value.
public struct MSREntry: Sendable, Equatable {
    public var index: UInt32
    public var value: UInt64
    public init(index: UInt32, value: UInt64) { self.index = index; self.value = value }
}

/// MSRs every vCPU starts with.
public enum BootMSRs {
    public static let miscEnable: UInt32 = 0x1A0
    public static let mtrrDefType: UInt32 = 0x2FF
    /// IA32_MISC_ENABLE.FAST_STRING, and MTRRs enabled with write-back as the default memory type
    /// (without it Linux runs RAM uncached-by-MTRR and warns).
    public static let defaults: [MSREntry] = [
        MSREntry(index: miscEnable, value: 1),
        MSREntry(index: mtrrDefType, value: (1 << 11) | 6),
    ]
}

/// Control-register bits used at boot.
public enum ControlBits {
    public static let cr0PE: UInt64 = 1 << 0
    public static let cr0ET: UInt64 = 1 << 4
    public static let cr0PG: UInt64 = 1 << 31
    public static let cr4PAE: UInt64 = 1 << 5
    public static let eferLME: UInt64 = 1 << 8
    public static let eferLMA: UInt64 = 1 << 10
    /// RFLAGS with only the always-one bit 1 set (interrupts off).
    public static let rflagsReserved: UInt64 = 0x2
}

/// What the VMM asks for.
public struct BootConfig: Sendable, Equatable {
    /// Guest RAM in bytes (multiple of 4 KiB).
    public var memorySize: UInt64
    public var cpuCount: Int
    public var cmdline: String
    /// Size of the initrd file, when there is one; the plan says where to copy it.
    public var initrdSize: UInt64?
    /// Boot an ELF vmlinux through its PVH entry when it has one (true), or always through startup_64.
    public var preferPVH: Bool

    public init(memorySize: UInt64, cpuCount: Int, cmdline: String, initrdSize: UInt64? = nil, preferPVH: Bool = true) {
        self.memorySize = memorySize; self.cpuCount = cpuCount; self.cmdline = cmdline
        self.initrdSize = initrdSize; self.preferPVH = preferPVH
    }
}

/// Everything the VMM does to start Linux: copy `blobs` and `kernelSegments` (and the initrd to
/// `initrdAddress`) into guest RAM, describe RAM per `e820`, set the BSP's registers to `bsp`.
public struct BootPlan: Sendable, Equatable {
    /// Zero page or PVH start info, command line, GDT, page tables, MP table.
    public var blobs: [GuestBlob]
    /// Copy from the kernel file: bytes at fileOffset..+fileSize to guestAddress, zero-fill to memorySize.
    public var kernelSegments: [KernelSegment]
    /// Where to copy the initrd (of `BootConfig.initrdSize` bytes), if one was configured.
    public var initrdAddress: UInt64?
    public var bsp: VCPUBootState
    /// The memory map given to the guest.
    public var e820: [E820Entry]
    public var entry: BootEntry
}
