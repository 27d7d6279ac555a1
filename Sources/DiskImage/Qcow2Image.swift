#if canImport(Glibc)
import Glibc
#endif
import VireoSupport

/// L1/L2 entry bits.
enum Qcow2Entry {
    static let copied: UInt64 = 1 << 63
    static let compressed: UInt64 = 1 << 62
    static let zero: UInt64 = 1
    static let offsetMask: UInt64 = 0x00ff_ffff_ffff_fe00
    static let l1Reserved: UInt64 = 0x7f00_0000_0000_01ff
    static let l2Reserved: UInt64 = 0x3f00_0000_0000_01fe
}

/// One cached L2 table (entries in host byte order).
final class L2Table {
    /// Standard cluster descriptors.
    var entries: [UInt64]
    /// With extended L2 entries: each entry's subcluster bitmap (bits 0-31 allocated,
    /// 32-63 reads as zero); empty otherwise.
    var bitmaps: [UInt64]
    var dirty = false
    init(_ e: [UInt64], bitmaps b: [UInt64] = []) { entries = e; bitmaps = b }

    /// The on-disk words: entries, or (entry, bitmap) pairs with extended L2 entries.
    static func decode(_ raw: [UInt8], count: Int, extended: Bool) -> L2Table {
        guard extended else { return L2Table(decodeBE64Table(raw, count: count)) }
        let words = decodeBE64Table(raw, count: count * 2)
        var e = [UInt64](repeating: 0, count: count), b = [UInt64](repeating: 0, count: count)
        for i in 0..<count { e[i] = words[2 * i]; b[i] = words[2 * i + 1] }
        return L2Table(e, bitmaps: b)
    }

    func encode(size: Int) -> [UInt8] {
        guard !bitmaps.isEmpty else { return encodeBE64Table(entries, paddedTo: size) }
        var words = [UInt64](repeating: 0, count: entries.count * 2)
        for i in 0..<entries.count { words[2 * i] = entries[i]; words[2 * i + 1] = bitmaps[i] }
        return encodeBE64Table(words, paddedTo: size)
    }
}

/// Extended L2 subcluster bitmap helpers.
enum Subclusters {
    static let count = 32
    static let allAllocated: UInt64 = 0xffff_ffff
    static let allZero: UInt64 = 0xffff_ffff << 32
    /// Bits s0...s1 (inclusive) of the allocation half.
    static func mask(_ s0: UInt64, _ s1: UInt64) -> UInt64 { ((UInt64(1) << (s1 - s0 + 1)) - 1) << s0 }
}

/// One cached refcount block (raw bytes, in the on-disk encoding).
final class RefBlock {
    var bytes: [UInt8]
    var dirty = false
    /// Allocated in this session: must reach the disk before the refcount table entry naming it.
    var isNew = false
    init(_ b: [UInt8]) { bytes = b }
}

/// How one guest cluster is stored.
enum ClusterKind: Equatable {
    case unallocated
    case zero(host: UInt64)          // host 0: no preallocated cluster
    case data(host: UInt64, copied: Bool)
    case compressed(host: UInt64, length: Int)
}

/// A qcow2 image (version 3 read-write; version 2 read-only).
///
/// Crash-safety: guest data is written in place immediately; metadata changes live in the
/// L2 / refcount caches and are written back by `flush()` in dependency order:
/// new refcount blocks, barrier, refcount blocks and table, barrier, L2 tables, barrier,
/// L1 table, barrier; clusters are only freed (refcount decremented) after the metadata that
/// stopped referencing them is durable. A crash at any moment can leak clusters, never corrupt.
public final class Qcow2Image: BlockImage, @unchecked Sendable {
    public let format = DiskImageFormat.qcow2
    public var path: String { file.path }
    public var virtualSize: UInt64 { header.size }
    public let isReadOnly: Bool
    public var clusterSize: UInt64 { cs }
    public var backing: BlockImage? { backingImage }
    public internal(set) var header: Qcow2Header

