import VireoSupport

// Whole-image operations on qcow2: resize, backing file change, compressed writes, emptying.
extension Qcow2Image {
    /// Grows the disk, or shrinks it when nothing is stored past the new end and there are no snapshots.
    public func resize(to newSize: UInt64) throws(VireoError) {
        lock.lock(); defer { lock.unlock() }
        try checkWritable()
        let perL1 = cs * UInt64(l2Entries)
        if newSize < virtualSize {
            guard snapshots.isEmpty else {
                throw VireoError(.unsupported, "cannot shrink \(path) while it has internal snapshots", hint: "delete the snapshots first")
            }
            var v = alignUp(newSize, cs)
            while v < virtualSize {
                let (k, len) = try mapRun(v, virtualSize - v)
                if k != .unallocated && k != .zero(host: 0) {
                    throw VireoError(.conflict, "cannot shrink \(path) to \(newSize) bytes: data is stored at offset \(v), past the new end",
                                     hint: "discard that data inside the guest first; shrinking would destroy it")
                }
                v += len
            }
            try writeBackMetadata(sync: true)
            header.size = newSize
            try writeHeader()
            try file.sync()
            return
        }
        let need = Int(divRoundUp(newSize, perL1))
        guard UInt64(need) * 8 <= Self.maxL1Bytes else {
            throw VireoError(.invalidArgument, "\(ByteSize.format(newSize)) needs an L1 table larger than \(Self.maxL1Bytes >> 20) MiB", hint: "use a larger cluster size")
        }
        try writeBackMetadata(sync: true)
        if need > l1.count {
            let n = divRoundUp(UInt64(need) * 8, cs)
            let off = try allocateContiguous(n)
            var newL1 = l1
            newL1 += [UInt64](repeating: 0, count: need - l1.count)
            try writeBackMetadata(sync: true)
            try file.writeBytes(encodeBE64Table(newL1, paddedTo: Int(n * cs)), at: off)
            noteWritten(off + n * cs)
            try file.sync()
            let oldOff = header.l1TableOffset, oldN = divRoundUp(UInt64(l1.count) * 8, cs)
            header.l1TableOffset = off
            header.l1Size = UInt32(need)
            header.size = newSize
            try writeHeader()
            try file.sync()
            l1 = newL1
            if oldN > 0 { for c in oldOff / cs ..< oldOff / cs + oldN { pendingFree.append(c) } }
            try writeBackMetadata(sync: true)
        } else {
            header.size = newSize
            try writeHeader()
            try file.sync()
        }
    }

    /// Changes the backing file name in the header only (rebase -u). `nil` removes the backing file.
    public func setBackingFile(_ name: String?, format: DiskImageFormat?) throws(VireoError) {
        lock.lock(); defer { lock.unlock() }
        try checkWritable()
        try writeBackMetadata(sync: true)
        var h = header
        h.backingFile = name
        h.backingFormat = name == nil ? nil : format?.qemuName
        if name == nil { h.backingFileOffset = 0; h.backingFileSize = 0 }
        guard h.serializedLength() <= Int(cs) else {
            throw VireoError(.invalidArgument, "backing file name too long for this image's \(cs)-byte header cluster")
        }
        header = h
        try writeHeader()
        try file.sync()
    }

    /// Drops every cluster of the active layer (after `commit`), so reads fall through to the backing file.
    public func makeEmpty() throws(VireoError) {
        lock.lock(); defer { lock.unlock() }
        try checkWritable()
        var v: UInt64 = 0
        while v < virtualSize {
            let l1i = Int(v >> l1Shift)
            if l1[l1i] & Qcow2Entry.offsetMask == 0 { v = UInt64(l1i + 1) << l1Shift; continue }
            let kind = try classify(try l2Entry(v))
            let bm = try l2EntryAndBitmap(v).1
            if kind != .unallocated || bm != 0 {
                let (t, idx) = try l2ForWrite(v)
                t.entries[idx] = 0
                if extendedL2 { t.bitmaps[idx] = 0 }
                t.dirty = true
                releaseOld(kind)
            }
            v += cs
        }
        try writeBackMetadata(sync: true)
        try writeBackMetadata(sync: true)
    }

    /// Writes one whole guest cluster compressed (convert -c). Returns false when the data does not
    /// compress; the caller then writes it normally.
    public func writeCompressed(_ data: UnsafeRawBufferPointer, at v: UInt64) throws(VireoError) -> Bool {
        guard !header.hasExternalData else {
            throw VireoError(.unsupported, "\(path) has an external data file; compressed clusters cannot be stored in one", hint: "convert without -c")
        }
        guard data.count == Int(cs) || v + UInt64(data.count) == virtualSize, v % cs == 0 else {
            throw VireoError(.invalidArgument, "compressed writes must cover one whole cluster")
        }
        try checkRange(v, data.count)
        let full = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(cs), alignment: 8)
        defer { full.deallocate() }
        full.initializeMemory(as: UInt8.self, repeating: 0)
        UnsafeMutableRawBufferPointer(rebasing: full[0..<data.count]).copyMemory(from: data)
        let out = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(cs), alignment: 8)
        defer { out.deallocate() }
        let packed: Int?
        switch header.compression {
        case .zlib: packed = try Zlib.deflate(UnsafeRawBufferPointer(full), into: out, windowBits: Zlib.qcow2WindowBits)
        case .zstd: packed = Zstd.compress(UnsafeRawBufferPointer(full), into: out)
        }
        guard let clen = packed, clen < Int(cs) - 512 else { return false }
        lock.lock(); defer { lock.unlock() }
        try checkWritable()
        decompressedCache = nil
        let (t, idx) = try l2ForWrite(v)
        let old = try classify(t.entries[idx])
        let need = UInt64(clen)
        var start = compressedCursor
        let curEnd = alignUp(start, cs)
        if start == 0 || start % cs == 0 {
            start = try allocateContiguous(divRoundUp(need, cs))
        } else if start + need <= curEnd {
            try addRef(start / cs, 1)
        } else if allocEnd == curEnd {
            try addRef(start / cs, 1)
            _ = try allocateContiguous(divRoundUp(start + need - curEnd, cs))
        } else {
            start = try allocateContiguous(divRoundUp(need, cs))
        }
        try file.write(UnsafeRawBufferPointer(rebasing: out[0..<clen]), at: start)
        noteWritten(start + need)
        compressedCursor = start + need
        let x = 62 - (clusterBits - 8)
        let sectors = ((start + need - 1) >> 9) - (start >> 9)
        t.entries[idx] = Qcow2Entry.compressed | start | (sectors << x)
        if extendedL2 { t.bitmaps[idx] = 0 }
        t.dirty = true
        releaseOld(old)
        return true
    }
}
