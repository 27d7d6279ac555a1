/// One CPUID leaf/subleaf as in `struct kvm_cpuid_entry2`.
public struct CPUIDEntry: Sendable, Equatable {
    public var function: UInt32
    public var index: UInt32
    /// KVM_CPUID_FLAG_* (bit 0: the subleaf index is significant).
    public var flags: UInt32
    public var eax: UInt32
    public var ebx: UInt32
    public var ecx: UInt32
    public var edx: UInt32

    public static let significantIndex: UInt32 = 1

    public init(function: UInt32, index: UInt32 = 0, flags: UInt32 = 0,
                eax: UInt32 = 0, ebx: UInt32 = 0, ecx: UInt32 = 0, edx: UInt32 = 0) {
        self.function = function; self.index = index; self.flags = flags
        self.eax = eax; self.ebx = ebx; self.ecx = ecx; self.edx = edx
    }
}

/// Turns what KVM supports (KVM_GET_SUPPORTED_CPUID) into what each vCPU is shown: a single socket
/// of `vcpuCount` cores with one thread each, APIC ID = vCPU index, "running under a hypervisor",
/// and power-management / MONITOR features the VMM does not emulate removed.
public enum CPUIDPolicy {
    /// Options that depend on KVM capabilities rather than on the supported-CPUID list.
    public struct Options: Sendable, Equatable {
        /// Advertise the TSC-deadline LAPIC timer (set when KVM_CAP_TSC_DEADLINE_TIMER is present).
        public var tscDeadlineTimer: Bool
        public init(tscDeadlineTimer: Bool = false) { self.tscDeadlineTimer = tscDeadlineTimer }
    }

    /// The CPU vendor, which decides the vendor-specific topology leaves.
    public enum Vendor: Sendable, Equatable { case intel, amd, other }

    /// The vendor named by leaf 0 ("GenuineIntel", "AuthenticAMD"; Hygon counts as AMD).
    public static func vendor(of entries: [CPUIDEntry]) -> Vendor {
        guard let l0 = entries.first(where: { $0.function == 0 }) else { return .other }
        switch (l0.ebx, l0.edx, l0.ecx) {
        case (0x756E_6547, 0x4965_6E69, 0x6C65_746E): return .intel
        case (0x6874_7541, 0x6974_6E65, 0x444D_4163), (0x6F67_7948, 0x6E65_476E, 0x656E_6975): return .amd
        default: return .other
        }
    }

    // Leaf 1 bits.
    static let ecxHypervisor: UInt32 = 1 << 31
    static let ecxTSCDeadline: UInt32 = 1 << 24
    /// DTES64, MONITOR, DS-CPL, EST, TM2: debug store, MONITOR/MWAIT and power management.
    static let ecxMasked: UInt32 = (1 << 2) | (1 << 3) | (1 << 4) | (1 << 7) | (1 << 8)
    static let edxHTT: UInt32 = 1 << 28
    /// DS, ACPI (thermal MSRs), TM, PBE.
    static let edxMasked: UInt32 = (1 << 21) | (1 << 22) | (1 << 29) | (1 << 31)
    /// Leaf 6 EAX bit 2: the APIC timer keeps running in deep C-states (ARAT); all else in leaf 6 goes.
    static let leaf6ARAT: UInt32 = 1 << 2
    /// 0x80000001 ECX bit 1 (AMD CmpLegacy: HTT counts cores, not threads).
    static let extCmpLegacy: UInt32 = 1 << 1
    /// 0x80000007 EDX bit 8: invariant TSC, the only advanced power-management bit kept.
    static let invariantTSC: UInt32 = 1 << 8

    /// Bits needed to number `count` things: ceil(log2(count)), 0 for 1.
    static func bitsFor(_ count: Int) -> UInt32 {
        var bits: UInt32 = 0
        while (1 << bits) < count { bits += 1 }
        return bits
    }

