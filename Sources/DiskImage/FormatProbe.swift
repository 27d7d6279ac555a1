import VireoSupport

/// Image formats Vireo recognises by their signature but does not read. Probing names them,
/// so such a file is refused with its name instead of being taken for a raw disk.
public enum ForeignFormat: String, CaseIterable, Sendable, CustomStringConvertible {
    /// QEMU's original qcow (version 1).
    case qcow
    /// QEMU Enhanced Disk.
    case qed
    /// Parallels / OpenVZ ploop.
    case parallels
    /// Apple disk image (UDIF, "koly" trailer).
    case dmg
    /// LUKS-encrypted volume (version 1 or 2).
    case luks
    /// Compressed loopback (Knoppix).
    case cloop
    /// Bochs growing redolog.
    case bochs

    /// qemu-img's spelling of the format (its `-f` name).
    public var qemuName: String { rawValue }

    /// What a person calls it.
    public var displayName: String {
        switch self {
        case .qcow: return "qcow (version 1)"
        case .qed: return "QED"
        case .parallels: return "Parallels"
        case .dmg: return "Apple DMG"
        case .luks: return "LUKS-encrypted"
        case .cloop: return "cloop"
        case .bochs: return "Bochs"
        }
    }

    public var description: String { rawValue }
}

/// What a file's signature says it is.
public enum DetectedFormat: Sendable, Equatable, CustomStringConvertible {
    /// A format Vireo opens (raw only when no signature matched).
    case supported(DiskImageFormat)
    /// A format Vireo recognises but does not read.
    case foreign(ForeignFormat)

    /// qemu-img's name of the format.
    public var qemuName: String {
        switch self {
        case .supported(let f): return f.qemuName
        case .foreign(let f): return f.qemuName
        }
    }

    public var description: String { qemuName }

    /// The format to open, or the error that names the format and says how to convert it.
    public func readable(path: String) throws(VireoError) -> DiskImageFormat {
        switch self {
        case .supported(let f): return f
        case .foreign(let f): throw DiskImage.foreignFormatError(f, path: path)
        }
    }
}

/// Signature rules, following qemu-img's probes (QEMU 7.2 block drivers): each looks at the
/// first 512 bytes (and, for VHD and DMG, the last 512), so a probe costs at most two reads.
/// A file is raw only when no rule matches.
enum FormatProbe {
    static let headSize = 512

    static func detect(head: [UInt8], tail: [UInt8]?) -> DetectedFormat {
        func starts(_ s: String) -> Bool { hasPrefix(head, Array(s.utf8)) }
        func starts(_ b: [UInt8]) -> Bool { hasPrefix(head, b) }
        // QEMU's qcow and qcow2 share the magic "QFI\xfb"; the big-endian version tells them apart.
        if starts([0x51, 0x46, 0x49, 0xfb]) {
            return be32(head, 4) == 1 ? .foreign(.qcow) : .supported(.qcow2)
        }
        if starts("QED\0") { return .foreign(.qed) }
        if starts("KDMV") || starts("COWD") { return .supported(.vmdk) }          // VMDK4 / VMDK3 sparse
        if starts("conectix") { return .supported(.vhd) }                        // footer copy of a dynamic VHD
        if starts("vhdxfile") { return .supported(.vhdx) }
        if le32(head, 0x40) == 0xbeda_107f { return .supported(.vdi) }
        if starts("WithoutFreeSpace") || starts("WithouFreSpacExt"), le32(head, 16) == 2 { return .foreign(.parallels) }
        if starts([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]) {                        // "LUKS\xba\xbe"
            let v = be16(head, 6)
            if v == 1 || v == 2 { return .foreign(.luks) }
        }
        if starts("#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=") { return .foreign(.cloop) }
        if cString(head, 0, 32) == "Bochs Virtual HD Image", cString(head, 32, 16) == "Redolog",
           cString(head, 48, 16) == "Growing", [0x0002_0000, 0x0001_0000].contains(le32(head, 64)) {
            return .foreign(.bochs)
        }
        if isVMDKDescriptor(head) { return .supported(.vmdk) }
        if let tail, tail.count == 512 {
            if hasPrefix(tail, Array("conectix".utf8)) { return .supported(.vhd) }  // fixed VHD: footer only
            if hasPrefix(tail, Array("koly".utf8)) { return .foreign(.dmg) }
        }
        return .supported(.raw)
    }

