import VireoSupport

/// The qcow2 header (QEMU docs/interop/qcow2.txt), parsed defensively.
public struct Qcow2Header: Sendable, Equatable {
    public static let magic: UInt32 = 0x5146_49fb
    public enum Incompatible {
        public static let dirty: UInt64 = 1 << 0
        public static let corrupt: UInt64 = 1 << 1
        public static let externalData: UInt64 = 1 << 2
        public static let compressionType: UInt64 = 1 << 3
        public static let extendedL2: UInt64 = 1 << 4
        static let supported: UInt64 = dirty | corrupt | externalData | compressionType | extendedL2
    }
    /// Header byte 104: how compressed clusters are encoded.
    public enum CompressionType: UInt8, Sendable {
        case zlib = 0, zstd = 1
        public var name: String { self == .zlib ? "zlib" : "zstd" }
        public init?(name: String) {
            switch name { case "zlib": self = .zlib; case "zstd": self = .zstd; default: return nil }
        }
    }
    public var compression: CompressionType { CompressionType(rawValue: compressionType) ?? .zlib }
    public enum Compatible { public static let lazyRefcounts: UInt64 = 1 << 0 }
    public enum Autoclear {
        public static let bitmaps: UInt64 = 1 << 0
        public static let rawExternal: UInt64 = 1 << 1
    }
    static let extEnd: UInt32 = 0
    static let extBackingFormat: UInt32 = 0xe279_2aca
    static let extFeatureTable: UInt32 = 0x6803_f857
    static let extDataFile: UInt32 = 0x4441_5441

    public var version: UInt32 = 3
    public var backingFileOffset: UInt64 = 0
    public var backingFileSize: UInt32 = 0
    public var clusterBits: UInt32 = 16
    public var size: UInt64 = 0
    public var cryptMethod: UInt32 = 0
    public var l1Size: UInt32 = 0
    public var l1TableOffset: UInt64 = 0
    public var refcountTableOffset: UInt64 = 0
    public var refcountTableClusters: UInt32 = 0
    public var nbSnapshots: UInt32 = 0
    public var snapshotsOffset: UInt64 = 0
    public var incompatibleFeatures: UInt64 = 0
    public var compatibleFeatures: UInt64 = 0
    public var autoclearFeatures: UInt64 = 0
    public var refcountOrder: UInt32 = 4
    public var headerLength: UInt32 = 112
    public var compressionType: UInt8 = 0
    public var backingFile: String?
    public var backingFormat: String?
    /// External data file name (header extension "DATA"), relative to the image like a backing file.
    public var dataFile: String?
    /// Header extensions we do not interpret, kept verbatim (type, data).
    public var otherExtensions: [(UInt32, [UInt8])] = []
    /// Names of feature bits from the feature name table: (type, bit) -> name.
    public var featureNames: [String] = []

    public init() {}

    public static func == (a: Qcow2Header, b: Qcow2Header) -> Bool {
        a.serialize(clusterSize: 1 << 21) == b.serialize(clusterSize: 1 << 21)
    }

    public var clusterSize: UInt64 { 1 << UInt64(clusterBits) }
    public var hasExtendedL2: Bool { incompatibleFeatures & Incompatible.extendedL2 != 0 }
    public var hasExternalData: Bool { incompatibleFeatures & Incompatible.externalData != 0 }
    /// The external data file is a raw image of the disk on its own (autoclear bit 1).
    public var dataFileRaw: Bool { hasExternalData && autoclearFeatures & Autoclear.rawExternal != 0 }
    public var refcountBits: UInt64 { 1 << UInt64(refcountOrder) }

