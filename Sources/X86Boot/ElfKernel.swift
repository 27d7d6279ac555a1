import VireoSupport

/// One piece of the kernel to copy into guest RAM: `fileSize` bytes from `fileOffset` of the kernel
/// file to `guestAddress`, then zeros up to `memorySize`.
public struct KernelSegment: Sendable, Equatable {
    public var guestAddress: UInt64
    public var fileOffset: UInt64
    public var fileSize: UInt64
    public var memorySize: UInt64

    public init(guestAddress: UInt64, fileOffset: UInt64, fileSize: UInt64, memorySize: UInt64) {
        self.guestAddress = guestAddress; self.fileOffset = fileOffset
        self.fileSize = fileSize; self.memorySize = memorySize
    }

    /// First guest address past the segment (callers validated that it does not overflow).
    public var guestEnd: UInt64 { guestAddress &+ memorySize }
}

/// A parsed uncompressed x86-64 ELF vmlinux: its loadable segments at their physical addresses,
/// the physical 64-bit entry point, and the PVH 32-bit entry from the Xen ELF note, when present.
public struct ElfKernel: Sendable, Equatable {
    public static let pvhNoteName = "Xen"
    /// XEN_ELFNOTE_PHYS32_ENTRY.
    public static let pvhNoteType: UInt32 = 18
    static let maxProgramHeaders = 512
    static let maxNoteBytes = 1 << 20

    /// Path or label, for messages.
    public var name: String
    /// PT_LOAD segments, at their physical addresses (p_paddr), in file order.
    public var segments: [KernelSegment]
    /// Physical address of the 64-bit entry (startup_64).
    public var entry64: UInt64
    /// Physical 32-bit PVH entry (pvh_start_xen), when the kernel carries XEN_ELFNOTE_PHYS32_ENTRY.
    public var pvhEntry: UInt32?

    /// Lowest and one-past-highest guest address the segments occupy.
    public var lowestAddress: UInt64 { segments.map(\.guestAddress).min() ?? 0 }
    public var memoryEnd: UInt64 { segments.map(\.guestEnd).max() ?? 0 }

