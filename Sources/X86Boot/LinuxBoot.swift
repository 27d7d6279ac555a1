import VireoSupport

/// Lays out an x86-64 guest to boot Linux. Pure: no KVM, no guest memory; the result is a `BootPlan`.
public enum LinuxBoot {
    /// Plans the boot of `kernel` with `config`. Throws a `VireoError` naming the problem and the fix
    /// when the kernel, the command line, the initrd or the memory size do not fit together.
    public static func plan(kernel: KernelImage, config: BootConfig) throws -> BootPlan {
        try X86MemoryLayout.validate(memorySize: config.memorySize)
        guard config.cpuCount >= 1, config.cpuCount <= MPTable.maxCPUs else {
            throw VireoError(.invalidArgument, "\(config.cpuCount) vCPUs requested; Vireo boots 1 to \(MPTable.maxCPUs)",
                             hint: "give --cpus between 1 and \(MPTable.maxCPUs)")
        }
        switch kernel {
        case .bzImage(let image): return try planBzImage(image, config)
        case .elf(let elf):
            if config.preferPVH, let pvh = elf.pvhEntry { return try planPVH(elf, entry: pvh, config) }
            return try planElf64(elf, config)
        }
    }

    /// Opens the kernel at `path`, detects its format, and plans its boot.
    public static func plan(kernelPath: String, config: BootConfig) throws -> BootPlan {
        try plan(kernel: KernelImage.load(path: kernelPath), config: config)
    }

    // MARK: - The three entry paths

    static func planBzImage(_ image: BzImage, _ config: BootConfig) throws -> BootPlan {
        let load = X86MemoryLayout.kernelLoadAddress
        let lowEnd = X86MemoryLayout.lowMemoryEnd(memorySize: config.memorySize)
        guard let kernelEnd = image.memoryEnd(loadAddress: load), kernelEnd <= lowEnd else {
            let need = image.memoryEnd(loadAddress: load) ?? UInt64.max
            throw VireoError(.outOfRange,
                             "kernel \(image.name) needs RAM up to \(ByteSize.format(need)) to decompress and start, more than the \(ByteSize.format(config.memorySize)) given",
                             hint: "give --memory \(suggestedMemory(atLeast: need)) or more")
        }
        let maxCmdline = Int(min(UInt64(image.cmdlineSize), X86MemoryLayout.cmdlineMaxSize - 1))
        let cmdline = try KernelCommandLine.encode(config.cmdline, maxLength: maxCmdline)
        let initrd = try placeInitrd(size: config.initrdSize, above: kernelEnd,
                                     limit: UInt64(image.initrdAddrMax), memorySize: config.memorySize)
        let e820 = E820.map(memorySize: config.memorySize)
        let zeroPage = try ZeroPage.build(bzImage: image, parameters: .init(
            cmdlineAddress: X86MemoryLayout.cmdlineAddress, initrd: initrd, e820: e820))
        let segment = KernelSegment(guestAddress: load, fileOffset: image.kernelOffset,
                                    fileSize: image.kernelSize, memorySize: image.kernelSize)
        let longMode = image.supports64BitEntry
        let entry: BootEntry = longMode ? .linux64(rip: load + 0x200) : .linux32(eip: UInt64(load))
        var bsp = registers(longMode: longMode, entry: entry.address)
        bsp.rsi = X86MemoryLayout.zeroPageAddress
        if !longMode { bsp.rbp = 0 }   // 32-bit protocol: %ebp, %edi and %ebx must be zero
        return try assemble(entry: entry, bsp: bsp, segments: [segment], initrd: initrd, e820: e820,
                            longMode: longMode, cpuCount: config.cpuCount, blobs: [
                                GuestBlob(address: X86MemoryLayout.zeroPageAddress, bytes: zeroPage, label: "zero page"),
                                GuestBlob(address: X86MemoryLayout.cmdlineAddress, bytes: cmdline, label: "command line"),
                            ], memorySize: config.memorySize, kernelName: image.name)
    }

    static func planElf64(_ elf: ElfKernel, _ config: BootConfig) throws -> BootPlan {
        try checkSegments(elf, config.memorySize)
        let cmdline = try KernelCommandLine.encode(config.cmdline, maxLength: KernelCommandLine.defaultMaxLength)
        let initrd = try placeInitrd(size: config.initrdSize, above: elf.memoryEnd, limit: 0x7FFF_FFFF,
                                     memorySize: config.memorySize)
        let e820 = E820.map(memorySize: config.memorySize)
        let zeroPage = try ZeroPage.buildForElf(parameters: .init(
            cmdlineAddress: X86MemoryLayout.cmdlineAddress, initrd: initrd, e820: e820))
        let entry = BootEntry.linux64(rip: elf.entry64)
        var bsp = registers(longMode: true, entry: entry.address)
        bsp.rsi = X86MemoryLayout.zeroPageAddress
        return try assemble(entry: entry, bsp: bsp, segments: elf.segments, initrd: initrd, e820: e820,
                            longMode: true, cpuCount: config.cpuCount, blobs: [
                                GuestBlob(address: X86MemoryLayout.zeroPageAddress, bytes: zeroPage, label: "zero page"),
                                GuestBlob(address: X86MemoryLayout.cmdlineAddress, bytes: cmdline, label: "command line"),
                            ], memorySize: config.memorySize, kernelName: elf.name)
    }

