import VireoSupport

public struct Qcow2CreateOptions: Sendable {
    public var clusterSize: UInt64 = 65536
    public var preallocation: Preallocation = .off
    public var backingFile: String?
    public var backingFormat: DiskImageFormat?
    public var lazyRefcounts = false
    public var refcountBits: UInt64 = 16
    /// How `writeCompressed` (convert -c) encodes clusters; zstd sets incompatible feature bit 3.
    public var compressionType: Qcow2Header.CompressionType = .zlib
    /// Extended L2 entries (`extended_l2=on`): 32 subclusters per cluster; clusters of 16 KiB or more.
    public var extendedL2 = false
    /// External data file (`data_file`), created beside the image; relative names are relative to it.
    public var dataFile: String?
    /// `data_file_raw=on`: the data file stays a raw image of the disk (metadata is preallocated).
    public var dataFileRaw = false
    public init(clusterSize: UInt64 = 65536, preallocation: Preallocation = .off, backingFile: String? = nil,
                backingFormat: DiskImageFormat? = nil, lazyRefcounts: Bool = false, refcountBits: UInt64 = 16) {
        self.clusterSize = clusterSize; self.preallocation = preallocation; self.backingFile = backingFile
        self.backingFormat = backingFormat; self.lazyRefcounts = lazyRefcounts; self.refcountBits = refcountBits
    }
}

extension Qcow2Image {
    /// Creates a qcow2 v3 image. `size` nil takes the backing file's size.
    public static func create(path: String, size: UInt64?, options o: Qcow2CreateOptions = Qcow2CreateOptions(),
                              openOptions: OpenOptions = OpenOptions()) throws(VireoError) {
        let cs = o.clusterSize
        guard cs >= 512, cs <= 2 << 20, cs & (cs - 1) == 0 else {
            throw VireoError(.invalidArgument, "cluster size \(cs) is invalid", hint: "use a power of two from 512 to 2M")
        }
        guard [1, 2, 4, 8, 16, 32, 64].contains(o.refcountBits) else {
            throw VireoError(.invalidArgument, "refcount_bits=\(o.refcountBits) is invalid", hint: "use a power of two from 1 to 64")
        }
        if o.extendedL2 && cs < 16384 {
            throw VireoError(.invalidArgument, "extended L2 entries need a cluster size of at least 16K (got \(cs))",
                             hint: "use -o cluster_size=64K (the default) or larger")
        }
        if o.dataFileRaw && o.dataFile == nil {
            throw VireoError(.invalidArgument, "data_file_raw needs data_file", hint: "add -o data_file=NAME")
        }
        if o.dataFileRaw && o.backingFile != nil {
            throw VireoError(.invalidArgument, "data_file_raw cannot be combined with a backing file (the data file would not be a complete raw image)")
        }
        if let d = o.dataFile, d.isEmpty || d.utf8.count > 4096 {
            throw VireoError(.invalidArgument, "data_file name must be 1..4096 bytes")
        }
        var virtualSize = size
        if let b = o.backingFile {
            let resolved = try DiskImage.resolveBacking(name: b, of: path, policy: openOptions.backingPolicy)
            let img = try DiskImage.open(path: resolved, format: o.backingFormat, readOnly: true, options: openOptions)
            if virtualSize == nil { virtualSize = img.virtualSize }
            try img.close()
        }
        guard let size = virtualSize else {
            throw VireoError(.invalidArgument, "no image size given", hint: "give a size such as 10G, or a backing file with -b")
        }
        let bits = UInt32(cs.trailingZeroBitCount)
        var h = Qcow2Header()
        h.version = 3
        h.clusterBits = bits
        h.size = size
        h.refcountOrder = UInt32(o.refcountBits.trailingZeroBitCount)
        h.compatibleFeatures = o.lazyRefcounts ? Qcow2Header.Compatible.lazyRefcounts : 0
        h.compressionType = o.compressionType.rawValue
        if o.compressionType != .zlib { h.incompatibleFeatures |= Qcow2Header.Incompatible.compressionType }
        if o.extendedL2 { h.incompatibleFeatures |= Qcow2Header.Incompatible.extendedL2 }
        if let d = o.dataFile {
            h.dataFile = d
            h.incompatibleFeatures |= Qcow2Header.Incompatible.externalData
            if o.dataFileRaw { h.autoclearFeatures |= Qcow2Header.Autoclear.rawExternal }
        }
        if let b = o.backingFile {
            h.backingFile = b
            h.backingFormat = o.backingFormat?.qemuName
        }
        guard h.serializedLength() <= Int(cs) else {
            throw VireoError(.invalidArgument, "the backing file name is too long for a \(cs)-byte cluster", hint: "use a larger cluster size or a shorter name")
        }
        if let b = o.backingFile, b.utf8.count > 1023 {
            throw VireoError(.invalidArgument, "backing file name longer than 1023 bytes")
        }
        let l2Entries = cs / (o.extendedL2 ? 16 : 8)
        let (perL1, ovf) = cs.multipliedReportingOverflow(by: l2Entries)
        let l1Size = ovf ? 1 : divRoundUp(size, perL1)
        guard l1Size * 8 <= maxL1Bytes else {
            throw VireoError(.invalidArgument, "a \(ByteSize.format(size)) disk needs an L1 table larger than \(maxL1Bytes >> 20) MiB at \(cs)-byte clusters",
                             hint: "use a larger cluster size")
        }
        let l1C = divRoundUp(l1Size * 8, cs)
        let refsPerBlock = cs * 8 / o.refcountBits
        var rbC: UInt64 = 1, rtC: UInt64 = 1
        while true {
            let total = 1 + rtC + rbC + l1C
            let nrb = divRoundUp(total, refsPerBlock)
            let nrt = max(1, divRoundUp(nrb * 8, cs))
            if nrb == rbC && nrt == rtC { break }
            rbC = nrb; rtC = nrt
        }
        let total = 1 + rtC + rbC + l1C
        h.refcountTableOffset = cs
        h.refcountTableClusters = UInt32(rtC)
        h.l1TableOffset = (1 + rtC + rbC) * cs
        h.l1Size = UInt32(l1Size)

        if let d = o.dataFile {
            let df = try ImageFile.create(DiskImage.resolveDataFilePath(d, of: path))
            defer { df.close() }
            try df.truncate(to: size)
        }
        let f = try ImageFile.create(path)
        defer { f.close() }
        try f.truncate(to: total * cs)
        var table = [UInt64](repeating: 0, count: Int(rtC * cs / 8))
        for i in 0..<rbC { table[Int(i)] = (1 + rtC + i) * cs }
        try f.writeBytes(encodeBE64Table(table, paddedTo: Int(rtC * cs)), at: cs)
        for i in 0..<rbC {
            var blk = [UInt8](repeating: 0, count: Int(cs))
            let first = i * refsPerBlock
            var c = first
            while c < min(total, first + refsPerBlock) {
                Qcow2Image.setRef(&blk, Int(c - first), bits: o.refcountBits, 1)
                c += 1
            }
            try f.writeBytes(blk, at: (1 + rtC + i) * cs)
        }
        let hb = h.serialize(clusterSize: cs)
        try f.writeBytes(hb, at: 0)
        try f.sync()

        // A raw data file needs every guest cluster mapped (qemu-img does the same).
        if o.preallocation != .off || o.dataFileRaw {
            var chain: [String] = [canonicalPath(path)]
            var oo = openOptions
            oo.readOnly = false
            oo.openBacking = false
            oo.backingPolicy = .any
            let img = try Qcow2Image(file: try ImageFile.open(path, writable: true), options: oo, chain: &chain)
            try img.preallocate(o.preallocation == .off ? .metadata : o.preallocation)
            try img.close()
        }
    }

