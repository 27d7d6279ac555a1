#if canImport(Glibc)
import Glibc
#endif
import VireoSupport

/// One internal snapshot, in QEMU's snapshot table format.
public struct Qcow2Snapshot: Sendable, Equatable {
    public var l1TableOffset: UInt64
    public var l1Size: UInt32
    public var id: String
    public var name: String
    public var dateSeconds: UInt32
    public var dateNanoseconds: UInt32
    public var vmClockNanoseconds: UInt64
    public var vmStateSize: UInt64
    public var diskSize: UInt64
    /// Extra data beyond the fields we know, kept verbatim.
    var extraTail: [UInt8] = []

    static let maxExtra = 1024

    static func readTable(file: ImageFile, header h: Qcow2Header, fileSize: UInt64) throws(VireoError) -> [Qcow2Snapshot] {
        guard h.nbSnapshots > 0 else { return [] }
        var out: [Qcow2Snapshot] = []
        var off = h.snapshotsOffset
        let cs = h.clusterSize
        let maxL1 = Qcow2Image.maxL1Bytes / 8
        for i in 0..<Int(h.nbSnapshots) {
            let fixed = try file.readBytes(40, at: off, what: "snapshot table entry \(i)")
            let l1Off = be64(fixed, 0), l1Size = be32(fixed, 8)
            let idLen = Int(be16(fixed, 12)), nameLen = Int(be16(fixed, 14))
            let extra = Int(be32(fixed, 36))
            guard extra <= maxExtra else { throw VireoError(.corrupt, "\(file.path): snapshot \(i) has \(extra) bytes of extra data (limit \(maxExtra))") }
            guard UInt64(l1Size) <= maxL1, l1Off % cs == 0 else {
                throw VireoError(.corrupt, "\(file.path): snapshot \(i) has an invalid L1 table (offset \(l1Off), \(l1Size) entries)", hint: "the image is damaged")
            }
            let (l1End, o) = l1Off.addingReportingOverflow(UInt64(l1Size) * 8)
            guard !o, l1End <= alignUp(fileSize, cs) else {
                throw VireoError(.corrupt, "\(file.path): snapshot \(i)'s L1 table lies past the end of the file", hint: "the image is damaged")
            }
            let varLen = extra + idLen + nameLen
            let rest = try file.readBytes(varLen, at: off + 40, what: "snapshot table entry \(i)")
            var s = Qcow2Snapshot(l1TableOffset: l1Off, l1Size: l1Size, id: "", name: "",
                                  dateSeconds: be32(fixed, 16), dateNanoseconds: be32(fixed, 20),
                                  vmClockNanoseconds: be64(fixed, 24), vmStateSize: UInt64(be32(fixed, 32)), diskSize: h.size)
            if extra >= 8 { s.vmStateSize = be64(rest, 0) }
            if extra >= 16 { s.diskSize = be64(rest, 8) }
            if extra > 16 { s.extraTail = Array(rest[16..<extra]) }
            s.id = String(decoding: rest[extra..<extra + idLen], as: UTF8.self)
            s.name = String(decoding: rest[extra + idLen..<extra + idLen + nameLen], as: UTF8.self)
            out.append(s)
            off = try checkedAdd(off, UInt64((40 + varLen + 7) & ~7), "snapshot table")
        }
        return out
    }

    func serialize() -> [UInt8] {
        let extra = 16 + extraTail.count
        let idB = Array(id.utf8), nameB = Array(name.utf8)
        var b = [UInt8](repeating: 0, count: (40 + extra + idB.count + nameB.count + 7) & ~7)
        put64(&b, 0, l1TableOffset)
        put32(&b, 8, l1Size)
        put16(&b, 12, UInt16(idB.count))
        put16(&b, 14, UInt16(nameB.count))
        put32(&b, 16, dateSeconds)
        put32(&b, 20, dateNanoseconds)
        put64(&b, 24, vmClockNanoseconds)
        put32(&b, 32, UInt32(truncatingIfNeeded: min(vmStateSize, UInt64(UInt32.max))))
        put32(&b, 36, UInt32(extra))
        put64(&b, 40, vmStateSize)
        put64(&b, 48, diskSize)
        for (i, x) in extraTail.enumerated() { b[56 + i] = x }
        for (i, x) in idB.enumerated() { b[40 + extra + i] = x }
        for (i, x) in nameB.enumerated() { b[40 + extra + idB.count + i] = x }
        return b
    }
}

