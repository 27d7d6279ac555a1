/// One entry of the BIOS e820 memory map handed to Linux (zero page) or to a PVH kernel (memmap).
public struct E820Entry: Sendable, Equatable, CustomStringConvertible {
    /// e820 range types (the values Linux and the PVH `hvm_memmap_table_entry` share).
    public enum Kind: UInt32, Sendable {
        case ram = 1
        case reserved = 2
        case acpiReclaimable = 3
        case acpiNVS = 4
        case unusable = 5
    }

    public var address: UInt64
    public var size: UInt64
    public var kind: Kind

    public init(address: UInt64, size: UInt64, kind: Kind) {
        self.address = address; self.size = size; self.kind = kind
    }

    public var end: UInt64 { address &+ size }

    public var description: String {
        "[\(hexString(address))-\(hexString(end &- 1))] \(kind)"
    }
}

/// The e820 map Vireo reports for a given RAM size.
public enum E820 {
    /// Size of one entry in the zero page's `e820_table` (packed: u64 addr, u64 size, u32 type).
    public static let zeroPageEntrySize = 20
    /// How many entries fit in the zero page (E820_MAX_ENTRIES_ZEROPAGE).
    public static let zeroPageMaxEntries = 128

    /// usable `[0, 0x9FC00)`, reserved `[0x9FC00, 0x100000)` (EBDA with the MP table, VGA, BIOS),
    /// usable `[0x100000, min(RAM, 3 GiB))`, and usable from 4 GiB for RAM beyond 3 GiB.
    /// `memorySize` must already be validated (`X86MemoryLayout.validate`).
    public static func map(memorySize: UInt64) -> [E820Entry] {
        let lowEnd = X86MemoryLayout.lowMemoryEnd(memorySize: memorySize)
        var entries = [
            E820Entry(address: 0, size: X86MemoryLayout.ebdaStart, kind: .ram),
            E820Entry(address: X86MemoryLayout.ebdaStart,
                      size: X86MemoryLayout.highMemoryStart - X86MemoryLayout.ebdaStart, kind: .reserved),
        ]
        if lowEnd > X86MemoryLayout.highMemoryStart {
            entries.append(E820Entry(address: X86MemoryLayout.highMemoryStart,
                                     size: lowEnd - X86MemoryLayout.highMemoryStart, kind: .ram))
        }
        for region in X86MemoryLayout.ramRegions(memorySize: memorySize).dropFirst() {
            entries.append(E820Entry(address: region.base, size: region.size, kind: .ram))
        }
        return entries
    }
}
