import Testing
import X86Boot

/// A KVM_GET_SUPPORTED_CPUID list shaped like an AMD EPYC-Rome host's.
enum SampleCPUID {
    static let amdVendor = (ebx: UInt32(0x6874_7541), edx: UInt32(0x6974_6E65), ecx: UInt32(0x444D_4163))
    static let intelVendor = (ebx: UInt32(0x756E_6547), edx: UInt32(0x4965_6E69), ecx: UInt32(0x6C65_746E))

    static func entries(amd: Bool) -> [CPUIDEntry] {
        let v = amd ? amdVendor : intelVendor
        let si = CPUIDEntry.significantIndex
        return [
            CPUIDEntry(function: 0, eax: 0x10, ebx: v.ebx, ecx: v.ecx, edx: v.edx),
            CPUIDEntry(function: 1, eax: 0x830F10, ebx: 0x3F_0800 | 0x2000_0000,
                       ecx: 0x7ED8_320B | (1 << 3), edx: 0x178B_FBFF | (1 << 22) | (1 << 29)),
            CPUIDEntry(function: 4, index: 0, flags: si, eax: 0x0000_4121 | (0x3F << 26), ebx: 0x01C0_003F, ecx: 0x3F),
            CPUIDEntry(function: 4, index: 1, flags: si, eax: 0x0000_4163, ebx: 0x01C0_003F, ecx: 0xFFF),
            CPUIDEntry(function: 4, index: 2, flags: si, eax: 0x0, ebx: 0, ecx: 0),
            CPUIDEntry(function: 5, eax: 0x40, ebx: 0x40, ecx: 3, edx: 0x11),
            CPUIDEntry(function: 6, eax: 0x4 | 0x2, ecx: 0x9),
            CPUIDEntry(function: 7, index: 0, flags: si, ebx: 0x219C_91A9),
            CPUIDEntry(function: 0xB, index: 0, flags: si, eax: 1, ebx: 2, ecx: 0x100, edx: 7),
            CPUIDEntry(function: 0xB, index: 1, flags: si, eax: 7, ebx: 128, ecx: 0x201, edx: 7),
            CPUIDEntry(function: 0x4000_0000, eax: 0x4000_0001, ebx: 0x4B4D_564B, ecx: 0x564B_4D56, edx: 0x4D),
            CPUIDEntry(function: 0x4000_0001, eax: 0x0100_7AFB),
            CPUIDEntry(function: 0x8000_0000, eax: 0x8000_001F, ebx: v.ebx, ecx: v.ecx, edx: v.edx),
            CPUIDEntry(function: 0x8000_0001, eax: 0x830F10, ecx: 0x75C2_37FF, edx: 0x2FD3_FBFF),
            CPUIDEntry(function: 0x8000_0007, eax: 1, ebx: 2, ecx: 3, edx: 0x100 | 0x7F),
            CPUIDEntry(function: 0x8000_0008, eax: 0x3030, ebx: 0x1, ecx: 0x703F),
            CPUIDEntry(function: 0x8000_001D, index: 0, flags: si, eax: 0x0000_4121, ebx: 0x01C0_003F, ecx: 0x3F),
            CPUIDEntry(function: 0x8000_001D, index: 3, flags: si, eax: 0x0003_C163, ebx: 0x03C0_003F, ecx: 0x3FFF),
            CPUIDEntry(function: 0x8000_001E, eax: 0x0D, ebx: 0x0106, ecx: 0x0300, edx: 0),
        ]
    }
}

@Suite struct CPUIDPolicyTests {
    func leaf(_ e: [CPUIDEntry], _ f: UInt32, _ i: UInt32 = 0) -> CPUIDEntry? {
        e.first { $0.function == f && $0.index == i }
    }

    @Test func vendorDetection() {
        #expect(CPUIDPolicy.vendor(of: SampleCPUID.entries(amd: true)) == .amd)
        #expect(CPUIDPolicy.vendor(of: SampleCPUID.entries(amd: false)) == .intel)
        #expect(CPUIDPolicy.vendor(of: []) == .other)
    }

    @Test(arguments: [(0, 1), (0, 2), (1, 2), (3, 4), (5, 6), (200, 254)])
    func leaf1Topology(index: Int, count: Int) throws {
        let out = CPUIDPolicy.entries(from: SampleCPUID.entries(amd: true), vcpuIndex: index, vcpuCount: count)
        let l1 = try #require(leaf(out, 1))
        #expect(l1.ebx >> 24 == UInt32(index))                 // initial APIC ID
        #expect((l1.ebx >> 16) & 0xFF == UInt32(count))         // logical processors
        #expect((l1.ebx >> 8) & 0xFF == 0x08)                   // CLFLUSH size kept
        #expect(l1.ecx & (1 << 31) != 0)                        // hypervisor
        #expect(l1.ecx & (1 << 3) == 0)                         // MONITOR off
        #expect((l1.edx & (1 << 28) != 0) == (count > 1))         // HTT
        #expect(l1.edx & ((1 << 22) | (1 << 29)) == 0)          // ACPI thermal, TM
        #expect(l1.eax == 0x830F10)                             // signature untouched
    }