    let file: ImageFile
    /// The external data file (incompatible bit 2), where guest clusters live at their guest offsets.
    var dataFile: ImageFile?
    /// Where data clusters are read and written: the external data file, or the image itself.
    var dataIO: ImageFile { dataFile ?? file }
    var external: Bool { dataFile != nil }
    /// The resolved path of the external data file, if any.
    public var dataFilePath: String? { dataFile?.path }
    let options: OpenOptions
    let cs: UInt64
    let clusterBits: UInt64
    let l2Bits: UInt64
    let l2Entries: Int
    /// Extended L2 entries (incompatible bit 4): 32 subclusters per cluster.
    let extendedL2: Bool
    /// log2 of the subcluster size (extended L2 only).
    let scBits: UInt64
    var l1: [UInt64]
    var l1Dirty = false
    var l2Cache: [UInt64: L2Table] = [:]
    var l2CacheLimit: Int
    var refTable: [UInt64]
    var refTableDirty = false
    var refBlocks: [UInt64: RefBlock] = [:]
    var pendingFree: [UInt64] = []
    /// First byte after the last cluster in use (cluster aligned): clusters at or past it are free and zero.
    var allocEnd: UInt64
    /// Current size of the host file.
    var physicalEnd: UInt64
    /// Lowest cluster index that may be free.
    var freeHint: UInt64 = 0
    var backingImage: BlockImage?
    var markedDirty = false
    var closed = false
    var snapshots: [Qcow2Snapshot] = [] {
        didSet { snapshotTableBytes = snapshots.reduce(UInt64(0)) { $0 + UInt64($1.serialize().count) } }
    }
    /// Size of the on-disk snapshot table.
    var snapshotTableBytes: UInt64 = 0
    /// Byte cursor for packing compressed clusters (convert -c).
    var compressedCursor: UInt64 = 0
    /// Last decompressed cluster (host offset, bytes).
    var decompressedCache: (UInt64, [UInt8])?
    let lock = ImageLock()

    static let maxL1Bytes: UInt64 = 32 << 20
    static let maxRefTableBytes: UInt64 = 32 << 20
    static let maxSnapshots: UInt32 = 65536

