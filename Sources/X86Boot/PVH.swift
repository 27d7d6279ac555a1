import VireoSupport

/// Builds the PVH boot information (`struct hvm_start_info`, version 1, from Xen's
/// public/arch-x86/hvm/start_info.h) that a PVH kernel finds through EBX.
///
/// Layout of the page at `X86MemoryLayout.pvhStartInfoAddress`:
/// start_info (56 bytes) | module list (32 bytes per module) | memory map (24 bytes per entry).
public enum PVHStartInfo {
    public static let magic: UInt32 = 0x336E_C578
    public static let version: UInt32 = 1
    public static let startInfoSize = 56
    public static let moduleEntrySize = 32
    public static let memmapEntrySize = 24

    /// Field offsets in `hvm_start_info`.
    public enum Offset {
        public static let magic = 0, version = 4, flags = 8, nrModules = 12
        public static let modlistPaddr = 16, cmdlinePaddr = 24, rsdpPaddr = 32
        public static let memmapPaddr = 40, memmapEntries = 48
    }

    /// The blob to place at `address`: start_info, then the initrd module (if any), then the memory map.
    public static func build(address: UInt64, cmdlineAddress: UInt64, initrd: (address: UInt64, size: UInt64)?,
                             e820: [E820Entry]) throws -> [UInt8] {
        let modulesOffset = startInfoSize
        let moduleCount = initrd == nil ? 0 : 1
        let memmapOffset = modulesOffset + moduleCount * moduleEntrySize
        let total = memmapOffset + e820.count * memmapEntrySize
        guard total <= Int(X86MemoryLayout.pageSize) else {
            throw VireoError(.internalError, "PVH start info of \(total) bytes exceeds its page")
        }
        var out = [UInt8](repeating: 0, count: total)
        out.writeLE(magic, at: Offset.magic)
        out.writeLE(version, at: Offset.version)
        out.writeLE(UInt32(moduleCount), at: Offset.nrModules)
        if let initrd {
            out.writeLE(address + UInt64(modulesOffset), at: Offset.modlistPaddr)
            out.writeLE(initrd.address, at: modulesOffset)
            out.writeLE(initrd.size, at: modulesOffset + 8)
        }
        out.writeLE(cmdlineAddress, at: Offset.cmdlinePaddr)
        out.writeLE(X86MemoryLayout.acpiTablesAddress, at: Offset.rsdpPaddr)
        out.writeLE(address + UInt64(memmapOffset), at: Offset.memmapPaddr)
        out.writeLE(UInt32(e820.count), at: Offset.memmapEntries)
        for (i, e) in e820.enumerated() {
            let o = memmapOffset + i * memmapEntrySize
            out.writeLE(e.address, at: o)
            out.writeLE(e.size, at: o + 8)
            out.writeLE(e.kind.rawValue, at: o + 16)
        }
        return out
    }
}
