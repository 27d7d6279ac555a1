import VireoSupport

/// Builds Linux's `struct boot_params` (the "zero page", 4 KiB) for the 32/64-bit boot protocol.
public enum ZeroPage {
    public static let size = 4096
    /// Offsets in `struct boot_params` outside the setup header (see BzImage.Offset for those).
    public static let acpiRsdpAddrOffset = 0x070
    public static let extRamdiskImageOffset = 0x0C0
    public static let extRamdiskSizeOffset = 0x0C4
    public static let extCmdLinePtrOffset = 0x0C8
    public static let e820EntriesOffset = 0x1E8
    public static let setupHeaderOffset = 0x1F1
    public static let e820TableOffset = 0x2D0

    /// `type_of_loader` for an undefined/unregistered boot loader.
    public static let loaderTypeUndefined: UInt8 = 0xFF
    /// `heap_end_ptr`: the end of the setup heap relative to the real-mode code, minus 0x200.
    public static let heapEndPtr: UInt16 = 0xFE00

    /// The fields a boot loader fills in.
    public struct Parameters: Sendable {
        public var cmdlineAddress: UInt64
        public var initrd: (address: UInt64, size: UInt64)?
        public var e820: [E820Entry]
        public init(cmdlineAddress: UInt64, initrd: (address: UInt64, size: UInt64)?, e820: [E820Entry]) {
            self.cmdlineAddress = cmdlineAddress; self.initrd = initrd; self.e820 = e820
        }
    }

    /// A zero page for a bzImage: its setup header copied verbatim to 0x1F1, then the loader fields set.
    public static func build(bzImage: BzImage, parameters: Parameters) throws -> [UInt8] {
        var page = [UInt8](repeating: 0, count: size)
        for (i, b) in bzImage.setupHeader.enumerated() where setupHeaderOffset + i < BzImage.Offset.headerLimit {
            page[setupHeaderOffset + i] = b
        }
        page[BzImage.Offset.loadflags] |= BzImage.canUseHeap | BzImage.loadedHigh
        page.writeLE(heapEndPtr, at: BzImage.Offset.heapEndPtr)
        try fill(&page, parameters)
        return page
    }

    /// A zero page for an ELF vmlinux entered at startup_64: there is no header in the file, so
    /// the fields the kernel reads are synthesised (boot_flag, 'HdrS', version 2.15, alignment).
    public static func buildForElf(parameters: Parameters) throws -> [UInt8] {
        var page = [UInt8](repeating: 0, count: size)
        page.writeLE(BzImage.bootFlagMagic, at: BzImage.Offset.bootFlag)
        page.writeLE(BzImage.headerMagic, at: BzImage.Offset.header)
        page.writeLE(UInt16(0x020F), at: BzImage.Offset.version)
        page.writeLE(UInt16(0xFFFF), at: BzImage.Offset.vidMode)
        page[BzImage.Offset.loadflags] = BzImage.loadedHigh
        page.writeLE(UInt32(0x0100_0000), at: BzImage.Offset.kernelAlignment)
        page.writeLE(UInt32(0x7FFF_FFFF), at: BzImage.Offset.initrdAddrMax)
        page.writeLE(UInt32(KernelCommandLine.defaultMaxLength), at: BzImage.Offset.cmdlineSize)
        try fill(&page, parameters)
        return page
    }

    static func fill(_ page: inout [UInt8], _ p: Parameters) throws {
        page[BzImage.Offset.typeOfLoader] = loaderTypeUndefined
        page.writeLE(X86MemoryLayout.acpiTablesAddress, at: acpiRsdpAddrOffset)
        guard p.cmdlineAddress <= UInt64(UInt32.max) else {
            throw VireoError(.internalError, "command line address \(hexString(p.cmdlineAddress)) is above 4 GiB")
        }
        page.writeLE(UInt32(p.cmdlineAddress), at: BzImage.Offset.cmdLinePtr)
        if let initrd = p.initrd {
            guard let end = checkedAdd(initrd.address, initrd.size), end <= 1 << 32,
                  let address = UInt32(exactly: initrd.address), let size = UInt32(exactly: initrd.size) else {
                throw VireoError(.internalError, "initrd at \(hexString(initrd.address)) does not end below 4 GiB")
            }
            page.writeLE(address, at: BzImage.Offset.ramdiskImage)
            page.writeLE(size, at: BzImage.Offset.ramdiskSize)
        }
        guard p.e820.count <= E820.zeroPageMaxEntries else {
            throw VireoError(.internalError, "\(p.e820.count) e820 entries do not fit the zero page's \(E820.zeroPageMaxEntries)")
        }
        page[e820EntriesOffset] = UInt8(p.e820.count)
        for (i, e) in p.e820.enumerated() {
            let o = e820TableOffset + i * E820.zeroPageEntrySize
            page.writeLE(e.address, at: o)
            page.writeLE(e.size, at: o + 8)
            page.writeLE(e.kind.rawValue, at: o + 16)
        }
    }
}
