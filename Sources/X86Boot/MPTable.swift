import VireoSupport

/// Builds an Intel MultiProcessor Specification 1.4 table: the 16-byte floating pointer followed
/// by the configuration table (processors, ISA bus, IOAPIC, interrupt routing). Linux finds it by
/// scanning the last KiB of base memory (0x9FC00) and learns the CPUs and IOAPIC from it when
/// there are no ACPI tables.
public enum MPTable {
    public static let floatingPointerSize = 16
    public static let headerSize = 44
    public static let processorEntrySize = 20
    public static let otherEntrySize = 8
    /// APIC IDs are 8 bits, 0xFF is broadcast and the IOAPIC takes the ID after the last CPU.
    public static let maxCPUs = 254
    /// IOAPIC pins KVM's in-kernel IOAPIC has.
    public static let ioapicPins = 24

    static let localAPICVersion: UInt8 = 0x14
    static let ioapicVersion: UInt8 = 0x11
    /// Family 6 CPU signature; FPU and APIC feature flags.
    static let cpuSignature: UInt32 = 0x600
    static let cpuFeatures: UInt32 = 0x201

    /// The whole structure for `cpuCount` CPUs (APIC IDs 0..n-1, CPU 0 the BSP) placed at `address`
    /// (below 1 MiB, where Linux scans). The IOAPIC gets ID `cpuCount`; ISA IRQs 0..<`irqCount` are
    /// routed 1:1 to IOAPIC pins (edge/high, as the ISA bus conforms); LINT0 is ExtINT and LINT1 NMI.
    public static func build(cpuCount: Int, address: UInt64 = X86MemoryLayout.ebdaStart, irqCount: Int = 16) throws -> [UInt8] {
        guard cpuCount >= 1, cpuCount <= maxCPUs else {
            throw VireoError(.invalidArgument, "\(cpuCount) vCPUs: the MP table describes 1 to \(maxCPUs)",
                             hint: "give --cpus between 1 and \(maxCPUs)")
        }
        guard irqCount >= 0, irqCount <= ioapicPins else {
            throw VireoError(.invalidArgument, "\(irqCount) IOAPIC interrupt entries: the IOAPIC has \(ioapicPins) pins")
        }
        let configSize = headerSize + cpuCount * processorEntrySize + otherEntrySize * (2 + irqCount + 2)
        guard let end = checkedAdd(address, UInt64(floatingPointerSize + configSize)), end <= X86MemoryLayout.highMemoryStart else {
            throw VireoError(.invalidArgument, "MP table at \(hexString(address)) does not fit below 1 MiB")
        }
        let configAddress = address + UInt64(floatingPointerSize)
        let ioapicID = UInt8(cpuCount)

        // Floating pointer structure.
        var out: [UInt8] = []
        out.appendASCII("_MP_", width: 4)
        out.appendLE(UInt32(configAddress))
        out.append(1)            // length in 16-byte paragraphs
        out.append(4)            // spec revision 1.4
        out.append(0)            // checksum, below
        out.append(contentsOf: [0, 0, 0, 0, 0])  // feature bytes: config table present, no IMCR
        out[10] = checksumByte(out[0..<floatingPointerSize])

        // Configuration table header.
        let c = out.count
        out.appendASCII("PCMP", width: 4)
        out.appendLE(UInt16(configSize))
        out.append(4)            // spec revision
        out.append(0)            // checksum, below
        out.appendASCII("VIREO", width: 8)
        out.appendASCII("VIREO-VM", width: 12)
        out.appendLE(UInt32(0))  // OEM table pointer
        out.appendLE(UInt16(0))  // OEM table size
        out.appendLE(UInt16(cpuCount + 2 + irqCount + 2))
        out.appendLE(UInt32(X86MemoryLayout.lapicAddress))
        out.appendLE(UInt16(0))  // extended table length
        out.append(0)            // extended table checksum
        out.append(0)            // reserved

        for cpu in 0..<cpuCount {
            out.append(0)                                  // processor entry
            out.append(UInt8(cpu))                         // local APIC ID
            out.append(localAPICVersion)
            out.append(cpu == 0 ? 0x03 : 0x01)             // enabled, BSP on CPU 0
            out.appendLE(cpuSignature)
            out.appendLE(cpuFeatures)
            out.append(contentsOf: [UInt8](repeating: 0, count: 8))
        }
        out.append(1); out.append(0); out.appendASCII("ISA", width: 6)       // bus 0: ISA
        out.append(2); out.append(ioapicID); out.append(ioapicVersion); out.append(1)  // IOAPIC, enabled
        out.appendLE(UInt32(X86MemoryLayout.ioapicAddress))
        for irq in 0..<irqCount {                                           // I/O interrupt assignments
            out.append(3); out.append(0)                                    // INT
            out.appendLE(UInt16(0))                                         // conforms to bus
            out.append(0); out.append(UInt8(irq)); out.append(ioapicID); out.append(UInt8(irq))
        }
        for (type, lint) in [(UInt8(3), UInt8(0)), (UInt8(1), UInt8(1))] {  // ExtINT on LINT0, NMI on LINT1
            out.append(4); out.append(type)
            out.appendLE(UInt16(0))
            out.append(0); out.append(0); out.append(0xFF); out.append(lint)
        }
        out[c + 7] = checksumByte(out[c..<out.count])
        return out
    }
}