    /// Maps every guest cluster to a host cluster (metadata), then reserves (falloc) or writes (full) them.
    func preallocate(_ mode: Preallocation) throws(VireoError) {
        lock.lock(); defer { lock.unlock() }
        let perL2 = cs * UInt64(l2Entries)
        var runs: [(UInt64, UInt64)] = []
        var v: UInt64 = 0
        while v < virtualSize {
            let (t, _) = try l2ForWrite(v)
            let n = min(UInt64(l2Entries), divRoundUp(virtualSize - v, cs))
            // Only unmapped entries are allocated; with a data file, clusters sit at their guest offsets.
            let base = external ? v : try allocateContiguous(n)
            runs.append((base, n * cs))
            for i in 0..<Int(n) where t.entries[i] & Qcow2Entry.offsetMask == 0 {
                t.entries[i] = (base + UInt64(i) * cs) | Qcow2Entry.copied
                if extendedL2 { t.bitmaps[i] = Subclusters.allAllocated }
            }
            t.dirty = true
            v += perL2
        }
        // Data before the metadata that maps it.
        for (off, len) in runs {
            switch mode {
            case .off, .metadata: break
            case .falloc: try dataIO.fallocate(offset: off, length: len); if !external { noteWritten(off + len) }
            case .full: try dataIO.writeZeros(offset: off, length: len); if !external { noteWritten(off + len) }
            }
        }
        try writeBackMetadata(sync: true)
    }
}