    static func planPVH(_ elf: ElfKernel, entry pvhEntry: UInt32, _ config: BootConfig) throws -> BootPlan {
        try checkSegments(elf, config.memorySize)
        guard elf.segments.contains(where: { UInt64(pvhEntry) >= $0.guestAddress && UInt64(pvhEntry) - $0.guestAddress < $0.memorySize }) else {
            throw VireoError(.corrupt, "kernel \(elf.name): PVH entry \(hexString(pvhEntry)) lies outside its loadable segments",
                             hint: "the file is damaged; boot the vmlinuz (bzImage) instead")
        }
        let cmdline = try KernelCommandLine.encode(config.cmdline, maxLength: KernelCommandLine.defaultMaxLength)
        let initrd = try placeInitrd(size: config.initrdSize, above: elf.memoryEnd, limit: 0xFFFF_FFFF,
                                     memorySize: config.memorySize)
        let e820 = E820.map(memorySize: config.memorySize)
        let startInfo = try PVHStartInfo.build(address: X86MemoryLayout.pvhStartInfoAddress,
                                               cmdlineAddress: X86MemoryLayout.cmdlineAddress,
                                               initrd: initrd, e820: e820)
        let entry = BootEntry.pvh(eip: UInt64(pvhEntry))
        var bsp = registers(longMode: false, entry: entry.address)
        bsp.rbx = X86MemoryLayout.pvhStartInfoAddress
        return try assemble(entry: entry, bsp: bsp, segments: elf.segments, initrd: initrd, e820: e820,
                            longMode: false, cpuCount: config.cpuCount, blobs: [
                                GuestBlob(address: X86MemoryLayout.pvhStartInfoAddress, bytes: startInfo, label: "PVH start info"),
                                GuestBlob(address: X86MemoryLayout.cmdlineAddress, bytes: cmdline, label: "command line"),
                            ], memorySize: config.memorySize, kernelName: elf.name)
    }

    // MARK: - Shared pieces

    /// The BSP's registers: flat segments from the boot GDT; long mode with the identity map, or
    /// 32-bit protected mode with paging off.
    public static func registers(longMode: Bool, entry: UInt64) -> VCPUBootState {
        let seg = BootGDT.segments(longMode: longMode)
        let cr0 = ControlBits.cr0PE | ControlBits.cr0ET | (longMode ? ControlBits.cr0PG : 0)
        return VCPUBootState(
            rip: entry, rsp: X86MemoryLayout.bootStackPointer, rbp: X86MemoryLayout.bootStackPointer,
            rsi: 0, rbx: 0, rflags: ControlBits.rflagsReserved,
            cr0: cr0, cr3: longMode ? X86MemoryLayout.pml4Address : 0,
            cr4: longMode ? ControlBits.cr4PAE : 0,
            efer: longMode ? ControlBits.eferLME | ControlBits.eferLMA : 0,
            cs: seg.code, ds: seg.data, es: seg.data, fs: seg.data, gs: seg.data, ss: seg.data,
            tr: seg.tss, ldt: .unusableLDT,
            gdt: .init(base: X86MemoryLayout.gdtAddress, limit: BootGDT.limit),
            idt: .init(base: X86MemoryLayout.idtAddress, limit: 0))
    }

    /// Every kernel segment must lie in RAM, above the first MiB the boot structures use.
    static func checkSegments(_ elf: ElfKernel, _ memorySize: UInt64) throws {
        for (i, s) in elf.segments.enumerated() {
            guard s.guestAddress >= X86MemoryLayout.highMemoryStart else {
                throw VireoError(.unsupported,
                                 "kernel \(elf.name): segment \(i) at \(hexString(s.guestAddress)) overlaps the boot area below 1 MiB",
                                 hint: "give a vmlinux linked at 1 MiB or above, or the vmlinuz (bzImage)")
            }
            guard X86MemoryLayout.isRAM(address: s.guestAddress, size: s.memorySize, memorySize: memorySize) else {
                let end = checkedAdd(s.guestAddress, s.memorySize) ?? UInt64.max
                throw VireoError(.outOfRange,
                                 "kernel \(elf.name): segment \(i) at \(hexString(s.guestAddress))..\(hexString(end)) lies outside the \(ByteSize.format(memorySize)) of guest RAM",
                                 hint: end <= X86MemoryLayout.mmioHoleStart ? "give --memory \(suggestedMemory(atLeast: end)) or more"
                                                                             : "the kernel's load address is not usable; check the file")
            }
        }
    }