extension Qcow2Image {
    public var snapshotList: [Qcow2Snapshot] {
        lock.lock(); defer { lock.unlock() }
        return snapshots
    }

    func findSnapshot(_ nameOrID: String) -> Int? {
        snapshots.firstIndex { $0.name == nameOrID } ?? snapshots.firstIndex { $0.id == nameOrID }
    }

    /// Adds `delta` to the refcount of every L2 table and data cluster reachable from `l1`.
    func adjustTreeRefcounts(_ table: [UInt64], _ delta: Int) throws(VireoError) {
        for e in table {
            let l2off = e & Qcow2Entry.offsetMask
            if l2off == 0 { continue }
            let t = try l2Table(at: l2off)
            for le in t.entries {
                switch try classify(le) {
                case .data(let h, _): try addRef(h / cs, delta)
                case .zero(let h) where h != 0: try addRef(h / cs, delta)
                case .compressed(let h, let len):
                    for c in h / cs ... (h + UInt64(len) - 1) / cs { try addRef(c, delta) }
                default: break
                }
            }
            try addRef(l2off / cs, delta)
        }
    }

    /// Sets or clears the COPIED flag in the active L1/L2 tables to match refcounts (== 1).
    func fixCopiedFlags() throws(VireoError) {
        for i in 0..<l1.count {
            let l2off = l1[i] & Qcow2Entry.offsetMask
            if l2off == 0 { continue }
            let one = try refcount(l2off / cs) == 1
            let want = one ? (l1[i] | Qcow2Entry.copied) : (l1[i] & ~Qcow2Entry.copied)
            if want != l1[i] { l1[i] = want; l1Dirty = true }
            let t = try l2Table(at: l2off)
            for j in 0..<t.entries.count {
                let e = t.entries[j]
                if e & Qcow2Entry.compressed != 0 { continue }
                let h = e & Qcow2Entry.offsetMask
                if h == 0 { if e & Qcow2Entry.copied != 0 { t.entries[j] &= ~Qcow2Entry.copied; t.dirty = true }; continue }
                let w = try refcount(h / cs) == 1 ? (e | Qcow2Entry.copied) : (e & ~Qcow2Entry.copied)
                if w != e { t.entries[j] = w; t.dirty = true }
            }
        }
    }

    /// Writes a new snapshot table and switches the header to it; the old table is released.
    func writeSnapshotTable(_ list: [Qcow2Snapshot]) throws(VireoError) {
        var bytes: [UInt8] = []
        for s in list { bytes += s.serialize() }
        let oldOff = header.snapshotsOffset, oldN = header.nbSnapshots
        let oldBytes: UInt64 = oldN == 0 ? 0 : snapshots.reduce(0) { $0 + UInt64($1.serialize().count) }
        var newOff: UInt64 = 0
        if !bytes.isEmpty {
            let n = divRoundUp(UInt64(bytes.count), cs)
            newOff = try allocateContiguous(n)
            try file.writeBytes(bytes, at: newOff)
            noteWritten(newOff + UInt64(bytes.count))
        }
        try writeBackMetadata(sync: true)
        header.snapshotsOffset = newOff
        header.nbSnapshots = UInt32(list.count)
        try writeHeader()
        if options.cache == .writeback { try file.sync() }
        if oldN > 0 && oldBytes > 0 {
            for c in oldOff / cs ... (oldOff + oldBytes - 1) / cs { pendingFree.append(c) }
        }
        snapshots = list
    }

    public func createSnapshot(name: String) throws(VireoError) {
        lock.lock(); defer { lock.unlock() }
        try checkWritable()
        guard !name.isEmpty, name.utf8.count < 65536 else { throw VireoError(.invalidArgument, "invalid snapshot name") }
        guard !external else {
            throw VireoError(.unsupported, "\(path) has an external data file; qcow2 does not allow internal snapshots with one",
                             hint: "snapshot with a linked clone (vireo disk create -b) instead")
        }
        if findSnapshot(name) != nil {
            throw VireoError(.conflict, "\(path) already has a snapshot named '\(name)'", hint: "pick another name or delete it with `vireo disk snapshot -d \(name)`")
        }
        guard snapshots.count < Int(Self.maxSnapshots) else { throw VireoError(.unsupported, "too many snapshots") }
        try writeBackMetadata(sync: true)
        // Copy the active L1 table.
        let n = max(1, divRoundUp(UInt64(l1.count) * 8, cs))
        let l1Copy = try allocateContiguous(n)
        try file.writeBytes(encodeBE64Table(l1.map { $0 & ~Qcow2Entry.copied }, paddedTo: Int(n * cs)), at: l1Copy)
        noteWritten(l1Copy + n * cs)
        try adjustTreeRefcounts(l1, 1)
        try fixCopiedFlags()
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let maxID = snapshots.compactMap { UInt64($0.id) }.max() ?? 0
        let snap = Qcow2Snapshot(l1TableOffset: l1Copy, l1Size: UInt32(l1.count), id: String(maxID + 1), name: name,
                                 dateSeconds: UInt32(truncatingIfNeeded: ts.tv_sec), dateNanoseconds: UInt32(truncatingIfNeeded: ts.tv_nsec),
                                 vmClockNanoseconds: 0, vmStateSize: 0, diskSize: virtualSize)
        try writeSnapshotTable(snapshots + [snap])
        try writeBackMetadata(sync: true)
        try writeBackMetadata(sync: true)
    }

