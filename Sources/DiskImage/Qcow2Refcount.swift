import VireoSupport

// Refcounts, cluster allocation and ordered metadata write-back.
extension Qcow2Image {
    var refBits: UInt64 { header.refcountBits }
    var refsPerBlock: UInt64 { cs * 8 / refBits }
    var refMax: UInt64 { refBits == 64 ? UInt64.max : (UInt64(1) << refBits) - 1 }

    static func getRef(_ b: [UInt8], _ i: Int, bits: UInt64) -> UInt64 {
        switch bits {
        case 64: return be64(b, i * 8)
        case 32: return UInt64(be32(b, i * 4))
        case 16: return UInt64(be16(b, i * 2))
        case 8: return UInt64(b[i])
        default:
            let per = Int(8 / bits)
            let shift = UInt64(i % per) * bits
            return (UInt64(b[i / per]) >> shift) & ((1 << bits) - 1)
        }
    }

    static func setRef(_ b: inout [UInt8], _ i: Int, bits: UInt64, _ v: UInt64) {
        switch bits {
        case 64: put64(&b, i * 8, v)
        case 32: put32(&b, i * 4, UInt32(truncatingIfNeeded: v))
        case 16: put16(&b, i * 2, UInt16(truncatingIfNeeded: v))
        case 8: b[i] = UInt8(truncatingIfNeeded: v)
        default:
            let per = Int(8 / bits)
            let shift = UInt64(i % per) * bits
            let mask = UInt8(truncatingIfNeeded: ((1 << bits) - 1) << shift)
            b[i / per] = (b[i / per] & ~mask) | (UInt8(truncatingIfNeeded: v << shift) & mask)
        }
    }

    func refBlock(at off: UInt64) throws(VireoError) -> RefBlock {
        if let b = refBlocks[off] { return b }
        guard off % cs == 0 else {
            throw VireoError(.corrupt, "\(path): refcount block offset \(off) is not cluster aligned", hint: "repair a copy with `vireo disk check -r all`")
        }
        guard off + cs <= alignUp(physicalEnd, cs) else {
            throw VireoError(.corrupt, "\(path): refcount block at \(off) lies past the end of the file", hint: "the image is truncated; repair a copy with `vireo disk check -r all`")
        }
        let b = RefBlock(try file.readBytes(Int(cs), at: off, what: "refcount block"))
        refBlocks[off] = b
        return b
    }

    func refcount(_ cluster: UInt64) throws(VireoError) -> UInt64 {
        let t = cluster / refsPerBlock
        guard t < UInt64(refTable.count) else { return 0 }
        let off = refTable[Int(t)] & Qcow2Entry.offsetMask
        if off == 0 { return 0 }
        let b = try refBlock(at: off)
        return Self.getRef(b.bytes, Int(cluster % refsPerBlock), bits: refBits)
    }

    func setRefcount(_ cluster: UInt64, _ value: UInt64) throws(VireoError) {
        guard value <= refMax else {
            throw VireoError(.corrupt, "\(path): refcount of cluster \(cluster) would overflow (\(refBits)-bit refcounts)",
                             hint: "too many snapshots share this cluster; delete some snapshots")
        }
        let b = try ensureRefBlock(Int(cluster / refsPerBlock))
        Self.setRef(&b.bytes, Int(cluster % refsPerBlock), bits: refBits, value)
        b.dirty = true
    }

    func addRef(_ cluster: UInt64, _ delta: Int) throws(VireoError) {
        let rc = try refcount(cluster)
        if delta >= 0 {
            let (n, o) = rc.addingReportingOverflow(UInt64(delta))
            guard !o else { throw VireoError(.corrupt, "\(path): refcount overflow on cluster \(cluster)") }
            try setRefcount(cluster, n)
        } else {
            guard rc >= UInt64(-delta) else {
                throw VireoError(.corrupt, "\(path): refcount of cluster \(cluster) would drop below zero",
                                 hint: "the image's metadata overlaps; run `vireo disk check` and repair a copy")
            }
            try setRefcount(cluster, rc - UInt64(-delta))
        }
    }

    func ensureRefBlock(_ t: Int) throws(VireoError) -> RefBlock {
        if t >= refTable.count { try growRefTable(cover: t) }
        let off = refTable[t] & Qcow2Entry.offsetMask
        if off != 0 { return try refBlock(at: off) }
        let newOff = allocEnd
        allocEnd += cs
        let b = RefBlock([UInt8](repeating: 0, count: Int(cs)))
        b.isNew = true
        b.dirty = true
        refBlocks[newOff] = b
        refTable[t] = newOff
        refTableDirty = true
        try setRefcount(newOff / cs, 1)
        return b
    }