    init(file: ImageFile, options: OpenOptions, chain: inout [String], allowCorrupt: Bool = false) throws(VireoError) {
        self.file = file
        self.options = options
        self.isReadOnly = options.readOnly || !file.writable
        let fileSize = try file.size()
        let first = try file.readBytes(Int(min(fileSize, 104)), at: 0, what: "qcow2 header")
        guard first.count >= 24 else { throw VireoError(.corrupt, "\(file.path): file too short for a qcow2 header") }
        let bits = be32(first, 20)
        guard (9...21).contains(bits) else {
            throw VireoError(.corrupt, "\(file.path): cluster size 2^\(bits) is outside 512 B..2 MiB", hint: "the image is damaged")
        }
        let headBytes = try file.readBytes(Int(min(fileSize, UInt64(1) << UInt64(bits))), at: 0, what: "qcow2 header cluster")
        let h = try Qcow2Header.parse(headBytes, fileSize: fileSize, path: file.path)
        self.header = h
        cs = h.clusterSize
        clusterBits = UInt64(h.clusterBits)
        extendedL2 = h.hasExtendedL2
        scBits = clusterBits - 5
        l2Bits = clusterBits - (extendedL2 ? 4 : 3)
        l2Entries = Int(cs / (extendedL2 ? 16 : 8))
        l2CacheLimit = max(16, Int((32 << 20) / cs))
        physicalEnd = fileSize
        allocEnd = alignUp(fileSize, cs)
        freeHint = 0

        if h.version == 2 && !isReadOnly {
            throw VireoError(.unsupported, "\(file.path) is qcow2 version 2 (compat=0.10), which Vireo opens read-only",
                             hint: "convert it to version 3: vireo disk convert -O qcow2 \(file.path) NEW.qcow2")
        }
        if h.incompatibleFeatures & Qcow2Header.Incompatible.corrupt != 0 && !isReadOnly && !allowCorrupt {
            throw VireoError(.corrupt, "\(file.path) is marked corrupt", hint: "run `vireo disk check -r all \(file.path)`, or open it read-only")
        }
        // L1 table: cap its size before allocating.
        let l1Bytes = UInt64(h.l1Size) * 8
        guard l1Bytes <= Self.maxL1Bytes else {
            throw VireoError(.corrupt, "\(file.path): L1 table of \(h.l1Size) entries exceeds the \(Self.maxL1Bytes >> 20) MiB limit",
                             hint: "the header is damaged or hostile")
        }
        let perL1 = cs * UInt64(l2Entries)
        let needL1 = divRoundUp(h.size, perL1)
        guard needL1 <= UInt64(h.l1Size) else {
            throw VireoError(.corrupt, "\(file.path): L1 table (\(h.l1Size) entries) is too small for a \(h.size)-byte disk (needs \(needL1))",
                             hint: "the header is damaged")
        }
        l1 = []
        if h.l1Size > 0 {
            let raw = try file.readBytes(Int(l1Bytes), at: h.l1TableOffset, what: "L1 table")
            l1 = decodeBE64Table(raw, count: Int(h.l1Size))
            for (i, e) in l1.enumerated() where e & Qcow2Entry.l1Reserved != 0 {
                if !allowCorrupt {
                    throw VireoError(.corrupt, "\(file.path): L1 entry \(i) has reserved bits set (0x\(String(e, radix: 16)))",
                                     hint: "the image is damaged; try `vireo disk check -r all` on a copy")
                }
            }
        }
        // Refcount table: same caps.
        let rtBytes = UInt64(h.refcountTableClusters) * cs
        guard rtBytes <= Self.maxRefTableBytes else {
            throw VireoError(.corrupt, "\(file.path): refcount table of \(h.refcountTableClusters) clusters exceeds the \(Self.maxRefTableBytes >> 20) MiB limit",
                             hint: "the header is damaged or hostile")
        }
        let rtRaw = try file.readBytes(Int(rtBytes), at: h.refcountTableOffset, what: "refcount table")
        refTable = decodeBE64Table(rtRaw, count: Int(rtBytes / 8))
        guard h.nbSnapshots <= Self.maxSnapshots else {
            throw VireoError(.corrupt, "\(file.path): \(h.nbSnapshots) snapshots exceeds the limit of \(Self.maxSnapshots)")
        }
        snapshots = try Qcow2Snapshot.readTable(file: file, header: h, fileSize: fileSize)
        snapshotTableBytes = snapshots.reduce(UInt64(0)) { $0 + UInt64($1.serialize().count) }
        compressedCursor = 0

        // External data file: resolved like a backing file, under the same policy.
        if h.hasExternalData, let name = h.dataFile {
            let dpath = try DiskImage.resolveBacking(name: name, of: file.path, policy: options.backingPolicy, what: "external data file")
            guard fileExists(dpath) else {
                throw VireoError(.notFound, "\(file.path): external data file \(dpath) does not exist",
                                 hint: "restore it next to the image, or rename it with `vireo disk amend -o data_file=NAME \(file.path)`")
            }
            dataFile = try ImageFile.open(dpath, writable: !isReadOnly)
        }
        // Backing chain.
        if let name = h.backingFile, options.openBacking {
            let bpath = try DiskImage.resolveBacking(name: name, of: file.path, policy: options.backingPolicy)
            var bfmt: DiskImageFormat? = nil
            if let f = h.backingFormat {
                guard let known = DiskImageFormat(name: f) else {
                    throw VireoError(.unsupported, "\(file.path): backing file format '\(f)' is not supported")
                }
                bfmt = known
            }
            guard fileExists(bpath) else {
                throw VireoError(.notFound, "\(file.path): backing file \(bpath) does not exist",
                                 hint: "restore it, or point the image at another one with `vireo disk rebase -u -b NEW \(file.path)`")
            }
            var bopts = options
            bopts.readOnly = true
            backingImage = try DiskImage.open(path: bpath, format: bfmt, options: bopts, chain: &chain)
        }

        if !isReadOnly {
            var changed = false
            // Autoclear bits Vireo does not maintain are cleared; the raw-data-file bit is kept
            // (writes go to the data file at their guest offsets, zeroes are written as zeroes).
            let keep = header.hasExternalData ? header.autoclearFeatures & Qcow2Header.Autoclear.rawExternal : 0
            if header.autoclearFeatures != keep { header.autoclearFeatures = keep; changed = true }
            if header.incompatibleFeatures & Qcow2Header.Incompatible.dirty != 0 && options.repairDirty {
                try rebuildRefcounts()
                header.incompatibleFeatures &= ~Qcow2Header.Incompatible.dirty
                changed = true
            }
            if changed { try writeHeader() }
        }
    }

    deinit {
        if !closed { try? close() }
    }

    public static func open(path: String, readOnly: Bool = false, options: OpenOptions = OpenOptions()) throws(VireoError) -> Qcow2Image {
        var o = options
        if readOnly { o.readOnly = true }
        var chain: [String] = [canonicalPath(path)]
        let f = try ImageFile.open(path, writable: !o.readOnly)
        return try Qcow2Image(file: f, options: o, chain: &chain)
    }

    // MARK: - Mapping

    var l1Shift: UInt64 { clusterBits + l2Bits }

    func l2Table(at offset: UInt64) throws(VireoError) -> L2Table {
        if let t = l2Cache[offset] { return t }
        guard offset % cs == 0, offset != 0 else {
            throw VireoError(.corrupt, "\(path): L2 table offset \(offset) is not cluster aligned", hint: "the image is damaged; try `vireo disk check -r all` on a copy")
        }
        guard offset < allocEnd, offset + cs <= alignUp(physicalEnd, cs) else {
            throw VireoError(.corrupt, "\(path): L2 table at offset \(offset) lies past the end of the file", hint: "the image is truncated or damaged")
        }
        let raw = try file.readBytes(Int(cs), at: offset, what: "L2 table")
        if l2Cache.count >= l2CacheLimit { try evictL2() }
        let t = L2Table.decode(raw, count: l2Entries, extended: extendedL2)
        l2Cache[offset] = t
        return t
    }

