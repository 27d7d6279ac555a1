import Foundation
import Testing
import X86Boot

/// The ACPI tables Linux reads to find CPUs, the IOAPIC and the legacy devices' IRQs.
struct ACPITablesTests {
    let base: UInt64 = 0xE_0000

    func table(_ t: [UInt8], at address: UInt64) -> ArraySlice<UInt8> {
        let o = Int(address - base)
        let length = Int(t.u32(o + 4))
        return t[o..<(o + length)]
    }

    func sum(_ s: ArraySlice<UInt8>) -> UInt8 { s.reduce(0, &+) }

    @Test(arguments: [1, 2, 8, 254])
    func tablesChecksumAndLink(cpus: Int) throws {
        let t = try ACPITables.build(cpuCount: cpus)
        // RSDP: signature, both checksums, XSDT pointer.
        #expect(Array(t[0..<8]) == Array("RSD PTR ".utf8))
        #expect(sum(t[0..<20]) == 0)
        #expect(sum(t[0..<36]) == 0)
        #expect(t[15] == 2)                                   // ACPI 2.0+
        let xsdtAddress = t.u64(24)
        let xsdt = table(t, at: xsdtAddress)
        #expect(Array(xsdt.prefix(4)) == Array("XSDT".utf8))
        #expect(sum(xsdt) == 0)
        // XSDT -> FADT, MADT
        let entries = (xsdt.count - 36) / 8
        #expect(entries == 2)
        var signatures: [String] = []
        for i in 0..<entries {
            let address = t.u64(Int(xsdtAddress - base) + 36 + i * 8)
            let child = table(t, at: address)
            #expect(sum(child) == 0)
            signatures.append(String(decoding: child.prefix(4), as: UTF8.self))
            if signatures.last == "FACP" {
                let fadt = Array(child)
                #expect(fadt.u32(112) & (1 << 20) != 0)        // hardware-reduced ACPI
                let dsdt = table(t, at: fadt.u64(140))
                #expect(Array(dsdt.prefix(4)) == Array("DSDT".utf8))
                #expect(sum(dsdt) == 0)
            }
            if signatures.last == "APIC" {
                let madt = Array(child)
                // One 8-byte local APIC entry per CPU with APIC IDs 0..n-1, then the IOAPIC.
                var o = 44, lapics: [UInt8] = [], ioapics = 0
                while o + 2 <= madt.count {
                    let type = madt[o], length = Int(madt[o + 1])
                    #expect(length >= 2)
                    if length < 2 { break }
                    if type == 0 { lapics.append(madt[o + 3]); #expect(madt.u32(o + 4) == 1) }
                    if type == 1 { ioapics += 1; #expect(madt.u32(o + 4) == 0xFEC0_0000) }
                    o += length
                }
                #expect(lapics == (0..<cpus).map { UInt8($0) })
                #expect(ioapics == 1)
            }
        }
        #expect(signatures == ["FACP", "APIC"])
        #expect(UInt64(t.count) + base <= 0x10_0000)
    }

    @Test func dsdtDeclaresTheLegacyDevicesWithTheirIRQs() throws {
        let t = try ACPITables.build(cpuCount: 1)
        let fadt = Array(table(t, at: t.u64(Int(t.u64(24) - base) + 36)))
        let dsdt = Array(table(t, at: fadt.u64(140)))
        let aml = Array(dsdt[36...])
        // Scope (\_SB) { Device (COM1) ... Device (PS2K) ... Device (RTC0) ... }
        #expect(aml[0] == 0x10)
        for name in ["COM1", "PS2K", "RTC0"] {
            #expect(aml.firstRange(of: [0x5B, 0x82]) != nil)
            #expect(aml.firstRange(of: Array(name.utf8)) != nil, "missing device \(name)")
        }
        // COM1: IO 0x3F8 length 8 and IRQ 4 (mask 0x0010); PS2K IRQ 1; RTC0 IRQ 8.
        #expect(aml.firstRange(of: [0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03, 0x01, 0x08, 0x22, 0x10, 0x00]) != nil)
        #expect(aml.firstRange(of: [0x22, 0x02, 0x00]) != nil)
        #expect(aml.firstRange(of: [0x22, 0x00, 0x01]) != nil)
        // The scope's PkgLength covers the rest of the table but for Name (\_S5_, ...) after it.
        let lead = aml[1]
        let length = lead & 0xC0 == 0 ? Int(lead) : Int(lead & 0x0F) | Int(aml[2]) << 4
        let s5: [UInt8] = [0x08, 0x5C] + Array("_S5_".utf8) + [0x12, 0x05, 0x02, 0x0A, 0x05, 0x00]
        #expect(Array(aml[(length + 1)...]) == s5)
    }

    @Test func fadtPointsAtTheSleepRegistersTheVMMDecodes() throws {
        let t = try ACPITables.build(cpuCount: 1)
        let fadt = Array(table(t, at: t.u64(Int(t.u64(24) - base) + 36)))
        #expect(fadt.count == 276)
        // Generic address structures: system I/O, 8 bits wide, byte access.
        for (offset, port) in [(244, ACPITables.sleepControlPort), (256, ACPITables.sleepStatusPort)] {
            #expect(Array(fadt[offset..<(offset + 4)]) == [1, 8, 0, 1])
            #expect(fadt.u64(offset + 4) == UInt64(port))
        }
    }

    @Test func dsdtHasAPowerButtonBehindAGenericEventDevice() throws {
        let t = try ACPITables.build(cpuCount: 1)
        let fadt = Array(table(t, at: t.u64(Int(t.u64(24) - base) + 36)))
        let aml = Array(table(t, at: fadt.u64(140)).dropFirst(36))
        // Device (PWRB) { Name (_HID, EisaId ("PNP0C0C")) ... }
        #expect(aml.firstRange(of: Array("PWRB".utf8) + [0x08] + Array("_HID".utf8) + [0x0C, 0x41, 0xD0, 0x0C, 0x0C]) != nil)
        // GED0: _HID "ACPI0013"; Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { 9 }.
        #expect(aml.firstRange(of: [0x0D] + Array("ACPI0013".utf8) + [0x00]) != nil)
        #expect(aml.firstRange(of: [0x89, 0x06, 0x00, 0x03, 0x01, 0x09, 0x00, 0x00, 0x00]) != nil)
        // ... and a second descriptor { 10 } for the generation ID (Linux reads one GSI per descriptor).
        #expect(aml.firstRange(of: [0x89, 0x06, 0x00, 0x03, 0x01, 0x0A, 0x00, 0x00, 0x00]) != nil)
        // Method (_EVT, 1) { If (LEqual (Arg0, 9)) { Notify (\_SB.PWRB, 0x80) } If (LEqual (Arg0, 10)) { Notify (\_SB.VGEN, 0x80) } }
        let power: [UInt8] = [0xA0, 0x12, 0x93, 0x68, 0x0A, 0x09, 0x86, 0x5C, 0x2E] + Array("_SB_PWRB".utf8) + [0x0A, 0x80]
        let vgen: [UInt8] = [0xA0, 0x12, 0x93, 0x68, 0x0A, 0x0A, 0x86, 0x5C, 0x2E] + Array("_SB_VGEN".utf8) + [0x0A, 0x80]
        let method: [UInt8] = Array("_EVT".utf8) + [0x01] + power + vgen
        let at = try #require(aml.firstRange(of: method))
        #expect(aml[at.lowerBound - 2] == 0x14)                       // MethodOp
        #expect(Int(aml[at.lowerBound - 1]) == method.count + 1)      // its PkgLength
    }

    @Test func dsdtHasAGenerationIDDevice() throws {
        let t = try ACPITables.build(cpuCount: 1)
        let fadt = Array(table(t, at: t.u64(Int(t.u64(24) - base) + 36)))
        let aml = Array(table(t, at: fadt.u64(140)).dropFirst(36))
        #expect(aml.firstRange(of: Array("VGEN".utf8) + [0x08] + Array("_HID".utf8) + [0x0D] + Array("VMGENCTR".utf8) + [0x00]) != nil)
        #expect(aml.firstRange(of: [0x0D] + Array("VM_GEN_COUNTER".utf8) + [0x00]) != nil)
        // Name (ADDR, Package (2) { 0xEF000, Zero }): the ID's address, low and high halves.
        #expect(aml.firstRange(of: Array("ADDR".utf8) + [0x12, 0x08, 0x02, 0x0C, 0x00, 0xF0, 0x0E, 0x00, 0x00]) != nil)
        // The ID sits in the e820-reserved BIOS area, clear of the tables themselves.
        #expect(ACPITables.generationIDAddress >= X86MemoryLayout.acpiTablesAddress + UInt64(t.count))
        #expect(ACPITables.generationIDAddress + 16 <= X86MemoryLayout.highMemoryStart)
    }

    /// ACPICA's own disassembler (Debian's acpica-tools) must read the DSDT without complaint
    /// and see the objects Linux needs.
    @Test func acpicaDisassemblesTheDSDT() throws {
        guard let iasl = ["/usr/bin/iasl", "/usr/local/bin/iasl"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            print("SKIP acpicaDisassemblesTheDSDT: iasl (Debian package acpica-tools) is not installed; scripts/setup.sh installs it")
            return
        }
        let t = try ACPITables.build(cpuCount: 2)
        let fadt = Array(table(t, at: t.u64(Int(t.u64(24) - base) + 36)))
        let dsdt = Array(table(t, at: fadt.u64(140)))
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vireo-acpi-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try Data(dsdt).write(to: dir.appendingPathComponent("dsdt.dat"))
        let p = Process()
        p.executableURL = URL(fileURLWithPath: iasl)
        p.arguments = ["-d", "dsdt.dat"]
        p.currentDirectoryURL = dir
        let pipe = Pipe()
        p.standardOutput = pipe; p.standardError = pipe
        try p.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        #expect(p.terminationStatus == 0, "iasl -d failed: \(output)")
        let asl = try String(contentsOf: dir.appendingPathComponent("dsdt.dsl"), encoding: .utf8)
        for needle in ["Device (PWRB)", "EisaId (\"PNP0C0C\")", "Device (GED0)", "\"ACPI0013\"",
                       "Method (_EVT, 1", "Notify (\\_SB.PWRB, 0x80)", "Notify (\\_SB.VGEN, 0x80)",
                       "Device (VGEN)", "\"VMGENCTR\"", "\"VM_GEN_COUNTER\"", "Name (ADDR, Package (0x02)", "0x000EF000", "Name (\\_S5, Package (0x02)",
                       "Device (COM1)", "Device (PCI0)", "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )"] {
            #expect(asl.contains(needle), "the disassembled DSDT lacks \(needle)")
        }
    }

    @Test func refusesAbsurdCPUCounts() {
        #expect(throws: (any Error).self) { _ = try ACPITables.build(cpuCount: 0) }
        #expect(throws: (any Error).self) { _ = try ACPITables.build(cpuCount: 10_000) }
    }

    @Test func resetVectorPulsesTheI8042() throws {
        let plan = try LinuxBoot.plan(kernel: KernelImage.parse(bytes: Fixtures.bzImage(), name: "/k"),
                                      config: BootConfig(memorySize: 256 << 20, cpuCount: 1, cmdline: "console=ttyS0"))
        let blob = try #require(plan.blobs.first { $0.address == 0xF_FFF0 })
        // mov al, 0xFE; out 0x64, al
        #expect(Array(blob.bytes.prefix(4)) == [0xB0, 0xFE, 0xE6, 0x64])
        #expect(plan.blobs.contains { $0.address == 0xE_0000 && $0.label == "ACPI tables" })
    }
}

/// Leaf 0xD only describes state the guest's feature bits allow (nested hosts can disagree).
struct XSAVEConsistencyTests {
    func leaves(avx: Bool) -> [CPUIDEntry] {
        let f = CPUIDEntry.significantIndex
        return [
            CPUIDEntry(function: 0x0, eax: 0xD, ebx: 0x6874_7541, ecx: 0x444D_4163, edx: 0x6974_6E65),  // AuthenticAMD
            CPUIDEntry(function: 0x1, eax: 0x830F10, ebx: 0, ecx: (avx ? 1 << 28 : 0) | (1 << 26), edx: 0),
            CPUIDEntry(function: 0x7, index: 0, flags: f, eax: 0, ebx: 0, ecx: 0, edx: 0),
            CPUIDEntry(function: 0xD, index: 0, flags: f, eax: 0x7, ebx: 0x240, ecx: 0x340, edx: 0),
            CPUIDEntry(function: 0xD, index: 1, flags: f, eax: 0x5, ebx: 0, ecx: 0, edx: 0),
            CPUIDEntry(function: 0xD, index: 2, flags: f, eax: 0x100, ebx: 0x240, ecx: 0, edx: 0),
        ]
    }

    @Test func avxStateIsDroppedWithoutAVX() {
        let out = CPUIDPolicy.entries(from: leaves(avx: false), vcpuIndex: 0, vcpuCount: 1)
        let d0 = out.first { $0.function == 0xD && $0.index == 0 }
        #expect(d0?.eax == 0x3)          // x87 | SSE only
        #expect(d0?.ecx == 576)          // legacy area + header
        #expect(!out.contains { $0.function == 0xD && $0.index == 2 })
    }

    @Test func avxStateIsKeptWithAVX() {
        let out = CPUIDPolicy.entries(from: leaves(avx: true), vcpuIndex: 0, vcpuCount: 1)
        let d0 = out.first { $0.function == 0xD && $0.index == 0 }
        #expect(d0?.eax == 0x7)
        #expect(d0?.ecx == 0x340)
        #expect(out.contains { $0.function == 0xD && $0.index == 2 })
    }
}
