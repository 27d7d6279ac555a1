#if canImport(Glibc)
import Glibc
#endif
import VireoSupport

/// A virtual block device backed by an image file.
///
/// Concurrency model: every implementation serializes its own calls with an internal lock,
/// so an image may be shared between threads, but it is designed for one I/O thread per disk
/// (the VMM's virtio-blk queue thread). Calls never block on each other for long: metadata
/// lives in in-memory caches and is written back, in crash-safe order, on `flush()`.
public protocol BlockImage: AnyObject {
    var format: DiskImageFormat { get }
    var path: String { get }
    /// Size of the virtual disk in bytes.
    var virtualSize: UInt64 { get }
    var isReadOnly: Bool { get }
    /// Allocation granularity (the qcow2 cluster size; 512 for flat formats).
    var clusterSize: UInt64 { get }
    /// The image this one reads unallocated ranges from (linked clone), if any.
    var backing: BlockImage? { get }

    /// Reads `buffer.count` bytes at `offset`; the range must lie inside the virtual disk.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(VireoError)
    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(VireoError)
    /// Makes every completed write durable (data and the metadata that points at it).
    func flush() throws(VireoError)
    /// Drops the contents of whole clusters in the range; they read as zero afterwards
    /// (or from the backing image when there is one and the format cannot mask it).
    func discard(offset: UInt64, length: UInt64) throws(VireoError)
    /// Makes the range read as zero, without writing data where the format can mark it.
    func writeZeroes(offset: UInt64, length: UInt64) throws(VireoError)
    /// Allocation state of the range starting at `offset`, for at most `maxLength` bytes.
    /// `.unallocated` means the range falls through to the backing image.
    func blockStatus(at offset: UInt64, maxLength: UInt64) throws(VireoError) -> BlockStatus
    /// Flushes and releases the file. Further calls fail.
    func close() throws(VireoError)
}

public enum DiskImageFormat: String, CaseIterable, Sendable, CustomStringConvertible {
    case raw, qcow2, vmdk, vhd, vhdx, vdi
    public var description: String { rawValue }

    /// Accepts qemu-img's names too (`vpc` is qemu's name for VHD).
    public init?(name: String) {
        switch name.lowercased() {
        case "raw": self = .raw
        case "qcow2": self = .qcow2
        case "vmdk": self = .vmdk
        case "vhd", "vpc": self = .vhd
        case "vhdx": self = .vhdx
        case "vdi": self = .vdi
        default: return nil
        }
    }

    /// qemu-img's spelling of the format.
    public var qemuName: String { self == .vhd ? "vpc" : rawValue }
}

public struct BlockStatus: Sendable, Equatable {
    public enum State: Sendable, Equatable { case data, zero, unallocated }
    public var state: State
    public var length: UInt64
    /// Where the data lives in the host file, when it is stored uncompressed and contiguous.
    public var hostOffset: UInt64?
    public var compressed: Bool
    public init(state: State, length: UInt64, hostOffset: UInt64? = nil, compressed: Bool = false) {
        self.state = state; self.length = length; self.hostOffset = hostOffset; self.compressed = compressed
    }
}

/// Which backing file names an image may use.
public enum BackingPolicy: Sendable, Equatable {
    /// Any path (qemu-img's behaviour).
    case any
    /// Only files in the image's own directory or below it: no absolute paths, no `..` that climbs out.
    case confined
    /// Backing files are refused altogether.
    case forbidden
}

public enum CacheMode: String, Sendable {
    /// flush() reaches stable storage.
    case writeback
    /// flush() only writes metadata back to the file, without fdatasync (qemu-img's `unsafe`).
    case unsafe
}

public struct OpenOptions: Sendable {
    public var readOnly: Bool
    public var backingPolicy: BackingPolicy
    public var cache: CacheMode
    /// Open the backing chain (false: the image alone, like qemu's `-U`/`backing.driver=null`).
    public var openBacking: Bool
    /// Repair a qcow2 image left dirty by lazy refcounts when opening read-write (as QEMU does).
    public var repairDirty: Bool
    /// Take QEMU-compatible image locks (FileLocking.swift) on the image and its backing chain:
    /// a writer excludes every other user, readers share.
    public var locking = false
    public init(readOnly: Bool = false, backingPolicy: BackingPolicy = .any, cache: CacheMode = .writeback,
                openBacking: Bool = true, repairDirty: Bool = true) {
        self.readOnly = readOnly; self.backingPolicy = backingPolicy; self.cache = cache
        self.openBacking = openBacking; self.repairDirty = repairDirty
    }
}

public enum DiskImage {
    /// Longest backing chain accepted: deep enough for any real use, bounded so a hostile
    /// chain cannot exhaust file descriptors.
    public static let maxChainDepth = 256

    /// The format the file's signature names (rules in FormatProbe.swift); raw only when no
    /// signature matches. A format Vireo recognises but does not read (QED, qcow v1, DMG, ...)
    /// is an `.unsupported` error that names it; `probeDetailed` returns it instead.
    public static func probe(path: String) throws(VireoError) -> DiskImageFormat {
        try probeDetailed(path: path).readable(path: path)
    }

    static func probe(file f: ImageFile) throws(VireoError) -> DiskImageFormat {
        try probeDetailed(file: f).readable(path: f.path)
    }

    /// Opens an image and its backing chain. `format` nil means probe.
    public static func open(path: String, format: DiskImageFormat? = nil, readOnly: Bool = false,
                            options: OpenOptions? = nil) throws(VireoError) -> BlockImage {
        var opts = options ?? OpenOptions()
        if readOnly { opts.readOnly = true }
        var seen: [String] = []
        return try open(path: path, format: format, options: opts, chain: &seen)
    }

