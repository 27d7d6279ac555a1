import VireoSupport

/// A parsed Linux bzImage: the real-mode setup header (Documentation/arch/x86/boot.rst) and where
/// the protected-mode kernel lies in the file.
public struct BzImage: Sendable, Equatable {
    /// Offsets of `struct setup_header` fields, relative to the start of the image / zero page.
    public enum Offset {
        public static let setupSects = 0x1F1
        public static let rootFlags = 0x1F2
        public static let syssize = 0x1F4
        public static let vidMode = 0x1FA
        public static let bootFlag = 0x1FE
        public static let jump = 0x200
        public static let header = 0x202
        public static let version = 0x206
        public static let typeOfLoader = 0x210
        public static let loadflags = 0x211
        public static let code32Start = 0x214
        public static let ramdiskImage = 0x218
        public static let ramdiskSize = 0x21C
        public static let heapEndPtr = 0x224
        public static let extLoaderVer = 0x226
        public static let extLoaderType = 0x227
        public static let cmdLinePtr = 0x228
        public static let initrdAddrMax = 0x22C
        public static let kernelAlignment = 0x230
        public static let relocatableKernel = 0x234
        public static let minAlignment = 0x235
        public static let xloadflags = 0x236
        public static let cmdlineSize = 0x238
        public static let hardwareSubarch = 0x23C
        public static let payloadOffset = 0x248
        public static let payloadLength = 0x24C
        public static let setupData = 0x250
        public static let prefAddress = 0x258
        public static let initSize = 0x260
        public static let handoverOffset = 0x264
        public static let kernelInfoOffset = 0x268
        /// The setup header may extend at most to here (boot_params._pad7 follows).
        public static let headerLimit = 0x290
    }

    /// "HdrS" little-endian.
    public static let headerMagic: UInt32 = 0x5372_6448
    public static let bootFlagMagic: UInt16 = 0xAA55
    /// Oldest protocol accepted: 2.06 (cmdline_size, initrd_addr_max, relocatable kernels).
    public static let minimumVersion: UInt16 = 0x0206

    /// loadflags bits.
    public static let loadedHigh: UInt8 = 0x01
    public static let canUseHeap: UInt8 = 0x80
    /// xloadflags bits.
    public static let xlfKernel64: UInt16 = 0x01
    public static let xlfCanBeLoadedAbove4G: UInt16 = 0x02

    /// Path or label, for messages.
    public var name: String
    /// The raw setup header bytes 0x1F1 ..< headerEnd, copied verbatim into the zero page.
    public var setupHeader: [UInt8]
    public var setupSects: Int
    public var version: UInt16
    public var loadflags: UInt8
    public var xloadflags: UInt16
    public var code32Start: UInt32
    public var initrdAddrMax: UInt32
    public var kernelAlignment: UInt32
    public var relocatable: Bool
    /// Longest command line the kernel accepts, excluding the terminating NUL.
    public var cmdlineSize: UInt32
    public var prefAddress: UInt64
    /// Memory the kernel needs from its load address while decompressing and initialising.
    public var initSize: UInt32
    /// Offset and size of the protected-mode kernel in the file.
    public var kernelOffset: UInt64
    public var kernelSize: UInt64

    /// Whether the image advertises the 64-bit entry point (load address + 0x200).
    public var supports64BitEntry: Bool { version >= 0x020C && xloadflags & Self.xlfKernel64 != 0 }

    /// "2.15"
    public var versionString: String { "\(version >> 8).\(String(format2: version & 0xFF))" }

