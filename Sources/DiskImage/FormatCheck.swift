import VireoSupport

/// Declared formats checked against what a file is, before anything reads it as a disk.
///
/// The rule (QEMU's probing pitfall is the reason): a file is opened as raw only when it was
/// declared raw and carries no other format's signature, or when nothing was declared and no
/// signature matches. A raw disk is the guest's to write, so a guest can put a qcow2 header
/// with a backing file of its choice at sector 0; if that file were later probed and opened
/// as qcow2, the guest would read any host file. Declared raw with a signature is refused,
/// and so is declared qcow2 without one (the guest would see garbage, or the container).
extension DiskImage {
    public struct FormatDecision: Sendable, Equatable {
        /// The format to open the file with.
        public var format: DiskImageFormat
        /// True when nothing was declared and `format` came from the file's signature (or its
        /// absence, for raw): the caller says which format it used.
        public var detected: Bool
    }

    /// What `path` may be opened as, given the `declared` format (nil: detect it). Throws a
    /// `.invalidArgument` error naming both formats and the fix on a mismatch.
    ///
    /// A file declared raw may carry the signature of a self-contained format (LUKS, DMG,
    /// cloop, Bochs): a guest that encrypts its whole raw disk writes a LUKS header there, and
    /// opening it as raw is what it needs. Only formats that can name other files (qcow, qcow2,
    /// QED, VMDK, VHD, VHDX, VDI, Parallels) are refused on a raw-declared file.
    public static func checkFormat(path: String, declared: DiskImageFormat?) throws(VireoError) -> FormatDecision {
        let detected = try probeDetailed(path: path)
        guard let declared else {
            return FormatDecision(format: try detected.readable(path: path), detected: true)
        }
        switch detected {
        case .supported(let actual) where actual == declared:
            return FormatDecision(format: declared, detected: false)
        case .foreign(let f) where declared == .raw && !f.canNameOtherFiles:
            return FormatDecision(format: .raw, detected: false)
        case .supported(.raw):
            throw VireoError(.invalidArgument,
                             "\(path) is declared \(declared) but has no \(declared) signature (it looks like a raw disk)",
                             hint: "declare format=raw if the file is a raw disk, or give the right file")
        default:
            let actual: String
            switch detected {
            case .supported(let f): actual = f.rawValue
            case .foreign(let f): actual = f.displayName
            }
            if declared == .raw {
                throw VireoError(.invalidArgument,
                                 "\(path) is declared raw but starts with a \(actual) signature; it is not opened as raw (the guest would see the \(actual) container, and a raw disk carrying an image header can point a later reader at any host file)",
                                 hint: "if the file is a \(actual) image, give its format (qcow2), or import it: vireo image import NAME \(path); if it is a raw disk whose guest wrote this header, copy its data out first")
            }
            throw VireoError(.invalidArgument, "\(path) is declared \(declared) but is a \(actual) image",
                             hint: "give its real format, or convert it: vireo disk convert -O \(declared.rawValue) \(path) OUT")
        }
    }
}

extension ForeignFormat {
    /// Whether an image of this format can refer to other files (a backing file, extents, a
    /// parent): such a signature on a raw-declared disk is refused.
    public var canNameOtherFiles: Bool {
        switch self {
        case .qcow, .qed, .parallels: return true
        case .luks, .dmg, .cloop, .bochs: return false
        }
    }
}