    /// Parses `file` as an ELF64 x86-64 executable. Throws `.corrupt` / `.unsupported` naming the problem.
    public static func parse(_ file: KernelFile) throws -> ElfKernel {
        let name = file.name
        func corrupt(_ what: String) -> VireoError {
            VireoError(.corrupt, "kernel \(name) is a malformed ELF: \(what)",
                       hint: "the file is damaged; give an intact vmlinux or the vmlinuz bzImage")
        }
        guard file.size >= 64 else { throw corrupt("\(file.size) bytes is shorter than the 64-byte ELF header") }
        let eh = try file.read(offset: 0, count: 64, what: "ELF header")
        guard eh.u32(0) == 0x464C_457F else {
            throw VireoError(.invalidArgument, "kernel \(name) is not an ELF file (bad magic)",
                             hint: "give --kernel a vmlinuz (bzImage) or an uncompressed vmlinux")
        }
        guard eh[4] == 2 else {
            throw VireoError(.unsupported, "kernel \(name) is a 32-bit ELF; Vireo boots x86-64 kernels only",
                             hint: "use a 64-bit (amd64) kernel")
        }
        guard eh[5] == 1 else { throw corrupt("not little-endian (EI_DATA \(eh[5]))") }
        guard let type = eh.u16(16), let machine = eh.u16(18), let entry = eh.u64(24), let phoff = eh.u64(32),
              let phentsize = eh.u16(54), let phnum = eh.u16(56) else { throw corrupt("short ELF header") }
        guard machine == 62 else {
            throw VireoError(.unsupported, "kernel \(name) is an ELF for machine \(machine), not x86-64 (62)",
                             hint: "use an amd64 kernel")
        }
        guard type == 2 else {
            throw VireoError(.unsupported, "kernel \(name) is ELF type \(type), not an executable (ET_EXEC)",
                             hint: "give the kernel's vmlinux, not a module or object file")
        }
        guard phentsize == 56 else { throw corrupt("program header size \(phentsize), expected 56") }
        guard phnum > 0, Int(phnum) <= maxProgramHeaders else { throw corrupt("\(phnum) program headers") }
        let phSize = Int(phnum) * 56
        guard let phEnd = checkedAdd(phoff, UInt64(phSize)), phEnd <= file.size else {
            throw corrupt("program headers at \(hexString(phoff)) run past the end of the file (\(file.size) bytes)")
        }
        let ph = try file.read(offset: phoff, count: phSize, what: "program headers")

        var segments: [KernelSegment] = []
        var virtualRanges: [(vaddr: UInt64, paddr: UInt64, size: UInt64)] = []
        var pvhEntry: UInt32?
        for i in 0..<Int(phnum) {
            let o = i * 56
            guard let pType = ph.u32(o), let offset = ph.u64(o + 8), let vaddr = ph.u64(o + 16),
                  let paddr = ph.u64(o + 24), let filesz = ph.u64(o + 32), let memsz = ph.u64(o + 40) else {
                throw corrupt("short program header \(i)")
            }
            guard let fileEnd = checkedAdd(offset, filesz), fileEnd <= file.size else {
                throw corrupt("segment \(i) (file offset \(hexString(offset)), \(filesz) bytes) runs past the end of the file (\(file.size) bytes)")
            }
            switch pType {
            case 1: // PT_LOAD
                guard filesz <= memsz else { throw corrupt("segment \(i) has p_filesz \(filesz) > p_memsz \(memsz)") }
                guard checkedAdd(paddr, memsz) != nil else {
                    throw corrupt("segment \(i) at \(hexString(paddr)) with \(memsz) bytes overflows the address space")
                }
                if memsz == 0 { continue }
                segments.append(KernelSegment(guestAddress: paddr, fileOffset: offset, fileSize: filesz, memorySize: memsz))
                virtualRanges.append((vaddr, paddr, memsz))
            case 4: // PT_NOTE
                guard filesz <= UInt64(maxNoteBytes) else { throw corrupt("note segment \(i) of \(filesz) bytes") }
                let notes = try file.read(offset: offset, count: Int(filesz), what: "note segment \(i)")
                if let e = try pvhEntryNote(in: notes, corrupt: corrupt) { pvhEntry = e }
            default:
                continue
            }
        }
        guard !segments.isEmpty else { throw corrupt("no loadable (PT_LOAD) segment") }

        // e_entry of an x86-64 vmlinux is physical (the linker script's ENTRY(phys_startup_64)); accept a
        // virtual entry too by translating it through the segment that contains it.
        var entry64: UInt64?
        if segments.contains(where: { entry >= $0.guestAddress && entry - $0.guestAddress < $0.memorySize }) {
            entry64 = entry
        } else if let r = virtualRanges.first(where: { entry >= $0.vaddr && entry - $0.vaddr < $0.size }) {
            entry64 = r.paddr + (entry - r.vaddr)
        }
        guard let entry64 else { throw corrupt("entry point \(hexString(entry)) lies outside every loadable segment") }
        return ElfKernel(name: name, segments: segments, entry64: entry64, pvhEntry: pvhEntry)
    }

    /// Walks ELF notes in `bytes`, returning the XEN_ELFNOTE_PHYS32_ENTRY value if any.
    static func pvhEntryNote(in bytes: [UInt8], corrupt: (String) -> VireoError) throws -> UInt32? {
        var o = 0
        while o + 12 <= bytes.count {
            guard let namesz = bytes.u32(o), let descsz = bytes.u32(o + 4), let type = bytes.u32(o + 8) else { break }
            let nameStart = o + 12
            guard let nameLen = Int(exactly: namesz), let descLen = Int(exactly: descsz),
                  nameLen <= bytes.count, descLen <= bytes.count else { throw corrupt("ELF note at \(o) is larger than its segment") }
            let descStart = nameStart + ((nameLen + 3) & ~3)
            let next = descStart + ((descLen + 3) & ~3)
            guard descStart <= bytes.count, descStart + descLen <= bytes.count else {
                throw corrupt("ELF note at \(o) runs past the end of its segment")
            }
            let nameBytes = bytes[nameStart..<(nameStart + nameLen)].prefix { $0 != 0 }
            if type == pvhNoteType, Array(nameBytes) == Array(pvhNoteName.utf8) {
                let value: UInt64
                switch descLen {
                case 4: value = UInt64(bytes.u32(descStart) ?? 0)
                case 8: value = bytes.u64(descStart) ?? 0
                default: throw corrupt("PVH entry note has a \(descLen)-byte value, expected 4 or 8")
                }
                guard let v = UInt32(exactly: value), v != 0 else {
                    throw corrupt("PVH entry \(hexString(value)) is not a 32-bit physical address")
                }
                return v
            }
            o = next
        }
        return nil
    }
}