    func evictL2() throws(VireoError) {
        if l2Cache.values.contains(where: { $0.dirty }) { try writeBackMetadata(sync: options.cache == .writeback) }
        l2Cache.removeAll(keepingCapacity: true)
    }

    /// The L2 entry for a guest offset (0 when unmapped).
    func l2Entry(_ v: UInt64) throws(VireoError) -> UInt64 {
        let l1i = Int(v >> l1Shift)
        guard l1i < l1.count else { return 0 }
        let l2off = l1[l1i] & Qcow2Entry.offsetMask
        if l2off == 0 { return 0 }
        let t = try l2Table(at: l2off)
        return t.entries[Int((v >> clusterBits) & UInt64(l2Entries - 1))]
    }

    /// The L2 entry and, with extended L2 entries, its subcluster bitmap (0 otherwise).
    func l2EntryAndBitmap(_ v: UInt64) throws(VireoError) -> (UInt64, UInt64) {
        let l1i = Int(v >> l1Shift)
        guard l1i < l1.count else { return (0, 0) }
        let l2off = l1[l1i] & Qcow2Entry.offsetMask
        if l2off == 0 { return (0, 0) }
        let t = try l2Table(at: l2off)
        let i = Int((v >> clusterBits) & UInt64(l2Entries - 1))
        return (t.entries[i], extendedL2 ? t.bitmaps[i] : 0)
    }

    /// How guest offset `v` is stored, and for how many bytes from `v` (inside its cluster)
    /// that stays so. With extended L2 entries this resolves the subcluster bitmap.
    func kindAt(_ v: UInt64) throws(VireoError) -> (ClusterKind, UInt64) {
        let inCluster = v & (cs - 1)
        let (e, bm) = try l2EntryAndBitmap(v)
        let k = try classify(e)
        if external {
            switch k {
            case .data(let h, _) where h != v - inCluster, .zero(let h) where h != 0 && h != v - inCluster:
                throw VireoError(.corrupt, "\(path): guest cluster at \(v - inCluster) maps to data file offset \(h); with an external data file they must be equal",
                                 hint: "the image is damaged")
            default: break
            }
        }
        guard extendedL2 else { return (k, cs - inCluster) }
        if case .compressed = k { return (k, cs - inCluster) }
        func bad(_ what: String) -> VireoError {
            VireoError(.corrupt, "\(path): L2 entry for guest offset \(v - inCluster) \(what) (bitmap 0x\(String(bm, radix: 16)))",
                       hint: "the image is damaged; try `vireo disk check -r all` on a copy")
        }
        let alloc = bm & Subclusters.allAllocated, zero = bm >> 32
        if alloc & zero != 0 { throw bad("marks subclusters both allocated and zero") }
        if case .unallocated = k, alloc != 0 { throw bad("marks subclusters allocated in an unallocated cluster") }
        // 0 unallocated, 1 allocated, 2 zero
        func state(_ s: UInt64) -> Int { alloc >> s & 1 != 0 ? 1 : (zero >> s & 1 != 0 ? 2 : 0) }
        let s0 = inCluster >> scBits
        let st = state(s0)
        var s = s0 + 1
        while s < UInt64(Subclusters.count) && state(s) == st { s += 1 }
        let len = (s << scBits) - inCluster
        switch st {
        case 1: return (k, len)
        case 2: return (.zero(host: 0), len)
        default: return (.unallocated, len)
        }
    }