    /// The CPUID entries for vCPU `vcpuIndex` of `vcpuCount`, from KVM's supported entries.
    public static func entries(from supported: [CPUIDEntry], vcpuIndex: Int, vcpuCount: Int,
                               options: Options = Options()) -> [CPUIDEntry] {
        let count = UInt32(clamping: max(1, vcpuCount))
        let apicID = UInt32(clamping: max(0, vcpuIndex))
        let vendor = vendor(of: supported)
        let maxBasic = supported.first(where: { $0.function == 0 })?.eax ?? 0
        let coreBits = bitsFor(Int(count))

        var out: [CPUIDEntry] = []
        var emittedTopology: Set<UInt32> = []
        func topology(_ function: UInt32) -> [CPUIDEntry] {
            // x2APIC topology: level 1 SMT (1 thread per core), level 2 core (all vCPUs), then an invalid level.
            let f = CPUIDEntry.significantIndex
            return [
                CPUIDEntry(function: function, index: 0, flags: f, eax: 0, ebx: 1, ecx: (1 << 8) | 0, edx: apicID),
                CPUIDEntry(function: function, index: 1, flags: f, eax: coreBits, ebx: count, ecx: (2 << 8) | 1, edx: apicID),
                CPUIDEntry(function: function, index: 2, flags: f, eax: 0, ebx: 0, ecx: 2, edx: apicID),
            ]
        }

        for var e in supported {
            switch e.function {
            case 0x1:
                e.ebx = (e.ebx & 0x0000_FFFF) | (min(count, 255) << 16) | ((apicID & 0xFF) << 24)
                e.ecx = (e.ecx & ~ecxMasked) | ecxHypervisor
                if options.tscDeadlineTimer { e.ecx |= ecxTSCDeadline }
                e.edx &= ~edxMasked
                if count > 1 { e.edx |= edxHTT } else { e.edx &= ~edxHTT }
            case 0x4:
                // Deterministic cache parameters: cores per package, and who shares each cache.
                if e.eax & 0x1F != 0 {
                    let level = (e.eax >> 5) & 0x7
                    let sharing: UInt32 = level >= 3 ? min(count - 1, 0xFFF) : 0
                    e.eax = (e.eax & 0x3FFF) | (sharing << 14) | (min(count - 1, 0x3F) << 26)
                }
            case 0x5:
                e.eax = 0; e.ebx = 0; e.ecx = 0; e.edx = 0   // MONITOR/MWAIT: not offered
            case 0x6:
                e.eax &= leaf6ARAT; e.ebx = 0; e.ecx = 0; e.edx = 0
            case 0xB, 0x1F:
                if !emittedTopology.contains(e.function) {
                    emittedTopology.insert(e.function)
                    out.append(contentsOf: topology(e.function))
                }
                continue
            case 0x8000_0001 where vendor == .amd:
                if count > 1 { e.ecx |= extCmpLegacy } else { e.ecx &= ~extCmpLegacy }
            case 0x8000_0007:
                e.eax = 0; e.ebx = 0; e.ecx = 0; e.edx &= invariantTSC
            case 0x8000_0008 where vendor == .amd:
                // NC (cores - 1) and ApicIdCoreIdSize.
                e.ecx = (e.ecx & ~0xF0FF) | (coreBits << 12) | min(count - 1, 0xFF)
            case 0x8000_001D where vendor == .amd:
                if e.eax & 0x1F != 0 {
                    let level = (e.eax >> 5) & 0x7
                    let sharing: UInt32 = level >= 3 ? min(count - 1, 0xFFF) : 0
                    e.eax = (e.eax & ~(0xFFF << 14)) | (sharing << 14)
                }
            case 0x8000_001E where vendor == .amd:
                // Extended APIC ID, core ID, one thread per core, node 0 of 1 node.
                e.eax = apicID
                e.ebx = (e.ebx & ~0xFFFF) | (apicID & 0xFF)
                e.ecx = e.ecx & ~0x7FF
                e.edx = 0
            default:
                break
            }
            out.append(e)
        }
        // KVM lists leaf 0xB only when the host has it; offer the topology whenever the max basic leaf reaches it.
        if maxBasic >= 0xB && !emittedTopology.contains(0xB) {
            out.append(contentsOf: topology(0xB))
        }
        return consistentXSAVE(out)
    }

    /// XSAVE state components and the CPUID feature bit each depends on:
    /// (component, leaf, subleaf, register 0=ebx 1=ecx, bit).
    static let xsaveDependencies: [(component: UInt32, leaf: UInt32, register: Int, bit: UInt32)] = [
        (2, 0x1, 1, 28),          // AVX           <- CPUID.1:ECX.AVX
        (3, 0x7, 0, 14), (4, 0x7, 0, 14),        // MPX BNDREGS/BNDCSR <- CPUID.7:EBX.MPX
        (5, 0x7, 0, 16), (6, 0x7, 0, 16), (7, 0x7, 0, 16),   // AVX-512 <- CPUID.7:EBX.AVX512F
        (9, 0x7, 1, 3),           // PKRU          <- CPUID.7:ECX.PKU
    ]

    /// Leaf 0xD must only describe state components whose features the guest is offered: a
    /// host that reports AVX state in 0xD but not AVX in leaf 1 (seen in nested setups) makes
    /// Linux warn "XSAVE consistency problem" and fall back. Drops such components from
    /// 0xD.0 EAX, their sub-leaves, and recomputes the maximum size (0xD.0 ECX).
    static func consistentXSAVE(_ entries: [CPUIDEntry]) -> [CPUIDEntry] {
        func feature(_ leaf: UInt32, _ register: Int, _ bit: UInt32) -> Bool {
            guard let e = entries.first(where: { $0.function == leaf && $0.index == 0 }) else { return false }
            return ((register == 0 ? e.ebx : e.ecx) >> bit) & 1 == 1
        }
        var dropped: UInt32 = 0
        for d in xsaveDependencies where !feature(d.leaf, d.register, d.bit) { dropped |= 1 << d.component }
        guard dropped != 0 else { return entries }
        var out = entries.filter { !($0.function == 0xD && $0.index >= 2 && $0.index < 32 && (dropped >> $0.index) & 1 == 1) }
        guard let i = out.firstIndex(where: { $0.function == 0xD && $0.index == 0 }) else { return out }
        out[i].eax &= ~dropped
        // Largest end of any remaining user component (standard format), at least the legacy area + header.
        var maxSize: UInt32 = 576
        for e in out where e.function == 0xD && e.index >= 2 && e.index < 32 && (out[i].eax >> e.index) & 1 == 1 {
            maxSize = max(maxSize, e.ebx &+ e.eax)
        }
        out[i].ecx = maxSize
        out[i].ebx = min(out[i].ebx, maxSize)
        return out
    }
}