    /// A VMDK text descriptor: "# Disk DescriptorFile" first, or (qemu's rule) comment and
    /// blank lines followed by a line that is exactly `version=1|2|3`.
    static func isVMDKDescriptor(_ b: [UInt8]) -> Bool {
        if hasPrefix(b, Array("# Disk DescriptorFile".utf8)) { return true }
        var i = 0
        let n = b.count
        while i < n {
            if b[i] == UInt8(ascii: "#") {
                while i < n && b[i] != UInt8(ascii: "\n") { i += 1 }
                i += 1
                continue
            }
            if b[i] == UInt8(ascii: " ") {
                while i < n && b[i] == UInt8(ascii: " ") { i += 1 }
                if i < n && b[i] == UInt8(ascii: "\r") { i += 1 }
                guard i < n, b[i] == UInt8(ascii: "\n") else { return false }
                i += 1
                continue
            }
            for v in ["1", "2", "3"] {
                for eol in ["\n", "\r\n"] where hasPrefix(b[i...], Array("version=\(v)\(eol)".utf8)) { return true }
            }
            return false
        }
        return false
    }

    static func hasPrefix(_ b: [UInt8], _ p: [UInt8]) -> Bool { hasPrefix(b[...], p) }

    static func hasPrefix(_ b: ArraySlice<UInt8>, _ p: [UInt8]) -> Bool {
        guard b.count >= p.count else { return false }
        var i = b.startIndex
        for x in p {
            if b[i] != x { return false }
            i += 1
        }
        return true
    }

    /// A NUL-terminated string in a fixed-size field (nil when the field has no NUL).
    static func cString(_ b: [UInt8], _ off: Int, _ len: Int) -> String? {
        guard off + len <= b.count else { return nil }
        let field = b[off..<off + len]
        guard let end = field.firstIndex(of: 0) else { return nil }
        return String(decoding: field[off..<end], as: UTF8.self)
    }
}

extension DiskImage {
    /// Names every format qemu-img would recognise in the file; raw only when no signature
    /// matches. Two small reads at most (the first and the last 512 bytes).
    public static func probeDetailed(path: String) throws(VireoError) -> DetectedFormat {
        let f = try ImageFile.open(path, writable: false)
        defer { f.close() }
        return try probeDetailed(file: f)
    }

    static func probeDetailed(file f: ImageFile) throws(VireoError) -> DetectedFormat {
        var head = [UInt8](repeating: 0, count: FormatProbe.headSize)
        var failure: VireoError?
        // Short files read zero past their end (ImageFile.read), so a tiny file is raw.
        head.withUnsafeMutableBytes { p in do throws(VireoError) { try f.read(into: p, at: 0) } catch { failure = error } }
        if let failure { throw failure }
        let first = FormatProbe.detect(head: head, tail: nil)
        guard first == .supported(.raw) else { return first }
        let size = try f.size()
        guard size >= 512 else { return first }
        let tail = try f.readBytes(512, at: size - 512, what: "last sector (VHD footer / DMG trailer)")
        return FormatProbe.detect(head: head, tail: tail)
    }

    /// The error for a recognised format Vireo does not read.
    public static func foreignFormatError(_ f: ForeignFormat, path: String) -> VireoError {
        let hint: String
        switch f {
        case .luks:
            hint = "decrypt it with cryptsetup, or convert it with qemu-img convert --object secret,id=s0,file=KEYFILE --image-opts driver=luks,file.filename=\(path),key-secret=s0 -O qcow2 OUT.qcow2"
        default:
            hint = "convert it with qemu-img convert -f \(f.qemuName) -O qcow2 \(path) OUT.qcow2, then use OUT.qcow2"
        }
        return VireoError(.unsupported, "\(path) is a \(f.displayName) image, which Vireo does not read", hint: hint)
    }
}