    func classify(_ e: UInt64) throws(VireoError) -> ClusterKind {
        if e & Qcow2Entry.compressed != 0 {
            guard header.version >= 2 else { return .unallocated }
            if header.hasExternalData {
                throw VireoError(.corrupt, "\(path): compressed cluster in an image with an external data file", hint: "the image is damaged")
            }
            let x = 62 - (clusterBits - 8)
            let host = e & ((UInt64(1) << x) - 1)
            let sectors = (e >> x) & ((UInt64(1) << (clusterBits - 8)) - 1)
            let len = (sectors + 1) * 512 - (host & 511)
            guard host != 0, host < allocEnd else {
                throw VireoError(.corrupt, "\(path): compressed cluster at offset \(host) lies past the end of the file", hint: "the image is damaged")
            }
            return .compressed(host: host, length: Int(len))
        }
        if e & Qcow2Entry.l2Reserved != 0 {
            throw VireoError(.corrupt, "\(path): L2 entry 0x\(String(e, radix: 16)) has reserved bits set", hint: "the image is damaged; try `vireo disk check -r all` on a copy")
        }
        let host = e & Qcow2Entry.offsetMask
        if extendedL2 && e & Qcow2Entry.zero != 0 {
            throw VireoError(.corrupt, "\(path): L2 entry 0x\(String(e, radix: 16)) sets bit 0, which is reserved with extended L2 entries",
                             hint: "the image is damaged; try `vireo disk check -r all` on a copy")
        }
        if header.version >= 3 && e & Qcow2Entry.zero != 0 { return .zero(host: host) }
        // With an external data file, guest cluster 0 lives at offset 0: COPIED marks it allocated.
        if host == 0 && header.hasExternalData && e & Qcow2Entry.copied != 0 { return .data(host: 0, copied: true) }
        if host == 0 { return .unallocated }
        guard host % cs == 0 else {
            throw VireoError(.corrupt, "\(path): data cluster offset \(host) is not cluster aligned", hint: "the image is damaged; try `vireo disk check -r all` on a copy")
        }
        guard header.hasExternalData || host < allocEnd else {
            throw VireoError(.corrupt, "\(path): data cluster at offset \(host) lies past the end of the file (\(physicalEnd) bytes)",
                             hint: "the image is truncated or damaged")
        }
        return .data(host: host, copied: e & Qcow2Entry.copied != 0)
    }

    /// The longest run from `v` (at most `maxLen` bytes) with one kind of storage and, for data, contiguous host offsets.
    func mapRun(_ v: UInt64, _ maxLen: UInt64) throws(VireoError) -> (ClusterKind, UInt64) {
        let (k0, l0) = try kindAt(v)
        let inCluster = v & (cs - 1)
        var len = min(l0, maxLen)
        if case .compressed = k0 { return (k0, len) }
        while len < maxLen {
            let (k, l) = try kindAt(v + len)
            switch (k0, k) {
            case (.unallocated, .unallocated): break
            case (.zero, .zero): break
            case let (.data(h0, c0), .data(h, c)) where c == c0 && h &+ ((v + len) & (cs - 1)) == h0 &+ inCluster &+ len: break
            default: return (k0, len)
            }
            len += min(l, maxLen - len)
        }
        return (k0, len)
    }

    // MARK: - Read

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(VireoError) {
        try checkRange(offset, buffer.count)
        lock.lock(); defer { lock.unlock() }
        try checkOpen()
        try readLocked(into: buffer, at: offset)
    }