    /// Parses the first cluster of the file. `fileSize` bounds every offset.
    public static func parse(_ b: [UInt8], fileSize: UInt64, path: String) throws(VireoError) -> Qcow2Header {
        func bad(_ what: String, _ hint: String = "the image is damaged or not a qcow2 image") -> VireoError {
            VireoError(.corrupt, "\(path): \(what)", hint: hint)
        }
        guard b.count >= 72 else { throw bad("file too short for a qcow2 header (\(b.count) bytes)") }
        guard be32(b, 0) == magic else { throw bad("not a qcow2 image (bad magic)") }
        var h = Qcow2Header()
        h.version = be32(b, 4)
        guard h.version == 2 || h.version == 3 else {
            throw VireoError(.unsupported, "\(path): qcow2 version \(h.version) is not supported (only 2 and 3)")
        }
        h.backingFileOffset = be64(b, 8)
        h.backingFileSize = be32(b, 16)
        h.clusterBits = be32(b, 20)
        h.size = be64(b, 24)
        h.cryptMethod = be32(b, 32)
        h.l1Size = be32(b, 36)
        h.l1TableOffset = be64(b, 40)
        h.refcountTableOffset = be64(b, 48)
        h.refcountTableClusters = be32(b, 56)
        h.nbSnapshots = be32(b, 60)
        h.snapshotsOffset = be64(b, 64)
        guard (9...21).contains(h.clusterBits) else {
            throw bad("cluster size 2^\(h.clusterBits) is outside 512 B..2 MiB")
        }
        let cs = h.clusterSize
        if h.version == 3 {
            guard b.count >= 104 else { throw bad("file too short for a version 3 header") }
            h.incompatibleFeatures = be64(b, 72)
            h.compatibleFeatures = be64(b, 80)
            h.autoclearFeatures = be64(b, 88)
            h.refcountOrder = be32(b, 96)
            h.headerLength = be32(b, 100)
            guard h.headerLength >= 104, h.headerLength % 8 == 0 || h.headerLength == 104, UInt64(h.headerLength) <= cs,
                  Int(h.headerLength) <= b.count else {
                throw bad("header length \(h.headerLength) is invalid")
            }
            if h.headerLength > 104 { h.compressionType = b[104] }
        } else {
            h.refcountOrder = 4
            h.headerLength = 72
        }
        guard h.refcountOrder <= 6 else { throw bad("refcount order \(h.refcountOrder) is invalid (at most 6: 64-bit refcounts)") }
        guard h.cryptMethod == 0 else {
            throw VireoError(.unsupported, "\(path) is encrypted (method \(h.cryptMethod)); encrypted qcow2 is not supported",
                             hint: "decrypt it with qemu-img convert first")
        }
        // Extensions.
        var off = Int(h.headerLength)
        let extLimit = min(b.count, Int(cs))
        var sawEnd = false
        var count = 0
        while off + 8 <= extLimit {
            let type = be32(b, off), len = Int(be32(b, off + 4))
            off += 8
            if type == extEnd { sawEnd = true; break }
            count += 1
            guard count <= 1024, len <= extLimit - off else { throw bad("header extension 0x\(String(type, radix: 16)) overruns the first cluster") }
            let data = Array(b[off..<off + len])
            switch type {
            case extBackingFormat:
                h.backingFormat = String(decoding: data.prefix { $0 != 0 }, as: UTF8.self)
            case extDataFile:
                let name = String(decoding: data.prefix { $0 != 0 }, as: UTF8.self)
                guard !name.isEmpty, name.utf8.count <= 4096 else { throw bad("external data file name is empty or longer than 4096 bytes") }
                h.dataFile = name
            case extFeatureTable:
                var i = 0
                while i + 48 <= data.count {
                    let name = String(decoding: data[i + 2..<i + 48].prefix { $0 != 0 }, as: UTF8.self)
                    h.featureNames.append("\(data[i]):\(data[i + 1]):\(name)")
                    i += 48
                }
                h.otherExtensions.append((type, data))
            default:
                h.otherExtensions.append((type, data))
            }
            off += (len + 7) & ~7
        }
        if !sawEnd && h.version == 3 && off < extLimit { throw bad("header extensions are not terminated") }
        // Feature bits.
        let unknownIncompat = h.incompatibleFeatures & ~Incompatible.supported
        if unknownIncompat != 0 {
            var names: [String] = []
            for bit in 0..<64 where unknownIncompat & (1 << UInt64(bit)) != 0 {
                let named = h.featureNames.first { $0.hasPrefix("0:\(bit):") }.map { String($0.dropFirst("0:\(bit):".count)) }
                names.append(named.map { "'\($0)' (bit \(bit))" } ?? "bit \(bit)")
                if bit == 2 { names[names.count - 1] = "external data file (bit 2)" }
                if bit == 4 { names[names.count - 1] = "extended L2 entries (bit 4)" }
            }
            throw VireoError(.unsupported, "\(path) uses incompatible qcow2 features Vireo does not implement: \(names.joined(separator: ", "))",
                             hint: "convert it with qemu-img convert -O qcow2 to a plain qcow2 v3 image")
        }
        // Compression type (byte 104): 0 zlib, 1 zstd; a type other than zlib needs incompatible bit 3.
        guard h.compressionType <= CompressionType.zstd.rawValue else {
            throw VireoError(.unsupported, "\(path) uses unknown compression type \(h.compressionType) (Vireo knows 0 zlib and 1 zstd)",
                             hint: "convert it with qemu-img convert -O qcow2 -o compression_type=zlib")
        }
        if h.compressionType != 0 && h.incompatibleFeatures & Incompatible.compressionType == 0 {
            throw bad("compression type \(h.compressionType) is set but the compression-type incompatible feature bit is clear")
        }
        if h.hasExternalData {
            guard h.dataFile != nil else {
                throw VireoError(.unsupported, "\(path) uses an external data file but does not name it",
                                 hint: "give the image a data file name with qemu-img amend -o data_file=NAME")
            }
            guard h.nbSnapshots == 0 else { throw bad("an image with an external data file cannot have internal snapshots") }
        } else {
            h.dataFile = nil
        }
        // Extended L2 entries: 32 subclusters per cluster, each at least 512 bytes.
        if h.incompatibleFeatures & Incompatible.extendedL2 != 0 && h.clusterBits < 14 {
            throw bad("extended L2 entries need clusters of at least 16 KiB (this image has \(cs)-byte clusters)")
        }
        // Backing file name.
        if h.backingFileOffset != 0 {
            guard h.backingFileSize > 0, h.backingFileSize <= 1023 else { throw bad("backing file name length \(h.backingFileSize) is invalid (1..1023)") }
            let (end, o) = h.backingFileOffset.addingReportingOverflow(UInt64(h.backingFileSize))
            guard !o, end <= UInt64(min(b.count, Int(cs))) else { throw bad("backing file name lies outside the first cluster") }
            h.backingFile = String(decoding: b[Int(h.backingFileOffset)..<Int(end)], as: UTF8.self)
        }
        // Table placement sanity (sizes are re-checked against caps by the image).
        func checkTable(_ name: String, _ offset: UInt64, _ bytes: UInt64) throws(VireoError) {
            guard offset % cs == 0 else { throw bad("\(name) offset \(offset) is not cluster aligned") }
            let (end, o) = offset.addingReportingOverflow(bytes)
            guard !o, end <= alignUp(fileSize, cs) else {
                throw bad("\(name) (offset \(offset), \(bytes) bytes) extends past the end of the file (\(fileSize) bytes)",
                          "the image is truncated or damaged")
            }
        }
        guard h.refcountTableClusters > 0 else { throw bad("refcount table is empty") }
        try checkTable("refcount table", h.refcountTableOffset, UInt64(h.refcountTableClusters) * cs)
        if h.l1Size > 0 { try checkTable("L1 table", h.l1TableOffset, UInt64(h.l1Size) * 8) }
        if h.nbSnapshots > 0 {
            guard h.snapshotsOffset % 8 == 0 else { throw bad("snapshot table offset is not aligned") }
            guard h.snapshotsOffset < fileSize else { throw bad("snapshot table offset is past the end of the file") }
        }
        return h
    }