    /// Moves the refcount table to a larger one at the end of the file (crash-safe: the header
    /// switches to the new table only after it and its blocks are durable).
    func growRefTable(cover t: Int) throws(VireoError) {
        let endAfter = allocEnd / cs + 64
        var entries = max(UInt64(t + 1), UInt64(refTable.count) * 2, endAfter / refsPerBlock + 2)
        var clusters = divRoundUp(entries * 8, cs)
        entries = clusters * cs / 8
        guard clusters * cs <= Self.maxRefTableBytes else {
            throw VireoError(.unsupported, "\(path): the refcount table would exceed \(Self.maxRefTableBytes >> 20) MiB",
                             hint: "use a larger cluster size for images this big")
        }
        let oldOff = header.refcountTableOffset, oldClusters = UInt64(header.refcountTableClusters)
        let tableOff = allocEnd
        allocEnd += clusters * cs
        refTable += [UInt64](repeating: 0, count: Int(entries) - refTable.count)
        for c in tableOff / cs ..< tableOff / cs + clusters { try setRefcount(c, 1) }
        clusters = divRoundUp(UInt64(refTable.count) * 8, cs)
        header.refcountTableOffset = tableOff
        header.refcountTableClusters = UInt32(clusters)
        refTableDirty = true
        try writeRefcounts(sync: true)
        if options.cache == .writeback { try file.sync() }
        try writeHeader()
        if options.cache == .writeback { try file.sync() }
        for c in oldOff / cs ..< oldOff / cs + oldClusters { pendingFree.append(c) }
    }

    /// A free cluster: reused from inside the file, or fresh at its end. `fresh` clusters read as zero.
    func allocateCluster() throws(VireoError) -> (UInt64, fresh: Bool) {
        let endC = allocEnd / cs
        var c = freeHint
        while c < endC {
            if try refcount(c) == 0 { break }
            c += 1
        }
        if c < endC {
            freeHint = c + 1
            try setRefcount(c, 1)
            return (c * cs, false)
        }
        let off = allocEnd
        allocEnd += cs
        freeHint = allocEnd / cs
        try setRefcount(off / cs, 1)
        return (off, true)
    }

    /// `n` contiguous fresh clusters at the end of the file.
    func allocateContiguous(_ n: UInt64) throws(VireoError) -> UInt64 {
        let off = allocEnd
        allocEnd += n * cs
        for c in off / cs ..< off / cs + n { try setRefcount(c, 1) }
        return off
    }

    /// Writes refcount blocks (new ones first, behind a barrier) and the refcount table.
    func writeRefcounts(sync: Bool) throws(VireoError) {
        let newBlocks = refBlocks.filter { $0.value.isNew && $0.value.dirty }
        if !newBlocks.isEmpty {
            for (off, b) in newBlocks.sorted(by: { $0.key < $1.key }) {
                try file.writeBytes(b.bytes, at: off); noteWritten(off + cs)
                b.dirty = false; b.isNew = false
            }
            if sync { try file.sync() }
        }
        for (off, b) in refBlocks where b.dirty {
            try file.writeBytes(b.bytes, at: off); noteWritten(off + cs)
            b.dirty = false
        }
        if refTableDirty {
            let bytes = encodeBE64Table(refTable, paddedTo: Int(UInt64(header.refcountTableClusters) * cs))
            try file.writeBytes(bytes, at: header.refcountTableOffset)
            noteWritten(header.refcountTableOffset + UInt64(bytes.count))
            refTableDirty = false
        }
    }

    /// Ordered write-back: refcounts (and guest data) durable before the L2 entries that rely on
    /// them, L2 tables durable before the L1 entries that name them, and only then are replaced
    /// clusters released.
    func writeBackMetadata(sync: Bool) throws(VireoError) {
        let lazy = markedDirty
        let anyL2 = l2Cache.values.contains { $0.dirty }
        let anyRef = refTableDirty || refBlocks.values.contains { $0.dirty }
        if !anyL2 && !anyRef && !l1Dirty && pendingFree.isEmpty {
            if sync { try dataFile?.sync(); try file.sync() }
            return
        }
        if physicalEnd < allocEnd {
            try file.truncate(to: allocEnd)
            physicalEnd = allocEnd
        }
        try writeRefcounts(sync: sync && !lazy)
        // Guest data (in the data file too) is durable before the L2 entries that map it.
        if sync { try dataFile?.sync() }
        if sync && !lazy && anyL2 { try file.sync() }
        for (off, t) in l2Cache where t.dirty {
            try file.writeBytes(t.encode(size: Int(cs)), at: off)
            t.dirty = false
        }
        if l1Dirty {
            if sync { try file.sync() }
            try file.writeBytes(encodeBE64Table(l1, paddedTo: 0), at: header.l1TableOffset)
            l1Dirty = false
        }
        if sync { try file.sync() }
        if !pendingFree.isEmpty {
            let frees = pendingFree
            pendingFree = []
            for c in frees {
                let rc = try refcount(c)
                guard rc > 0 else { continue }
                try setRefcount(c, rc - 1)
                if rc == 1 {
                    freeHint = min(freeHint, c)
                    l2Cache.removeValue(forKey: c * cs)
                    decompressedCache = nil
                    file.punchHole(offset: c * cs, length: cs)
                }
            }
            // The lowered refcounts go out now too: a flush leaves no leaked cluster behind
            // even if the process is killed before its next write-back.
            try writeRefcounts(sync: sync && !lazy)
            if sync && !lazy { try file.sync() }
        }
    }
}
