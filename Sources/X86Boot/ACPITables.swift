import VireoSupport

/// The ACPI tables Linux needs to find its CPUs and interrupt controllers when the kernel has
/// no MP-table parser (Debian's cloud kernel: `# CONFIG_X86_MPPARSE is not set`):
/// RSDP -> XSDT -> { FADT (hardware-reduced, -> DSDT), MADT }.
///
/// All of them sit contiguously at `X86MemoryLayout.acpiTablesAddress` (0xE0000, inside the
/// reserved BIOS area of the e820 map, where Linux also scans for the RSDP), and the boot
/// paths pass the RSDP's address explicitly (boot_params.acpi_rsdp_addr, PVH rsdp_paddr).
public enum ACPITables {
    static let oemID = "VIREO "
    static let oemTableID = "VIREOVM "
    static let headerSize = 36

    /// The hardware-reduced sleep control register (FADT SLEEP_CONTROL_REG), an I/O port the VMM
    /// decodes: Linux powers off by writing `SLP_EN | SLP_TYP << 2` with SLP_TYP = `s5SleepType`.
    public static let sleepControlPort: UInt16 = 0x600
    /// FADT SLEEP_STATUS_REG (Linux clears WAK_STS there before sleeping; it reads as 0).
    public static let sleepStatusPort: UInt16 = 0x601
    /// The SLP_TYP value \_S5_ (soft off) declares.
    public static let s5SleepType: UInt8 = 5
    /// The GSI of the Generic Event Device (ACPI0013): an edge on it runs `_EVT`, which
    /// notifies the power button (PNP0C0C), i.e. an ACPI shutdown request.
    public static let powerButtonGSI: UInt32 = 9
    /// The GSI whose edge tells the guest its VM generation ID changed (the GED's `_EVT`
    /// notifies \_SB.VGEN, and Linux's vmgenid driver reads the new ID and reseeds its RNG).
    public static let generationIDGSI: UInt32 = 10
    /// Where the 16-byte VM generation ID lives in guest memory: in the BIOS area below 1 MiB
    /// that the e820 map reserves, after the ACPI tables. `\_SB.VGEN.ADDR` names it.
    public static let generationIDAddress: UInt64 = 0xE_F000

    /// The tables for `cpuCount` CPUs (local APIC IDs 0..n-1, IOAPIC ID n), laid out from `address`.
    public static func build(cpuCount: Int, address: UInt64 = X86MemoryLayout.acpiTablesAddress) throws -> [UInt8] {
        guard cpuCount >= 1, cpuCount <= MPTable.maxCPUs else {
            throw VireoError(.invalidArgument, "\(cpuCount) vCPUs: the MADT describes 1 to \(MPTable.maxCPUs)")
        }
        let dsdt = table("DSDT", revision: 2, body: AML.legacyDevices())
        let madt = table("APIC", revision: 5, body: madtBody(cpuCount: cpuCount))
        // Layout: RSDP (36, padded to 64) | XSDT (36 + 2*8) | FADT (276) | DSDT | MADT
        let rsdpAddress = address
        let xsdtAddress = address + 64
        let fadtAddress = xsdtAddress + UInt64(headerSize + 16)
        let dsdtAddress = fadtAddress + 276
        let madtAddress = dsdtAddress + UInt64(dsdt.count)
        let fadt = table("FACP", revision: 6, body: fadtBody(dsdt: dsdtAddress))
        var xsdtBody: [UInt8] = []
        appendLE(&xsdtBody, fadtAddress)
        appendLE(&xsdtBody, madtAddress)
        let xsdt = table("XSDT", revision: 1, body: xsdtBody)

        var out = rsdp(xsdt: xsdtAddress)
        out += [UInt8](repeating: 0, count: 64 - out.count)
        out += xsdt + fadt + dsdt + madt
        guard UInt64(out.count) + rsdpAddress <= X86MemoryLayout.highMemoryStart else {
            throw VireoError(.internalError, "ACPI tables do not fit below 1 MiB")
        }
        return out
    }

    /// ACPI 2.0+ Root System Description Pointer.
    static func rsdp(xsdt: UInt64) -> [UInt8] {
        var r: [UInt8] = Array("RSD PTR ".utf8)
        r.append(0)                                  // checksum of the first 20 bytes, below
        r += Array(oemID.utf8)
        r.append(2)                                  // revision: ACPI 2.0+
        appendLE(&r, UInt32(0))                      // RSDT address: none, XSDT only
        appendLE(&r, UInt32(36))                     // length
        appendLE(&r, xsdt)
        r.append(0)                                  // extended checksum, below
        r += [0, 0, 0]
        r[8] = checksum(r[0..<20])
        r[32] = checksum(r[0..<36])
        return r
    }