    /// The header cluster bytes: header, extensions, backing file name.
    public func serialize(clusterSize: UInt64) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: Int(min(clusterSize, 65536)))
        put32(&b, 0, Self.magic)
        put32(&b, 4, version)
        put32(&b, 20, clusterBits)
        put64(&b, 24, size)
        put32(&b, 32, cryptMethod)
        put32(&b, 36, l1Size)
        put64(&b, 40, l1TableOffset)
        put64(&b, 48, refcountTableOffset)
        put32(&b, 56, refcountTableClusters)
        put32(&b, 60, nbSnapshots)
        put64(&b, 64, snapshotsOffset)
        var off = 72
        if version >= 3 {
            put64(&b, 72, incompatibleFeatures)
            put64(&b, 80, compatibleFeatures)
            put64(&b, 88, autoclearFeatures)
            put32(&b, 96, refcountOrder)
            put32(&b, 100, 112)
            b[104] = compressionType
            off = 112
        }
        func ext(_ type: UInt32, _ data: [UInt8]) {
            guard off + 8 + data.count + 8 <= b.count else { return }
            put32(&b, off, type); put32(&b, off + 4, UInt32(data.count))
            for (i, x) in data.enumerated() { b[off + 8 + i] = x }
            off += 8 + ((data.count + 7) & ~7)
        }
        if let bf = backingFormat, backingFile != nil { ext(Self.extBackingFormat, Array(bf.utf8)) }
        if let df = dataFile { ext(Self.extDataFile, Array(df.utf8)) }
        for (t, d) in otherExtensions { ext(t, d) }
        off += 8 // end-of-extensions marker (zeros)
        if let name = backingFile {
            let bytes = Array(name.utf8)
            put64(&b, 8, UInt64(off))
            put32(&b, 16, UInt32(bytes.count))
            for (i, x) in bytes.enumerated() where off + i < b.count { b[off + i] = x }
            off += bytes.count
        }
        return Array(b[0..<min(b.count, Int(clusterSize))])
    }

    /// Bytes `serialize` needs; must fit in one cluster.
    func serializedLength() -> Int {
        var n = version >= 3 ? 112 : 72
        if let bf = backingFormat, backingFile != nil { n += 8 + ((bf.utf8.count + 7) & ~7) }
        if let df = dataFile { n += 8 + ((df.utf8.count + 7) & ~7) }
        for (_, d) in otherExtensions { n += 8 + ((d.count + 7) & ~7) }
        n += 8
        n += backingFile?.utf8.count ?? 0
        return n
    }
}

extension Qcow2Header {
    /// Reads and validates the header of the qcow2 image at `path` without opening the files it
    /// names (backing file, external data file): for checking where those point first.
    public static func read(path: String) throws(VireoError) -> Qcow2Header {
        let file = try ImageFile.open(path, writable: false)
        defer { file.close() }
        let fileSize = try file.size()
        let first = try file.readBytes(Int(min(fileSize, 24)), at: 0, what: "qcow2 header")
        guard first.count >= 24 else { throw VireoError(.corrupt, "\(path): file too short for a qcow2 header") }
        let bits = be32(first, 20)
        guard (9...21).contains(bits) else {
            throw VireoError(.corrupt, "\(path): cluster size 2^\(bits) is outside 512 B..2 MiB", hint: "the image is damaged")
        }
        let head = try file.readBytes(Int(min(fileSize, UInt64(1) << UInt64(bits))), at: 0, what: "qcow2 header cluster")
        return try parse(head, fileSize: fileSize, path: path)
    }
}
