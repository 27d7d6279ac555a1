import VireoSupport

/// What `vireo disk amend` may change in a qcow2 image (qemu-img amend's qcow2 options).
public struct Qcow2AmendOptions: Sendable {
    /// "0.10"/"v2" or "1.1"/"v3".
    public var compat: String?
    public var lazyRefcounts: Bool?
    /// Renames the external data file (only for images that have one).
    public var dataFile: String?
    /// Only `false`: the data file stops being promised as a raw image.
    public var dataFileRaw: Bool?
    /// A new backing file name (`""` removes it), as `rebase -u`.
    public var backingFile: String?
    public var backingFormat: DiskImageFormat?
    public var size: UInt64?
    public init() {}
}

extension Qcow2Image {
    /// Changes header-level options of the qcow2 image at `path`, as qemu-img amend does; what
    /// would rewrite the image's clusters (cluster size, refcount width, extended L2 entries,
    /// compression type, turning a data file on) is refused. The header is written in one piece.
    public static func amend(path: String, options a: Qcow2AmendOptions) throws(VireoError) {
        var h = try Qcow2Header.read(path: path)
        let wantV2 = a.compat.map { ["0.10", "v2"].contains($0) }
        if let c = a.compat, !["0.10", "v2", "1.1", "v3"].contains(c) {
            throw VireoError(.invalidArgument, "compat=\(c) is invalid", hint: "use 0.10 or 1.1")
        }
        if h.incompatibleFeatures & Qcow2Header.Incompatible.corrupt != 0 {
            throw VireoError(.corrupt, "\(path) is marked corrupt", hint: "repair it first: vireo disk check -r all \(path)")
        }
        // Dirty lazy refcounts are rebuilt first (opening read-write does that).
        if h.version >= 3 && h.incompatibleFeatures & Qcow2Header.Incompatible.dirty != 0 {
            let img = try Qcow2Image.open(path: path, options: OpenOptions(openBacking: false))
            try img.close()
            h = try Qcow2Header.read(path: path)
        }
        if wantV2 == false && h.version == 2 {
            h.version = 3
            h.refcountOrder = 4
            h.headerLength = 112
        }
        if let lazy = a.lazyRefcounts {
            guard h.version >= 3 || !lazy else {
                throw VireoError(.invalidArgument, "lazy_refcounts=on needs compat=1.1", hint: "add -o compat=1.1")
            }
            if lazy { h.compatibleFeatures |= Qcow2Header.Compatible.lazyRefcounts } else { h.compatibleFeatures &= ~Qcow2Header.Compatible.lazyRefcounts }
        }
        if let d = a.dataFile {
            guard h.hasExternalData else {
                throw VireoError(.invalidArgument, "data_file can only be set for images that use an external data file")
            }
            guard !d.isEmpty, d.utf8.count <= 4096 else { throw VireoError(.invalidArgument, "data_file name must be 1..4096 bytes") }
            h.dataFile = d
        }
        if let raw = a.dataFileRaw {
            if raw && !h.dataFileRaw {
                throw VireoError(.invalidArgument, "data_file_raw cannot be set on existing images")
            }
            if !raw { h.autoclearFeatures &= ~Qcow2Header.Autoclear.rawExternal }
        }
        if let b = a.backingFile {
            if b.isEmpty {
                h.backingFile = nil; h.backingFormat = nil; h.backingFileOffset = 0; h.backingFileSize = 0
            } else {
                guard b.utf8.count <= 1023 else { throw VireoError(.invalidArgument, "backing file name longer than 1023 bytes") }
                if h.dataFileRaw { throw VireoError(.invalidArgument, "an image with data_file_raw=on cannot have a backing file") }
                h.backingFile = b
                h.backingFormat = a.backingFormat?.qemuName ?? h.backingFormat
            }
        } else if let f = a.backingFormat {
            guard h.backingFile != nil else { throw VireoError(.invalidArgument, "backing_fmt needs a backing file") }
            h.backingFormat = f.qemuName
        }
        if wantV2 == true && h.version >= 3 {
            try checkDowngrade(path: path, header: h)
            h.version = 2
            h.compatibleFeatures = 0
            h.autoclearFeatures = 0
            h.otherExtensions.removeAll { $0.0 == Qcow2Header.extFeatureTable }
        }
        guard h.serializedLength() <= Int(h.clusterSize) else {
            throw VireoError(.invalidArgument, "\(path): the header, its extensions and names do not fit in one \(h.clusterSize)-byte cluster")
        }
        // One write of the header's bytes (the rest of the first cluster is left as it is, zeros).
        let bytes = h.serialize(clusterSize: h.clusterSize)
        let n = min(bytes.count, Int(alignUp(UInt64(max(h.serializedLength(), 512)), 512)))
        let f = try ImageFile.open(path, writable: true)
        defer { f.close() }
        try f.writeBytes(Array(bytes[0..<n]), at: 0)
        try f.sync()
        if let size = a.size {
            let img = try Qcow2Image.open(path: path, options: OpenOptions(openBacking: false))
            if size < img.virtualSize {
                try img.close()
                throw VireoError(.invalidArgument, "amend does not shrink images", hint: "use vireo disk resize --shrink")
            }
            try img.resize(to: size)
            try img.close()
        }
    }

    /// A version 3 image can become version 2 only when nothing in it needs version 3.
    static func checkDowngrade(path: String, header h: Qcow2Header) throws(VireoError) {
        func no(_ why: String) -> VireoError {
            VireoError(.unsupported, "\(path) cannot be made compat=0.10: \(why)", hint: "qemu-img amend -o compat=0.10 can rewrite such images")
        }
        let other = h.incompatibleFeatures & ~(Qcow2Header.Incompatible.dirty)
        if other != 0 { throw no("it uses incompatible features 0x\(String(other, radix: 16)) (data file, zstd or extended L2 entries)") }
        if h.refcountOrder != 4 { throw no("its refcounts are \(h.refcountBits) bits wide, version 2 has 16") }
        if h.nbSnapshots > 0 { throw no("it has internal snapshots") }
        let img = try Qcow2Image.open(path: path, readOnly: true, options: OpenOptions(readOnly: true, openBacking: false))
        defer { try? img.close() }
        var v: UInt64 = 0
        while v < img.virtualSize {
            let (k, len) = try img.mapRun(v, img.virtualSize - v)
            if case .zero = k { throw no("it has zero clusters at guest offset \(v)") }
            v += max(len, 1)
        }
    }
}