    @Test func x2apicTopologyLeaves() throws {
        let out = CPUIDPolicy.entries(from: SampleCPUID.entries(amd: true), vcpuIndex: 2, vcpuCount: 3)
        let b = out.filter { $0.function == 0xB }
        #expect(b.count == 3)
        #expect(b.allSatisfy { $0.edx == 2 && $0.flags & CPUIDEntry.significantIndex != 0 })
        #expect(b[0].index == 0 && b[0].eax == 0 && b[0].ebx == 1 && b[0].ecx == 0x100)      // SMT: 1 thread
        #expect(b[1].index == 1 && b[1].eax == 2 && b[1].ebx == 3 && b[1].ecx == 0x201)      // core: 3 CPUs, shift 2
        #expect(b[2].index == 2 && (b[2].ecx >> 8) & 0xFF == 0)                              // end of levels
    }

    @Test func topologyLeafAddedWhenMaxLeafAllows() {
        let noB = SampleCPUID.entries(amd: true).filter { $0.function != 0xB }
        let out = CPUIDPolicy.entries(from: noB, vcpuIndex: 1, vcpuCount: 2)
        #expect(out.filter { $0.function == 0xB }.count == 3)
        var low = noB
        low[0].eax = 0xA
        #expect(CPUIDPolicy.entries(from: low, vcpuIndex: 1, vcpuCount: 2).filter { $0.function == 0xB }.isEmpty)
    }

    @Test func amdExtendedTopology() throws {
        let out = CPUIDPolicy.entries(from: SampleCPUID.entries(amd: true), vcpuIndex: 3, vcpuCount: 4)
        let l8 = try #require(leaf(out, 0x8000_0008))
        #expect(l8.ecx & 0xFF == 3)                             // NC = cores - 1
        #expect((l8.ecx >> 12) & 0xF == 2)                      // ApicIdCoreIdSize
        #expect(l8.ecx & 0x3_0000 == 0)                         // other bits untouched
        #expect(l8.eax == 0x3030)
        let l1e = try #require(leaf(out, 0x8000_001E))
        #expect(l1e.eax == 3)                                   // extended APIC ID
        #expect(l1e.ebx & 0xFF == 3)                            // core ID
        #expect((l1e.ebx >> 8) & 0xFF == 0)                     // 1 thread per core
        #expect(l1e.ecx & 0x7FF == 0)                           // node 0 of 1
        let l3 = try #require(leaf(out, 0x8000_001D, 3))
        #expect((l3.eax >> 14) & 0xFFF == 3)                    // L3 shared by all 4
        let l1d = try #require(leaf(out, 0x8000_001D, 0))
        #expect((l1d.eax >> 14) & 0xFFF == 0)                   // L1 per core
        let e1 = try #require(leaf(out, 0x8000_0001))
        #expect(e1.ecx & 2 != 0)                                // CmpLegacy with >1 core
        let single = CPUIDPolicy.entries(from: SampleCPUID.entries(amd: true), vcpuIndex: 0, vcpuCount: 1)
        #expect(leaf(single, 0x8000_0001)!.ecx & 2 == 0)
    }

    @Test func intelCacheLeaf() throws {
        let out = CPUIDPolicy.entries(from: SampleCPUID.entries(amd: false), vcpuIndex: 0, vcpuCount: 4)
        let l0 = try #require(leaf(out, 4, 0))
        #expect(l0.eax >> 26 == 3)                              // cores per package - 1
        #expect((l0.eax >> 14) & 0xFFF == 0)                    // L1 not shared
        #expect(l0.eax & 0x3FFF == 0x0000_4121 & 0x3FFF)        // type/level kept
        #expect(leaf(out, 4, 2)!.eax == 0)                      // null subleaf untouched
        #expect(leaf(out, 0x8000_0008)!.ecx == 0x703F)          // AMD-only leaf untouched on Intel
    }

    @Test func powerManagementAndMonitorMasked() throws {
        let out = CPUIDPolicy.entries(from: SampleCPUID.entries(amd: true), vcpuIndex: 0, vcpuCount: 2)
        let l5 = try #require(leaf(out, 5))
        #expect(l5.eax == 0 && l5.ebx == 0 && l5.ecx == 0 && l5.edx == 0)
        let l6 = try #require(leaf(out, 6))
        #expect(l6.eax == 0x4 && l6.ecx == 0)                   // only ARAT
        let l87 = try #require(leaf(out, 0x8000_0007))
        #expect(l87.edx == 0x100 && l87.eax == 0)               // only invariant TSC
    }

    @Test func kvmLeavesAndOthersUntouched() {
        let input = SampleCPUID.entries(amd: true)
        let out = CPUIDPolicy.entries(from: input, vcpuIndex: 1, vcpuCount: 2)
        for f: UInt32 in [0, 7, 0x4000_0000, 0x4000_0001, 0x8000_0000] {
            #expect(leaf(out, f) == leaf(input, f))
        }
        #expect(out.count == input.count + 1)                   // 0xB: 2 subleaves in, 3 out
    }

    @Test func tscDeadlineOption() {
        let out = CPUIDPolicy.entries(from: SampleCPUID.entries(amd: true), vcpuIndex: 0, vcpuCount: 1,
                                      options: .init(tscDeadlineTimer: true))
        #expect(leaf(out, 1)!.ecx & (1 << 24) != 0)
    }
}