    /// Places an initrd of `size` bytes at the highest page-aligned address with its last byte at or
    /// below `limit` (initrd_addr_max) and inside low RAM, and at or above `above` (the kernel's end).
    public static func placeInitrd(size: UInt64?, above kernelEnd: UInt64, limit: UInt64,
                                   memorySize: UInt64) throws -> (address: UInt64, size: UInt64)? {
        guard let size else { return nil }
        guard size > 0 else {
            throw VireoError(.invalidArgument, "the initrd is empty", hint: "give --initrd a cpio archive, or leave it out")
        }
        let lowEnd = X86MemoryLayout.lowMemoryEnd(memorySize: memorySize)
        let top = min(lowEnd, checkedAdd(limit, 1) ?? UInt64.max)
        let floor = alignUp(kernelEnd, X86MemoryLayout.pageSize) ?? UInt64.max
        guard size <= top, alignDown(top - size, X86MemoryLayout.pageSize) >= floor else {
            var hint = "give --memory \(suggestedMemory(atLeast: (checkedAdd(floor, size) ?? UInt64.max))) or more"
            if let needed = checkedAdd(floor, size), needed > top, top < lowEnd {
                hint = "the kernel accepts an initrd only below \(ByteSize.format(top)); use a smaller initrd"
            }
            throw VireoError(.outOfRange,
                             "initrd of \(ByteSize.format(size)) does not fit between the kernel's end at \(ByteSize.format(kernelEnd)) and \(ByteSize.format(top)) (the kernel's initrd_addr_max or the end of low RAM) in \(ByteSize.format(memorySize)) of RAM",
                             hint: hint)
        }
        return (alignDown(top - size, X86MemoryLayout.pageSize), size)
    }

    static func assemble(entry: BootEntry, bsp: VCPUBootState, segments: [KernelSegment],
                         initrd: (address: UInt64, size: UInt64)?, e820: [E820Entry], longMode: Bool,
                         cpuCount: Int, blobs: [GuestBlob], memorySize: UInt64, kernelName: String) throws -> BootPlan {
        var all = blobs
        all.append(GuestBlob(address: X86MemoryLayout.gdtAddress, bytes: BootGDT.bytes(longMode: longMode), label: "GDT"))
        if longMode {
            all.append(GuestBlob(address: X86MemoryLayout.pml4Address, bytes: PageTables.build(), label: "page tables"))
        }
        all.append(GuestBlob(address: X86MemoryLayout.ebdaStart,
                             bytes: try MPTable.build(cpuCount: cpuCount, address: X86MemoryLayout.ebdaStart),
                             label: "MP table"))
        all.append(GuestBlob(address: X86MemoryLayout.acpiTablesAddress,
                             bytes: try ACPITables.build(cpuCount: cpuCount), label: "ACPI tables"))
        all.append(GuestBlob(address: ResetVector.address, bytes: ResetVector.code, label: "reset vector"))
        // Internal consistency: blobs are in RAM and nothing overlaps (kernel, initrd, blobs).
        var ranges: [(start: UInt64, end: UInt64, label: String)] = all.map { ($0.address, $0.end, $0.label) }
        ranges += segments.enumerated().map { ($0.element.guestAddress, $0.element.guestEnd, "kernel segment \($0.offset)") }
        if let initrd { ranges.append((initrd.address, initrd.address + initrd.size, "initrd")) }
        ranges.sort { $0.start < $1.start }
        for (a, b) in zip(ranges, ranges.dropFirst()) where a.end > b.start {
            throw VireoError(.unsupported, "kernel \(kernelName): its \(b.label) at \(hexString(b.start)) overlaps the \(a.label) at \(hexString(a.start))",
                             hint: "this kernel's layout is not supported; try the vmlinuz (bzImage)")
        }
        for blob in all where !X86MemoryLayout.isRAM(address: blob.address, size: UInt64(blob.bytes.count), memorySize: memorySize) {
            throw VireoError(.internalError, "\(blob.label) at \(hexString(blob.address)) is outside guest RAM")
        }
        return BootPlan(blobs: all, kernelSegments: segments, initrdAddress: initrd?.address, bsp: bsp, e820: e820, entry: entry)
    }

    /// A round --memory value (power-of-two MiB) of at least `bytes`.
    static func suggestedMemory(atLeast bytes: UInt64) -> String {
        var mib: UInt64 = 128
        while mib < (1 << 26), mib << 20 < bytes { mib <<= 1 }
        return mib >= 1024 ? "\(mib / 1024)G" : "\(mib)M"
    }
}
