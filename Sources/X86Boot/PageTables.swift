/// Identity-mapping page tables for the 64-bit boot protocol: one PML4, one PDPT and four page
/// directories of 2 MiB pages mapping guest-physical 0..4 GiB onto the same virtual addresses.
/// (2 MiB pages need no CPUID feature; 1 GiB pages would need pdpe1gb.)
public enum PageTables {
    public static let present: UInt64 = 1 << 0
    public static let writable: UInt64 = 1 << 1
    public static let pageSizeBit: UInt64 = 1 << 7
    /// Bytes mapped: the whole 32-bit physical space (RAM below the hole, the hole's MMIO).
    public static let mappedSize: UInt64 = 1 << 32
    public static let directoryCount = 4

    /// Total size of the tables (PML4 + PDPT + 4 PDs), laid out contiguously from PML4.
    public static let size: UInt64 = UInt64(2 + directoryCount) * 0x1000

    /// The tables as one blob to place at `pml4Address`; the PDPT and PDs follow at 4 KiB steps
    /// (so `pdptAddress == pml4Address + 0x1000`). CR3 = `pml4Address`.
    public static func build(pml4Address: UInt64 = X86MemoryLayout.pml4Address) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Int(size))
        let pdpt = pml4Address + 0x1000
        let firstPD = pml4Address + 0x2000
        out.writeLE(pdpt | present | writable, at: 0)
        for i in 0..<directoryCount {
            let pd = firstPD + UInt64(i) * 0x1000
            out.writeLE(pd | present | writable, at: 0x1000 + i * 8)
            for j in 0..<512 {
                let physical = UInt64(i) << 30 | UInt64(j) << 21
                out.writeLE(physical | present | writable | pageSizeBit, at: 0x2000 + i * 0x1000 + j * 8)
            }
        }
        return out
    }

    /// Walks `tables` (as built by `build`) the way the MMU would for `virtual`: the physical
    /// address, or nil when unmapped. For tests and diagnostics.
    public static func translate(_ virtual: UInt64, tables: [UInt8], pml4Address: UInt64 = X86MemoryLayout.pml4Address) -> UInt64? {
        func entry(_ tableAddress: UInt64, _ index: UInt64) -> UInt64? {
            guard tableAddress >= pml4Address else { return nil }
            let offset = tableAddress - pml4Address + index * 8
            guard let o = intValue(offset) else { return nil }
            return tables.u64(o)
        }
        let addrMask: UInt64 = 0x000F_FFFF_FFFF_F000
        guard let e4 = entry(pml4Address, (virtual >> 39) & 0x1FF), e4 & present != 0 else { return nil }
        guard let e3 = entry(e4 & addrMask, (virtual >> 30) & 0x1FF), e3 & present != 0 else { return nil }
        if e3 & pageSizeBit != 0 { return (e3 & 0x000F_FFFF_C000_0000) | (virtual & 0x3FFF_FFFF) }
        guard let e2 = entry(e3 & addrMask, (virtual >> 21) & 0x1FF), e2 & present != 0 else { return nil }
        if e2 & pageSizeBit != 0 { return (e2 & 0x000F_FFFF_FFE0_0000) | (virtual & 0x1F_FFFF) }
        guard let e1 = entry(e2 & addrMask, (virtual >> 12) & 0x1FF), e1 & present != 0 else { return nil }
        return (e1 & addrMask) | (virtual & 0xFFF)
    }
}