    static func open(path: String, format: DiskImageFormat?, options: OpenOptions,
                     chain: inout [String]) throws(VireoError) -> BlockImage {
        let canon = canonicalPath(path)
        if chain.contains(canon) {
            throw VireoError(.corrupt, "backing chain loop: \(path) is its own backing file (chain: \((chain + [canon]).joined(separator: " -> ")))",
                             hint: "fix the chain with `vireo disk rebase -u -b NEW FILE`")
        }
        if chain.count >= maxChainDepth {
            throw VireoError(.unsupported, "backing chain deeper than \(maxChainDepth) images at \(path)",
                             hint: "flatten the chain with `vireo disk convert`")
        }
        chain.append(canon)
        let file = try ImageFile.open(path, writable: !options.readOnly)
        if options.locking { try FileLocking.acquire(fd: file.fd, path: path, mode: options.readOnly ? .reader : .writer) }
        let fmt: DiskImageFormat
        if let format { fmt = format } else { fmt = try probe(file: file) }
        switch fmt {
        case .raw: return try RawImage(file: file)
        case .qcow2: return try Qcow2Image(file: file, options: options, chain: &chain)
        case .vmdk:
            guard options.readOnly else { throw VireoError(.unsupported, "VMDK images are supported read-only (import)", hint: "open read-only, or convert: vireo disk convert -O qcow2 \(path) OUT.qcow2") }
            return try VMDKImage(file: file, policy: options.backingPolicy)
        case .vhd:
            guard options.readOnly else { throw VireoError(.unsupported, "VHD images are supported read-only (import)", hint: "open read-only, or convert: vireo disk convert -O qcow2 \(path) OUT.qcow2") }
            return try VHDImage(file: file, options: options, chain: &chain)
        case .vhdx:
            guard options.readOnly else { throw VireoError(.unsupported, "VHDX images are supported read-only (import)", hint: "open read-only, or convert: vireo disk convert -O qcow2 \(path) OUT.qcow2") }
            return try VHDXImage(file: file, options: options, chain: &chain)
        case .vdi:
            guard options.readOnly else { throw VireoError(.unsupported, "VDI images are supported read-only (import)", hint: "open read-only, or convert: vireo disk convert -O qcow2 \(path) OUT.qcow2") }
            return try VDIImage(file: file)
        }
    }

    /// Resolves a backing file name relative to the image that names it, applying the policy.
    static func resolveBacking(name: String, of imagePath: String, policy: BackingPolicy, what: String = "backing file") throws(VireoError) -> String {
        let dir = directoryOf(imagePath)
        switch policy {
        case .forbidden:
            throw VireoError(.permissionDenied, "\(imagePath) names \(what) '\(name)', but files an image names are forbidden here",
                             hint: "flatten the image with `vireo disk convert` first")
        case .confined:
            if name.hasPrefix("/") || name.contains(":") {
                throw VireoError(.permissionDenied, "\(imagePath) names \(what) '\(name)' outside its directory, which the backing policy forbids",
                                 hint: "keep backing files beside the image and use a relative name (vireo disk rebase -u -b NAME)")
            }
            var depth = 0
            for comp in name.split(separator: "/", omittingEmptySubsequences: true) {
                if comp == ".." { depth -= 1 } else if comp != "." { depth += 1 }
                if depth < 0 {
                    throw VireoError(.permissionDenied, "\(imagePath) names \(what) '\(name)', which climbs out of the image's directory; the backing policy forbids that",
                                     hint: "keep backing files beside the image and use a relative name")
                }
            }
        case .any: break
        }
        if name.hasPrefix("/") { return name }
        return dir + "/" + name
    }

    static func directoryOf(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let d = String(path[..<slash])
        return d.isEmpty ? "/" : d
    }
}

extension BlockImage {
    /// Validates a guest request against the virtual size.
    func checkRange(_ offset: UInt64, _ length: Int) throws(VireoError) {
        let (end, o) = offset.addingReportingOverflow(UInt64(length))
        if o || end > virtualSize {
            throw VireoError(.outOfRange, "request \(offset)+\(length) is past the end of the \(virtualSize)-byte disk \(path)")
        }
    }

    /// Reads a range through the whole chain, zero past the end of a shorter backing file.
    public func readFromBacking(_ buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(VireoError) {
        guard let b = backing, offset < b.virtualSize else {
            buffer.initializeMemory(as: UInt8.self, repeating: 0)
            return
        }
        let avail = Int(min(UInt64(buffer.count), b.virtualSize - offset))
        try b.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<avail]), at: offset)
        if avail < buffer.count {
            UnsafeMutableRawBufferPointer(rebasing: buffer[avail...]).initializeMemory(as: UInt8.self, repeating: 0)
        }
    }

    /// Depth of the backing chain below this image.
    public var chainLength: Int {
        var n = 0; var b = backing
        while let x = b { n += 1; b = x.backing }
        return n
    }
}

extension DiskImage {
    /// Where a backing file name written in `imagePath` points, under `policy`.
    public static func resolveBackingPath(name: String, of imagePath: String, policy: BackingPolicy) throws(VireoError) -> String {
        try resolveBacking(name: name, of: imagePath, policy: policy)
    }

    /// Where a qcow2 external data file name written in `imagePath` points (relative names are
    /// relative to the image's directory, as for backing files).
    public static func resolveDataFilePath(_ name: String, of imagePath: String) -> String {
        name.hasPrefix("/") ? name : directoryOf(imagePath) + "/" + name
    }
}