    /// Reverts the active disk to a snapshot (the snapshot is kept).
    public func applySnapshot(name: String) throws(VireoError) {
        lock.lock(); defer { lock.unlock() }
        try checkWritable()
        guard let i = findSnapshot(name) else {
            throw VireoError(.notFound, "\(path) has no snapshot '\(name)'", hint: "list them with `vireo disk snapshot -l \(path)`")
        }
        let s = snapshots[i]
        try writeBackMetadata(sync: true)
        let raw = try file.readBytes(Int(s.l1Size) * 8, at: s.l1TableOffset, what: "snapshot L1 table")
        var snapL1 = decodeBE64Table(raw, count: Int(s.l1Size))
        let perL1 = cs * UInt64(l2Entries)
        let need = Int(divRoundUp(s.diskSize, perL1))
        if snapL1.count < need { snapL1 += [UInt64](repeating: 0, count: need - snapL1.count) }
        // References for the snapshot's tree first, then switch, then drop the old tree.
        try adjustTreeRefcounts(snapL1, 1)
        let oldL1 = l1
        if snapL1.count != l1.count {
            let n = max(1, divRoundUp(UInt64(snapL1.count) * 8, cs))
            let newOff = try allocateContiguous(n)
            try writeBackMetadata(sync: true)
            try file.writeBytes(encodeBE64Table(snapL1, paddedTo: Int(n * cs)), at: newOff)
            noteWritten(newOff + n * cs)
            if options.cache == .writeback { try file.sync() }
            let oldOff = header.l1TableOffset, oldN = divRoundUp(UInt64(l1.count) * 8, cs)
            header.l1TableOffset = newOff
            header.l1Size = UInt32(snapL1.count)
            header.size = s.diskSize
            try writeHeader()
            if options.cache == .writeback { try file.sync() }
            if oldN > 0 { for c in oldOff / cs ..< oldOff / cs + oldN { pendingFree.append(c) } }
            l1 = snapL1
        } else {
            l1 = snapL1
            l1Dirty = true
            if header.size != s.diskSize { header.size = s.diskSize; try writeBackMetadata(sync: true); try writeHeader() }
        }
        try writeBackMetadata(sync: true)
        try adjustTreeRefcounts(oldL1, -1)
        try fixCopiedFlags()
        try writeBackMetadata(sync: true)
        try writeBackMetadata(sync: true)
        decompressedCache = nil
    }

    public func deleteSnapshot(name: String) throws(VireoError) {
        lock.lock(); defer { lock.unlock() }
        try checkWritable()
        guard let i = findSnapshot(name) else {
            throw VireoError(.notFound, "\(path) has no snapshot '\(name)'", hint: "list them with `vireo disk snapshot -l \(path)`")
        }
        let s = snapshots[i]
        var rest = snapshots
        rest.remove(at: i)
        try writeSnapshotTable(rest)
        let raw = try file.readBytes(Int(s.l1Size) * 8, at: s.l1TableOffset, what: "snapshot L1 table")
        let snapL1 = decodeBE64Table(raw, count: Int(s.l1Size))
        try adjustTreeRefcounts(snapL1, -1)
        let n = divRoundUp(UInt64(s.l1Size) * 8, cs)
        if n > 0 { for c in s.l1TableOffset / cs ..< s.l1TableOffset / cs + n { try addRef(c, -1) } }
        try fixCopiedFlags()
        try writeBackMetadata(sync: true)
        try writeBackMetadata(sync: true)
    }
}
