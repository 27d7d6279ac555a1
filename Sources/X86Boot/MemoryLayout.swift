import VireoSupport

/// The fixed guest-physical memory map Vireo gives every x86-64 guest.
///
/// ```
/// 0x0000_0000  real-mode IVT / BDA (RAM, untouched)
/// 0x0000_0500  boot GDT (48 bytes)             0x0000_6000  PVH hvm_start_info + memmap + modlist
/// 0x0000_7000  zero page (struct boot_params)  0x0000_8ff0  initial stack pointer (grows down)
/// 0x0000_9000  PML4, 0xA000 PDPT, 0xB000..0xEFFF four PDs (identity map of 0..4 GiB, 2 MiB pages)
/// 0x0002_0000  kernel command line (up to 64 KiB)
/// 0x0009_FC00  MP table (EBDA); e820 reserves 0x9FC00..0x100000
/// 0x0010_0000  kernel (bzImage protected-mode code, or the vmlinux PT_LOAD segments at p_paddr)
/// ...          initrd at the top of low RAM (below the kernel's initrd_addr_max)
/// 0xC000_0000  MMIO hole (PCI BARs) up to 4 GiB: IOAPIC 0xFEC00000, LAPIC 0xFEE00000,
///              KVM identity-map page 0xFFFBC000 and TSS 0xFFFBD000
/// 0x1_0000_0000  the rest of RAM when there is more than 3 GiB
/// ```
public enum X86MemoryLayout {
    public static let pageSize: UInt64 = 0x1000

    /// Start of the 1 GiB hole below 4 GiB reserved for MMIO (PCI BARs, IOAPIC, LAPIC).
    public static let mmioHoleStart: UInt64 = 0xC000_0000
    /// End of the MMIO hole: RAM beyond `mmioHoleStart` continues here.
    public static let mmioHoleEnd: UInt64 = 0x1_0000_0000

    public static let ioapicAddress: UInt64 = 0xFEC0_0000
    public static let lapicAddress: UInt64 = 0xFEE0_0000
    /// For KVM_SET_IDENTITY_MAP_ADDR (one page, inside the MMIO hole, never RAM).
    public static let identityMapAddress: UInt64 = 0xFFFB_C000
    /// For KVM_SET_TSS_ADDR (three pages, right after the identity-map page).
    public static let tssAddress: UInt64 = 0xFFFB_D000

    /// Boot GDT and (empty) IDT.
    public static let gdtAddress: UInt64 = 0x500
    public static let idtAddress: UInt64 = 0x0
    /// PVH `hvm_start_info`, followed by its memory map and module list (one page).
    public static let pvhStartInfoAddress: UInt64 = 0x6000
    /// Linux `struct boot_params` ("zero page"), 4 KiB.
    public static let zeroPageAddress: UInt64 = 0x7000
    /// Initial RSP/RBP of the boot CPU (the page 0x8000..0x8fff is the stack).
    public static let bootStackPointer: UInt64 = 0x8FF0
    /// Identity-mapping page tables: PML4, PDPT, then four page directories.
    public static let pml4Address: UInt64 = 0x9000
    public static let pdptAddress: UInt64 = 0xA000
    public static let pdAddress: UInt64 = 0xB000
    /// Kernel command line and the most bytes reserved for it (including the NUL).
    public static let cmdlineAddress: UInt64 = 0x2_0000
    public static let cmdlineMaxSize: UInt64 = 0x1_0000
    /// Extended BIOS data area: the MP floating pointer and configuration table live here.
    public static let ebdaStart: UInt64 = 0x9_FC00
    /// ACPI tables (RSDP first), in the reserved BIOS area below 1 MiB.
    public static let acpiTablesAddress: UInt64 = 0xE_0000
    /// First address above the legacy BIOS/VGA area; the kernel is loaded here or higher.
    public static let highMemoryStart: UInt64 = 0x10_0000
    /// Where a bzImage's protected-mode code is loaded.
    public static let kernelLoadAddress: UInt64 = 0x10_0000

    /// The least RAM Vireo will lay out (the boot structures need the first MiB, the kernel more).
    public static let minimumMemorySize: UInt64 = 0x20_0000

    /// Guest RAM regions for `memorySize` bytes of RAM: `[0, min(size, 3 GiB))` and, when there
    /// is more than 3 GiB, the rest starting at 4 GiB. Regions that would overflow the 64-bit
    /// address space are clipped (use `validate(memorySize:)` to reject such sizes).
    public static func ramRegions(memorySize: UInt64) -> [(base: UInt64, size: UInt64)] {
        if memorySize == 0 { return [] }
        if memorySize <= mmioHoleStart { return [(0, memorySize)] }
        let high = min(memorySize - mmioHoleStart, UInt64.max - mmioHoleEnd)
        return [(0, mmioHoleStart), (mmioHoleEnd, high)]
    }

    /// End (exclusive) of the RAM below the MMIO hole.
    public static func lowMemoryEnd(memorySize: UInt64) -> UInt64 { min(memorySize, mmioHoleStart) }

    /// The largest RAM size Vireo lays out (46-bit guest-physical addresses).
    public static let maximumMemorySize: UInt64 = 1 << 46

    /// Rejects RAM sizes the layout cannot hold: too small, not page aligned, or absurdly large.
    public static func validate(memorySize: UInt64) throws {
        guard memorySize >= minimumMemorySize else {
            throw VireoError(.invalidArgument,
                             "guest memory of \(ByteSize.format(memorySize)) is too small to boot Linux",
                             hint: "give --memory 128M or more")
        }
        guard memorySize % pageSize == 0 else {
            throw VireoError(.invalidArgument,
                             "guest memory of \(memorySize) bytes is not a multiple of 4 KiB",
                             hint: "give --memory in whole MiB, e.g. 512M")
        }
        guard memorySize <= maximumMemorySize else {
            throw VireoError(.outOfRange,
                             "guest memory of \(ByteSize.format(memorySize)) exceeds the \(ByteSize.format(maximumMemorySize)) Vireo can map",
                             hint: "give a smaller --memory")
        }
    }

    /// True when `[address, address + size)` lies inside one RAM region of `memorySize` bytes of RAM.
    public static func isRAM(address: UInt64, size: UInt64, memorySize: UInt64) -> Bool {
        guard let end = checkedAdd(address, size) else { return false }
        for r in ramRegions(memorySize: memorySize) {
            guard let rEnd = checkedAdd(r.base, r.size) else { continue }
            if address >= r.base && end <= rEnd { return true }
        }
        return false
    }
}