    /// Fixed ACPI Description Table, hardware-reduced (no PM timer, no SCI, no legacy GPEs).
    static func fadtBody(dsdt: UInt64) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 276 - headerSize)
        func put32(_ v: UInt32, _ offset: Int) { for i in 0..<4 { b[offset - headerSize + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) } }
        func put16(_ v: UInt16, _ offset: Int) { for i in 0..<2 { b[offset - headerSize + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) } }
        func put64(_ v: UInt64, _ offset: Int) { for i in 0..<8 { b[offset - headerSize + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) } }
        put32(UInt32(truncatingIfNeeded: dsdt), 40)   // DSDT (32-bit)
        put16(1 << 1, 109)                            // IAPC_BOOT_ARCH: 8042 present
        // Flags: WBINVD (0), HW_REDUCED_ACPI (20). With a hardware-reduced FADT Linux reboots
        // through EFI, then the BIOS reset vector (see ResetVector), then the i8042 pulse.
        put32((1 << 0) | (1 << 20), 112)
        b[131 - headerSize] = 1                       // FADT minor version (6.1)
        put64(dsdt, 140)                              // X_DSDT
        // SLEEP_CONTROL_REG (244) and SLEEP_STATUS_REG (256): byte-wide system I/O ports.
        for (offset, port) in [(244, sleepControlPort), (256, sleepStatusPort)] {
            b[offset - headerSize] = 1                // address space: system I/O
            b[offset - headerSize + 1] = 8            // register bit width
            b[offset - headerSize + 3] = 1            // access size: byte
            put64(UInt64(port), offset + 4)
        }
        return b
    }

    /// Multiple APIC Description Table: one local APIC per CPU, the IOAPIC, LINT1 as NMI.
    static func madtBody(cpuCount: Int) -> [UInt8] {
        var b: [UInt8] = []
        appendLE(&b, UInt32(X86MemoryLayout.lapicAddress))
        appendLE(&b, UInt32(1))                                     // PCAT_COMPAT: dual 8259s present
        for cpu in 0..<cpuCount {
            b += [0, 8, UInt8(cpu), UInt8(cpu)]                     // processor local APIC
            appendLE(&b, UInt32(1))                                 // enabled
        }
        b += [1, 12, UInt8(cpuCount), 0]                            // IOAPIC
        appendLE(&b, UInt32(X86MemoryLayout.ioapicAddress))
        appendLE(&b, UInt32(0))                                     // GSI base
        b += [4, 6, 0xFF, 0, 0, 1]                                  // local APIC NMI: all CPUs, LINT1
        return b
    }

    static func table(_ signature: String, revision: UInt8, body: [UInt8]) -> [UInt8] {
        var t: [UInt8] = Array(signature.utf8)
        appendLE(&t, UInt32(headerSize + body.count))
        t.append(revision)
        t.append(0)                                   // checksum, below
        t += Array(oemID.utf8)
        t += Array(oemTableID.utf8)
        appendLE(&t, UInt32(1))                       // OEM revision
        t += Array("VIRO".utf8)                       // creator ID
        appendLE(&t, UInt32(1))                       // creator revision
        t += body
        t[9] = checksum(t[...])
        return t
    }

    /// The few AML objects Vireo's DSDT needs. In hardware-reduced ACPI Linux has no legacy
    /// PIC and maps no ISA IRQ by itself, so every legacy device must be declared with its
    /// ports and IRQ (`_CRS`) for its driver to get a working interrupt.
    enum AML {
        /// \_SB.COM1 (16550 at 0x3F8, IRQ 4), \_SB.PS2K (i8042 at 0x60/0x64, IRQ 1),
        /// \_SB.RTC0 (CMOS at 0x70, IRQ 8).
        static func legacyDevices() -> [UInt8] {
            let devices = device("COM1", eisaID: 0x0105_D041, resources: io(0x3F8, 8) + irq(4))
                + device("PS2K", eisaID: 0x0303_D041, resources: io(0x60, 1) + io(0x64, 1) + irq(1))
                + device("RTC0", eisaID: 0x000B_D041, resources: io(0x70, 2) + irq(8))
                + pciRootBridge()
                + powerButton() + generationIDDevice() + genericEventDevice()
            let scope = [0x10] + pkgLength(1 + 4 + devices.count) + Array("\\_SB_".utf8) + devices   // Scope (\_SB)
            return scope + sleepStateS5()
        }

        /// Name (\_S5_, Package (2) { s5SleepType, Zero }): the SLP_TYP values of soft-off. With it
        /// (and the FADT's sleep registers) Linux installs ACPI power-off.
        static func sleepStateS5() -> [UInt8] {
            let elements: [UInt8] = [0x02, 0x0A, s5SleepType, 0x00]             // NumElements, BytePrefix n, Zero
            return [0x08, 0x5C] + Array("_S5_".utf8) + [0x12] + pkgLength(elements.count) + elements
        }

        /// \_SB.PWRB: a control-method power button (PNP0C0C). Linux's `button` driver turns a
        /// Notify (PWRB, 0x80) into KEY_POWER, which systemd-logind or acpid acts on.
        static func powerButton() -> [UInt8] {
            var body = Array("PWRB".utf8)
            body += [0x08] + Array("_HID".utf8) + [0x0C] + le(UInt32(0x0C0C_D041))      // EisaId("PNP0C0C")
            body += [0x08] + Array("_UID".utf8) + [0x00]
            return [0x5B, 0x82] + pkgLength(body.count) + body
        }

        /// \_SB.VGEN: the VM generation ID device (Microsoft's "Virtual Machine Generation ID"
        /// specification; Linux's vmgenid driver binds to _HID VMGENCTR or _CID VM_GEN_COUNTER).
        /// `ADDR` is a package of the ID's guest-physical address, low and high 32 bits. A
        /// Notify (VGEN, 0x80) makes the driver read the ID again; a new one reseeds the RNG.
        static func generationIDDevice() -> [UInt8] {
            var body = Array("VGEN".utf8)
            body += [0x08] + Array("_HID".utf8) + [0x0D] + Array("VMGENCTR".utf8) + [0x00]
            body += [0x08] + Array("_CID".utf8) + [0x0D] + Array("VM_GEN_COUNTER".utf8) + [0x00]
            body += [0x08] + Array("_DDN".utf8) + [0x0D] + Array("VM_Gen_Counter".utf8) + [0x00]
            let elements: [UInt8] = [0x02, 0x0C] + le(UInt32(generationIDAddress)) + [0x00]   // 2 elements: DWordConst, Zero
            body += [0x08] + Array("ADDR".utf8) + [0x12] + pkgLength(elements.count) + elements
            return [0x5B, 0x82] + pkgLength(body.count) + body
        }

        /// \_SB.GED0: the hardware-reduced Generic Event Device (ACPI0013). Two interrupts
        /// (each its own Extended Interrupt descriptor: Linux takes one GSI per descriptor),
        /// ResourceConsumer, Edge, ActiveHigh, Exclusive: powerButtonGSI and generationIDGSI.
        /// Linux runs `_EVT (GSI)`, which notifies \_SB.PWRB (the VMM presses the power button
        /// by pulsing its GSI) or \_SB.VGEN (the generation ID changed).
        static func genericEventDevice() -> [UInt8] {
            var body = Array("GED0".utf8)
            body += [0x08] + Array("_HID".utf8) + [0x0D] + Array("ACPI0013".utf8) + [0x00]   // String
            body += [0x08] + Array("_UID".utf8) + [0x00]
            let template: [UInt8] = [0x89] + le(UInt16(6)) + [0x03, 0x01] + le(powerButtonGSI)
                + [0x89] + le(UInt16(6)) + [0x03, 0x01] + le(generationIDGSI) + [0x79, 0x00]
            let buffer = [0x0A, UInt8(template.count)] + template
            body += [0x08] + Array("_CRS".utf8) + [0x11] + pkgLength(buffer.count) + buffer
            // If (LEqual (Arg0, gsi)) { Notify (\_SB.NAME, 0x80) }
            func dispatch(_ gsi: UInt32, _ device: String) -> [UInt8] {
                let notify: [UInt8] = [0x86, 0x5C, 0x2E] + Array("_SB_".utf8) + Array(device.utf8) + [0x0A, 0x80]
                let predicate: [UInt8] = [0x93, 0x68, 0x0A, UInt8(truncatingIfNeeded: gsi)]
                return [0xA0] + pkgLength(predicate.count + notify.count) + predicate + notify
            }
            let method = Array("_EVT".utf8) + [0x01] + dispatch(powerButtonGSI, "PWRB") + dispatch(generationIDGSI, "VGEN")
            body += [0x14] + pkgLength(method.count) + method
            return [0x5B, 0x82] + pkgLength(body.count) + body
        }

        static func device(_ name: String, eisaID: UInt32, resources: [UInt8]) -> [UInt8] {
            var body = Array(name.utf8)
            body += [0x08] + Array("_HID".utf8) + [0x0C] + le(eisaID)                  // Name (_HID, EisaId)
            body += [0x08] + Array("_UID".utf8) + [0x00]                                // Name (_UID, Zero)
            let template = resources + [0x79, 0x00]                                    // + EndTag
            let buffer = [0x0A, UInt8(template.count)] + template                      // BufferSize, bytes
            body += [0x08] + Array("_CRS".utf8) + [0x11] + pkgLength(buffer.count) + buffer
            return [0x5B, 0x82] + pkgLength(body.count) + body                          // Device (name) { ... }
        }

        /// \_SB.PCI0: the PCI root bridge (PNP0A03, segment 0, bus 0) on configuration
        /// mechanism 1. With ACPI, Linux only scans PCI buses that the DSDT declares (it does not
        /// fall back to probing bus 0 blindly), so without this device it never finds virtio-pci.
        /// _CRS: bus 0, the config ports 0xCF8-0xCFF, every other I/O port, and the 32-bit MMIO
        /// window below the IOAPIC that the e820 map leaves free (where the VMM places BARs).
        static func pciRootBridge() -> [UInt8] {
            var body = Array("PCI0".utf8)
            body += [0x08] + Array("_HID".utf8) + [0x0C] + le(UInt32(0x030A_D041))     // EisaId("PNP0A03")
            body += [0x08] + Array("_UID".utf8) + [0x00]
            body += [0x08] + Array("_SEG".utf8) + [0x00]
            body += [0x08] + Array("_BBN".utf8) + [0x00]
            body += [0x08] + Array("_ADR".utf8) + [0x00]
            let windowBase = UInt32(X86MemoryLayout.mmioHoleStart)
            let windowEnd = UInt32(X86MemoryLayout.ioapicAddress - 1)
            let template = wordAddress(type: 2, min: 0, max: 0)                         // WordBusNumber 0-0
                + io(0xCF8, 8)
                + wordAddress(type: 1, min: 0, max: 0x0CF7, typeFlags: 3)               // WordIO
                + wordAddress(type: 1, min: 0x0D00, max: 0xFFFF, typeFlags: 3)
                + dwordMemory(min: windowBase, max: windowEnd)
                + [0x79, 0x00]
            let buffer = [0x0A, UInt8(template.count)] + template
            body += [0x08] + Array("_CRS".utf8) + [0x11] + pkgLength(buffer.count) + buffer
            return [0x5B, 0x82] + pkgLength(body.count) + body
        }

        /// Word Address Space Descriptor (ACPI 6.4.3.5.3), producer, MinFixed, MaxFixed.
        static func wordAddress(type: UInt8, min: UInt16, max: UInt16, typeFlags: UInt8 = 0) -> [UInt8] {
            [0x88, 0x0D, 0x00, type, 0x0C, typeFlags] + le(UInt16(0)) + le(min) + le(max) + le(UInt16(0)) + le(max &- min &+ 1)
        }

        /// DWord Memory descriptor (ACPI 6.4.3.5.2): producer, MinFixed, MaxFixed, non-cacheable, read/write.
        static func dwordMemory(min: UInt32, max: UInt32) -> [UInt8] {
            [0x87, 0x17, 0x00, 0x00, 0x0C, 0x01] + le(UInt32(0)) + le(min) + le(max) + le(UInt32(0)) + le(max &- min &+ 1)
        }

        /// IO (Decode16, base, base, 1, length)
        static func io(_ base: UInt16, _ length: UInt8) -> [UInt8] {
            [0x47, 0x01] + le(base) + le(base) + [0x01, length]
        }

        /// IRQNoFlags () {n}: edge-triggered, active high, as ISA interrupts are.
        static func irq(_ n: Int) -> [UInt8] { [0x22] + le(UInt16(1) << UInt16(n)) }

        /// AML PkgLength for a body of `n` bytes (the encoding counts its own bytes).
        static func pkgLength(_ n: Int) -> [UInt8] {
            if n + 1 < 0x40 { return [UInt8(n + 1)] }
            let total = n + 2
            return [UInt8(0x40 | (total & 0x0F)), UInt8((total >> 4) & 0xFF)]
        }

        static func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
    }

    static func checksum(_ bytes: ArraySlice<UInt8>) -> UInt8 {
        var sum: UInt8 = 0
        for b in bytes { sum = sum &+ b }
        return 0 &- sum
    }

    static func appendLE<T: FixedWidthInteger>(_ a: inout [UInt8], _ v: T) {
        withUnsafeBytes(of: v.littleEndian) { a += $0 }
    }
}