    /// Parses the header of `file`. Throws `.corrupt` / `.unsupported` naming the problem.
    public static func parse(_ file: KernelFile) throws -> BzImage {
        let name = file.name
        let head = try file.prefix(Offset.headerLimit)
        guard let magic = head.u32(Offset.header), magic == headerMagic else {
            throw VireoError(.invalidArgument,
                             "kernel \(name) is not an ELF vmlinux or a bzImage (no 'HdrS' signature at 0x202)",
                             hint: "give --kernel a vmlinuz (bzImage) or an uncompressed vmlinux")
        }
        guard let jumpLen = head.u8(Offset.jump + 1), let version = head.u16(Offset.version),
              let setupSectsByte = head.u8(Offset.setupSects), let bootFlag = head.u16(Offset.bootFlag) else {
            throw VireoError(.corrupt, "kernel \(name) is truncated inside its setup header",
                             hint: "the file is damaged or incomplete")
        }
        guard bootFlag == bootFlagMagic else {
            throw VireoError(.corrupt, "kernel \(name) has boot_flag \(hexString(bootFlag)) at 0x1fe, expected 0xaa55",
                             hint: "the file is damaged or not a Linux bzImage")
        }
        guard version >= minimumVersion else {
            throw VireoError(.unsupported,
                             "kernel \(name) uses boot protocol \(version >> 8).\(String(format2: version & 0xFF)); Vireo needs 2.06 or newer",
                             hint: "use a Linux kernel from 2.6.22 or later")
        }
        let headerEnd = min(Offset.header + Int(jumpLen), Offset.headerLimit)
        guard headerEnd >= 0x238 + 4 else {
            throw VireoError(.corrupt, "kernel \(name) declares a setup header of only \(headerEnd - Offset.setupSects) bytes for protocol \(hexString(version))",
                             hint: "the file is damaged")
        }
        guard head.count >= headerEnd else {
            throw VireoError(.corrupt, "kernel \(name) is truncated inside its setup header (\(file.size) bytes)",
                             hint: "the file is damaged or incomplete")
        }
        let header = Array(head[Offset.setupSects..<headerEnd])
        func field<T: FixedWidthInteger & UnsignedInteger>(_ t: T.Type, _ offset: Int) -> T {
            offset + MemoryLayout<T>.size <= headerEnd ? (head.readLE(t, at: offset) ?? 0) : 0
        }
        let setupSects = setupSectsByte == 0 ? 4 : Int(setupSectsByte)
        let kernelOffset = UInt64(setupSects + 1) * 512
        guard file.size > kernelOffset else {
            throw VireoError(.corrupt,
                             "kernel \(name) is truncated: \(file.size) bytes, but its \(setupSects) setup sectors end at \(hexString(kernelOffset))",
                             hint: "the file is damaged or incomplete")
        }
        // syssize (16-byte paragraphs) and, from 2.08, the compressed payload must lie inside the file.
        let syssize = UInt64(field(UInt32.self, Offset.syssize)) &* 16
        let payloadEnd = version >= 0x0208
            ? UInt64(field(UInt32.self, Offset.payloadOffset)) &+ UInt64(field(UInt32.self, Offset.payloadLength)) : 0
        let declared = max(syssize, payloadEnd)
        guard declared <= file.size - kernelOffset else {
            throw VireoError(.corrupt,
                             "kernel \(name) is truncated: its header declares \(declared) bytes of kernel after the setup sectors, the file has \(file.size - kernelOffset)",
                             hint: "the file is damaged or incomplete; copy the vmlinuz again")
        }
        let loadflags: UInt8 = field(UInt8.self, Offset.loadflags)
        guard loadflags & loadedHigh != 0 else {
            throw VireoError(.unsupported, "kernel \(name) is a zImage (loaded below 1 MiB), not a bzImage",
                             hint: "build the kernel as a bzImage")
        }
        var image = BzImage(
            name: name, setupHeader: header, setupSects: setupSects, version: version, loadflags: loadflags,
            xloadflags: version >= 0x020C ? field(UInt16.self, Offset.xloadflags) : 0,
            code32Start: field(UInt32.self, Offset.code32Start),
            initrdAddrMax: field(UInt32.self, Offset.initrdAddrMax),
            kernelAlignment: version >= 0x0205 ? field(UInt32.self, Offset.kernelAlignment) : 0,
            relocatable: version >= 0x0205 && field(UInt8.self, Offset.relocatableKernel) != 0,
            cmdlineSize: field(UInt32.self, Offset.cmdlineSize),
            prefAddress: version >= 0x020A ? field(UInt64.self, Offset.prefAddress) : 0,
            initSize: version >= 0x020A ? field(UInt32.self, Offset.initSize) : 0,
            kernelOffset: kernelOffset, kernelSize: file.size - kernelOffset)
        if image.initrdAddrMax == 0 { image.initrdAddrMax = 0x37FF_FFFF }
        return image
    }

    /// The first byte past what the kernel may use while it decompresses and starts when it is
    /// loaded at `loadAddress`: it decompresses to max(load address, pref_address) and needs
    /// init_size bytes there (before 2.10, four times the compressed size is assumed). nil on overflow.
    public func memoryEnd(loadAddress: UInt64) -> UInt64? {
        let base = max(loadAddress, prefAddress)
        let need: UInt64
        if version >= 0x020A, initSize > 0 {
            need = max(UInt64(initSize), kernelSize)
        } else {
            guard let n = checkedMul(kernelSize, 4) else { return nil }
            need = n
        }
        return checkedAdd(base, need)
    }
}

extension String {
    /// Two decimal digits: 6 -> "06".
    init(format2 v: UInt16) { self = v < 10 ? "0\(v)" : "\(v)" }
}
