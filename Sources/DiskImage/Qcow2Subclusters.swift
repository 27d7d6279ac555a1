import VireoSupport

// Writes to images with extended L2 entries (qcow2 `extended_l2=on`): 32 subclusters per
// cluster, each allocated or zero on its own (QEMU docs/interop/qcow2.txt, "Extended L2 Entries").
extension Qcow2Image {
    /// Writes `buffer` at guest `offset`, allocating subclusters: a write covering part of a
    /// subcluster fills the rest of it from the old guest view (zero, backing or data); the
    /// other subclusters of the cluster keep their state. The caller holds the lock.
    func writeSubclusters(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(VireoError) {
        let sc = UInt64(1) << scBits
        var pos = 0
        while pos < buffer.count {
            let v = offset + UInt64(pos)
            let inCluster = v & (cs - 1)
            let base = v - inCluster
            let n = Int(min(cs - inCluster, UInt64(buffer.count - pos)))
            let piece = UnsafeRawBufferPointer(rebasing: buffer[pos..<pos + n])
            // Validate the current state (reserved bits, bitmap) before touching anything.
            _ = try kindAt(v)
            let (t, idx) = try l2ForWrite(v)
            let kind = try classify(t.entries[idx])
            let target: UInt64
            switch kind {
            case .data(let host, true):
                try checkNoOverlap(host)
                target = host
            case .unallocated:
                target = try allocateData(base).0
            default:
                // Compressed, or shared with a snapshot: copy the whole cluster's guest view.
                let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(cs), alignment: 4096)
                defer { buf.deallocate() }
                buf.initializeMemory(as: UInt8.self, repeating: 0)
                let avail = Int(min(cs, virtualSize - base))
                try readLocked(into: UnsafeMutableRawBufferPointer(rebasing: buf[0..<avail]), at: base)
                decompressedCache = nil
                UnsafeMutableRawBufferPointer(rebasing: buf[Int(inCluster)..<Int(inCluster) + n]).copyMemory(from: piece)
                let (newHost, _) = try allocateData(base)
                try dataIO.write(UnsafeRawBufferPointer(buf), at: newHost)
                if !external { noteWritten(newHost + cs) }
                t.entries[idx] = newHost | Qcow2Entry.copied
                t.bitmaps[idx] = Subclusters.allAllocated
                t.dirty = true
                releaseOld(kind)
                pos += n
                continue
            }
            // Subclusters s0...s1 are written whole; partial ones are completed from the old view.
            let s0 = inCluster >> scBits, s1 = (inCluster + UInt64(n) - 1) >> scBits
            let a0 = s0 << scBits, a1 = (s1 + 1) << scBits
            if a0 == inCluster && a1 == inCluster + UInt64(n) {
                try dataIO.write(piece, at: target + a0)
            } else {
                let span = Int(a1 - a0)
                let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: span, alignment: 4096)
                defer { buf.deallocate() }
                buf.initializeMemory(as: UInt8.self, repeating: 0)
                let start = base + a0
                if start < virtualSize {
                    let avail = Int(min(UInt64(span), virtualSize - start))
                    try readLocked(into: UnsafeMutableRawBufferPointer(rebasing: buf[0..<avail]), at: start)
                }
                let at = Int(inCluster - a0)
                UnsafeMutableRawBufferPointer(rebasing: buf[at..<at + n]).copyMemory(from: piece)
                try dataIO.write(UnsafeRawBufferPointer(buf), at: target + a0)
            }
            if !external { noteWritten(target + a1) }
            _ = sc
            let m = Subclusters.mask(s0, s1)
            t.entries[idx] = target | Qcow2Entry.copied
            t.bitmaps[idx] = (t.bitmaps[idx] | m) & ~(m << 32)
            t.dirty = true
            pos += n
        }
    }
}
