import VireoSupport

/// A kernel image in one of the two formats Vireo boots, detected from its first bytes.
public enum KernelImage: Sendable, Equatable {
    /// An uncompressed ELF vmlinux (booted through PVH when it has the note, else the 64-bit entry).
    case elf(ElfKernel)
    /// A compressed bzImage (vmlinuz), booted through the Linux 64-bit boot protocol.
    case bzImage(BzImage)

    /// Detects the format of `file` (ELF magic, else the bzImage 'HdrS' header) and parses it.
    public static func parse(_ file: KernelFile) throws -> KernelImage {
        guard file.size >= 4 else {
            throw VireoError(.invalidArgument,
                             "kernel \(file.name) is \(file.size) bytes: not an ELF vmlinux or a bzImage",
                             hint: "give --kernel a vmlinuz (bzImage) or an uncompressed vmlinux")
        }
        let magic = try file.read(offset: 0, count: 4, what: "magic")
        if magic == [0x7F, 0x45, 0x4C, 0x46] { return .elf(try ElfKernel.parse(file)) }
        return .bzImage(try BzImage.parse(file))
    }

    /// Parses an image held in memory.
    public static func parse(bytes: [UInt8], name: String = "kernel") throws -> KernelImage {
        try parse(KernelFile(bytes: bytes, name: name))
    }

    /// Opens and parses the kernel at `path` (reads only its headers and notes).
    public static func load(path: String) throws -> KernelImage {
        try parse(KernelFile.open(path: path))
    }

    /// Path or label, for messages.
    public var name: String {
        switch self {
        case .elf(let e): return e.name
        case .bzImage(let b): return b.name
        }
    }
}