    /// The guest view of `buffer.count` bytes at `offset` (the caller holds the lock).
    func readLocked(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(VireoError) {
        var pos = 0
        while pos < buffer.count {
            let v = offset + UInt64(pos)
            let (kind, len) = try mapRun(v, UInt64(buffer.count - pos))
            let part = UnsafeMutableRawBufferPointer(rebasing: buffer[pos..<pos + Int(len)])
            switch kind {
            case .unallocated:
                try readFromBacking(part, at: v)
            case .zero:
                part.initializeMemory(as: UInt8.self, repeating: 0)
            case .data(let host, _):
                try dataIO.read(into: part, at: host + (v & (cs - 1)))
            case .compressed(let host, let clen):
                let data = try decompressCluster(host: host, length: clen)
                let start = Int(v & (cs - 1))
                data.withUnsafeBytes { src in
                    // SAFETY: start+len <= cs == data.count; part has len bytes.
                    part.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[start..<start + Int(len)]))
                }
            }
            pos += Int(len)
        }
    }

    func decompressCluster(host: UInt64, length: Int) throws(VireoError) -> [UInt8] {
        if let (h, d) = decompressedCache, h == host { return d }
        let avail = physicalEnd > host ? Int(min(UInt64(length), physicalEnd - host)) : 0
        let input = try file.readBytes(avail, at: host, what: "compressed cluster")
        var out = [UInt8](repeating: 0, count: Int(cs))
        var failure: VireoError?
        input.withUnsafeBytes { i in
            out.withUnsafeMutableBytes { o in
                do throws(VireoError) {
                    switch header.compression {
                    case .zlib: try Zlib.inflate(i, into: o, windowBits: Zlib.qcow2WindowBits, what: "\(path): compressed cluster at \(host)")
                    case .zstd: try Zstd.decompress(i, into: o, what: "\(path): compressed cluster at \(host)")
                    }
                } catch { failure = error }
            }
        }
        if let failure { throw failure }
        decompressedCache = (host, out)
        return out
    }

    func checkOpen() throws(VireoError) {
        if closed { throw VireoError(.invalidArgument, "\(path) is closed") }
    }

    func checkWritable() throws(VireoError) {
        try checkOpen()
        if isReadOnly { throw VireoError(.permissionDenied, "\(path) is open read-only") }
    }

    // MARK: - Status

    public func blockStatus(at offset: UInt64, maxLength: UInt64) throws(VireoError) -> BlockStatus {
        lock.lock(); defer { lock.unlock() }
        try checkOpen()
        guard offset < virtualSize else { return BlockStatus(state: .zero, length: 0) }
        let (kind, len) = try mapRun(offset, min(maxLength, virtualSize - offset))
        switch kind {
        case .unallocated: return BlockStatus(state: .unallocated, length: len)
        case .zero: return BlockStatus(state: .zero, length: len)
        case .data(let h, _): return BlockStatus(state: .data, length: len, hostOffset: h + (offset & (cs - 1)))
        case .compressed: return BlockStatus(state: .data, length: len, compressed: true)
        }
    }

    // MARK: - Write

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(VireoError) {
        try checkRange(offset, buffer.count)
        lock.lock(); defer { lock.unlock() }
        try checkWritable()
        try markDirtyIfLazy()
        decompressedCache = nil
        if extendedL2 { try writeSubclusters(buffer, at: offset); return }
        // Runs of contiguous host writes are merged into one pwrite.
        var runHost: UInt64 = 0, runSrc = 0, runLen = 0
        func flushRun() throws(VireoError) {
            if runLen > 0 {
                try dataIO.write(UnsafeRawBufferPointer(rebasing: buffer[runSrc..<runSrc + runLen]), at: runHost)
                if !external { noteWritten(runHost + UInt64(runLen)) }
                runLen = 0
            }
        }
        var pos = 0
        while pos < buffer.count {
            let v = offset + UInt64(pos)
            let inCluster = v & (cs - 1)
            let n = Int(min(cs - inCluster, UInt64(buffer.count - pos)))
            let (table, idx) = try l2ForWrite(v)
            let e = table.entries[idx]
            let kind = try classify(e)
            var target: UInt64
            if case .data(let host, true) = kind {
                try checkNoOverlap(host)
                target = host + inCluster
            } else {
                let (newHost, fresh) = try allocateData(v - inCluster)
                if n < Int(cs) {
                    // Fill the rest of the new cluster with the old contents (copy-on-write).
                    let oldIsZero: Bool
                    switch kind {
                    case .zero: oldIsZero = true
                    case .unallocated: oldIsZero = backingImage == nil || v >= (backingImage?.virtualSize ?? 0)
                    default: oldIsZero = false
                    }
                    if !(oldIsZero && fresh) {
                        try flushRun()
                        try copyOnWrite(kind: kind, v: v - inCluster, newHost: newHost, newData: UnsafeRawBufferPointer(rebasing: buffer[pos..<pos + n]), at: Int(inCluster))
                        table.entries[idx] = newHost | Qcow2Entry.copied
                        table.dirty = true
                        releaseOld(kind)
                        pos += n
                        continue
                    }
                }
                table.entries[idx] = newHost | Qcow2Entry.copied
                table.dirty = true
                releaseOld(kind)
                target = newHost + inCluster
            }
            if runLen > 0 && runHost + UInt64(runLen) == target && runSrc + runLen == pos {
                runLen += n
            } else {
                try flushRun()
                runHost = target; runSrc = pos; runLen = n
            }
            pos += n
        }
        try flushRun()
    }

    /// Refuses to write guest data over the image's own metadata (a hostile or corrupt L2 entry).
    func checkNoOverlap(_ host: UInt64) throws(VireoError) {
        if external { return }   // data clusters live in the data file, not among the metadata
        func inRange(_ start: UInt64, _ bytes: UInt64) -> Bool { bytes > 0 && host >= start / cs * cs && host < alignUp(start &+ bytes, cs) }
        var bad = host < cs || inRange(header.l1TableOffset, UInt64(l1.count) * 8)
            || inRange(header.refcountTableOffset, UInt64(header.refcountTableClusters) * cs)
            || (header.nbSnapshots > 0 && inRange(header.snapshotsOffset, snapshotTableBytes))
        if !bad { bad = refBlocks[host] != nil || l2Cache[host] != nil }
        if !bad {
            let rc = try refcount(host / cs)
            bad = rc != 1
        }
        if bad {
            throw VireoError(.corrupt, "\(path): a data cluster at offset \(host) overlaps the image's metadata or has a wrong refcount; refusing to write",
                             hint: "the image is corrupt; inspect it with `vireo disk check` and repair a copy with `check -r all`")
        }
    }

    func noteWritten(_ end: UInt64) {
        if end > physicalEnd { physicalEnd = end }
    }

    /// Writes a full cluster at `newHost`: old contents of guest cluster `v` overlaid with `newData` at `at`.
    func copyOnWrite(kind: ClusterKind, v: UInt64, newHost: UInt64, newData: UnsafeRawBufferPointer, at: Int) throws(VireoError) {
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(cs), alignment: 4096)
        defer { buf.deallocate() }
        switch kind {
        case .zero:
            buf.initializeMemory(as: UInt8.self, repeating: 0)
        case .unallocated:
            let avail = v < virtualSize ? Int(min(cs, virtualSize - v)) : 0
            buf.initializeMemory(as: UInt8.self, repeating: 0)
            if avail > 0 { try readFromBacking(UnsafeMutableRawBufferPointer(rebasing: buf[0..<avail]), at: v) }
        case .data(let host, _):
            try dataIO.read(into: buf, at: host)
        case .compressed(let host, let len):
            let d = try decompressCluster(host: host, length: len)
            d.withUnsafeBytes { s in buf.copyMemory(from: s) }
            decompressedCache = nil
        }
        // SAFETY: at + newData.count <= cs (the caller splits writes at cluster boundaries).
        UnsafeMutableRawBufferPointer(rebasing: buf[at..<at + newData.count]).copyMemory(from: newData)
        try dataIO.write(UnsafeRawBufferPointer(buf), at: newHost)
        if !external { noteWritten(newHost + cs) }
    }

    /// A host cluster for guest cluster `v`: with an external data file, `v` itself (data clusters
    /// are not refcounted); otherwise a newly allocated cluster of the image file.
    func allocateData(_ v: UInt64) throws(VireoError) -> (UInt64, fresh: Bool) {
        if external { return (v, false) }
        return try allocateCluster()
    }

    /// Queues the clusters a replaced L2 entry referenced for release after the next metadata write-back.
    func releaseOld(_ kind: ClusterKind) {
        if external { return }   // data-file clusters are not refcounted
        switch kind {
        case .data(let h, _): pendingFree.append(h / cs)
        case .zero(let h) where h != 0: pendingFree.append(h / cs)
        case .compressed(let h, let len):
            let first = h / cs, last = (h + UInt64(len) - 1) / cs
            for c in first...last { pendingFree.append(c) }
        default: break
        }
    }

    /// The L2 table for guest offset `v`, made private to the active L1 (allocated or copied as needed).
    func l2ForWrite(_ v: UInt64) throws(VireoError) -> (L2Table, Int) {
        let l1i = Int(v >> l1Shift)
        guard l1i < l1.count else { throw VireoError(.internalError, "\(path): offset \(v) beyond the L1 table") }
        let idx = Int((v >> clusterBits) & UInt64(l2Entries - 1))
        let e = l1[l1i]
        let old = e & Qcow2Entry.offsetMask
        if old != 0 && e & Qcow2Entry.copied != 0 {
            return (try l2Table(at: old), idx)
        }
        let src: L2Table? = old != 0 ? try l2Table(at: old) : nil
        let entries = src?.entries ?? [UInt64](repeating: 0, count: l2Entries)
        let bitmaps = extendedL2 ? (src?.bitmaps ?? [UInt64](repeating: 0, count: l2Entries)) : []
        let (host, _) = try allocateCluster()
        let t = L2Table(entries, bitmaps: bitmaps)
        t.dirty = true
        if l2Cache.count >= l2CacheLimit { try evictL2() }
        l2Cache[host] = t
        l1[l1i] = host | Qcow2Entry.copied
        l1Dirty = true
        if old != 0 { pendingFree.append(old / cs) }
        return (t, idx)
    }

    // MARK: - Discard / zero

    public func discard(offset: UInt64, length: UInt64) throws(VireoError) {
        try zeroOrDiscard(offset: offset, length: length, zero: false)
    }

    public func writeZeroes(offset: UInt64, length: UInt64) throws(VireoError) {
        try zeroOrDiscard(offset: offset, length: length, zero: true)
    }

    func zeroOrDiscard(offset: UInt64, length: UInt64, zero: Bool) throws(VireoError) {
        guard length > 0 else { return }
        if header.dataFileRaw {
            // The data file must stay a faithful raw image: zeroes are written, discards dropped.
            guard zero else { return }
            let (endRaw, o) = offset.addingReportingOverflow(length)
            guard !o, offset <= virtualSize else { throw VireoError(.outOfRange, "range \(offset)+\(length) is past the end of \(path)") }
            var p = offset
            let end = min(endRaw, virtualSize)
            while p < end {
                let n = min(end - p, 1 << 20)
                try writeZeroBytes(p, n)
                p += n
            }
            return
        }
        let (endRaw, o) = offset.addingReportingOverflow(length)
        guard !o, offset <= virtualSize else { throw VireoError(.outOfRange, "range \(offset)+\(length) is past the end of \(path)") }
        let end = min(endRaw, virtualSize)
        // Partial clusters at either end: zeroes are written as data, discards are dropped.
        let firstFull = alignUp(offset, cs)
        let lastFull = end == virtualSize ? end : end & ~(cs - 1)
        if zero {
            if firstFull > offset { try writeZeroBytes(offset, min(firstFull, end) - offset) }
            if lastFull < end && lastFull >= firstFull { try writeZeroBytes(lastFull, end - lastFull) }
        }
        guard firstFull < lastFull else { return }
        lock.lock(); defer { lock.unlock() }
        try checkWritable()
        try markDirtyIfLazy()
        decompressedCache = nil
        var v = firstFull
        while v < lastFull {
            let l1i = Int(v >> l1Shift)
            let e = try l2Entry(v)
            let kind = try classify(e)
            // Discard with a backing file must still mask the backing data: use a zero cluster.
            let newEntry: UInt64 = (zero || backingImage != nil) ? Qcow2Entry.zero : 0
            var skip = false
            // Extended L2: a zero cluster is an unallocated entry whose subclusters all read as zero.
            let newBitmap: UInt64 = newEntry != 0 ? Subclusters.allZero : 0
            if extendedL2 {
                let (_, bm) = try l2EntryAndBitmap(v)
                if case .unallocated = kind {
                    skip = bm == newBitmap || (newBitmap == 0 && l1[l1i] & Qcow2Entry.offsetMask == 0)
                }
            } else {
                switch kind {
                case .unallocated: skip = newEntry == 0 || (l1[l1i] & Qcow2Entry.offsetMask == 0 && backingImage == nil)
                case .zero(let h): skip = h == 0
                default: break
                }
            }
            if !skip {
                if header.version < 3 {
                    try writeZeroBytes(v, cs)
                } else {
                    let (t, idx) = try l2ForWrite(v)
                    if extendedL2 {
                        t.entries[idx] = 0
                        t.bitmaps[idx] = newBitmap
                    } else {
                        t.entries[idx] = newEntry
                    }
                    t.dirty = true
                    releaseOld(kind)
                }
            }
            v += cs
        }
    }

    private func writeZeroBytes(_ offset: UInt64, _ len: UInt64) throws(VireoError) {
        guard len > 0 else { return }
        let z = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(len), alignment: 8)
        defer { z.deallocate() }
        z.initializeMemory(as: UInt8.self, repeating: 0)
        try write(UnsafeRawBufferPointer(z), at: offset)
    }

    // MARK: - Flush / close

    public func flush() throws(VireoError) {
        lock.lock(); defer { lock.unlock() }
        try checkOpen()
        if isReadOnly { return }
        try writeBackMetadata(sync: options.cache == .writeback)
    }

    public func close() throws(VireoError) {
        lock.lock(); defer { lock.unlock() }
        if closed { return }
        defer {
            closed = true
            file.close()
            dataFile?.close()
            if let b = backingImage { try? b.close() }
        }
        if !isReadOnly {
            let sync = options.cache == .writeback
            try writeBackMetadata(sync: sync)
            // A second pass applies the frees queued by the first.
            try writeBackMetadata(sync: sync)
            if markedDirty {
                header.incompatibleFeatures &= ~Qcow2Header.Incompatible.dirty
                try writeHeader()
                try file.sync()
                markedDirty = false
            }
        }
    }

    func markDirtyIfLazy() throws(VireoError) {
        guard !markedDirty, header.compatibleFeatures & Qcow2Header.Compatible.lazyRefcounts != 0 else { return }
        header.incompatibleFeatures |= Qcow2Header.Incompatible.dirty
        try writeHeader()
        try file.sync()
        markedDirty = true
    }

    func writeHeader() throws(VireoError) {
        guard header.serializedLength() <= Int(cs) else {
            throw VireoError(.invalidArgument, "\(path): header and backing file name do not fit in one \(cs)-byte cluster",
                             hint: "use a shorter backing file name or a larger cluster size")
        }
        let bytes = header.serialize(clusterSize: cs)
        let n = min(bytes.count, Int(alignUp(UInt64(header.serializedLength()), 512)))
        try file.writeBytes(Array(bytes[0..<n]), at: 0)
        noteWritten(UInt64(n))
    }
}

extension Qcow2Image {
    /// Gives up (false) or takes back (true) this image file's write locks; the backing chain,
    /// read-only, keeps its shared read locks. For the hand-over of a live migration.
    public func setWriteLocksHeld(_ held: Bool) throws(VireoError) {
        if held { try FileLocking.acquire(fd: file.fd, path: path, mode: .writer) } else { FileLocking.release(fd: file.fd) }
    }
}
