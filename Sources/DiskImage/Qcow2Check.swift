import VireoSupport

/// What `check` found (and repaired), in qemu-img's terms.
public struct CheckResult: Sendable {
    public var corruptions = 0
    public var leaks = 0
    public var corruptionsFixed = 0
    public var leaksFixed = 0
    public var totalClusters: UInt64 = 0
    public var allocatedClusters: UInt64 = 0
    public var fragmentedClusters: UInt64 = 0
    public var compressedClusters: UInt64 = 0
    public var imageEndOffset: UInt64 = 0
    public var messages: [String] = []
    public init() {}
}

public enum RepairMode: String, Sendable { case none, leaks, all }

extension Qcow2Image {
    /// Counts the references to every host cluster, the way the refcounts should say.
    /// `includeRefcountStructures` false leaves the refcount table and blocks out (for a rebuild).
    func computeReferences(includeRefcountStructures: Bool, result: inout CheckResult) throws(VireoError) -> [UInt32] {
        let fileClusters = divRoundUp(max(physicalEnd, allocEnd), cs)
        guard fileClusters <= 1 << 28 else {
            throw VireoError(.unsupported, "\(path): \(fileClusters) clusters is too many to check in memory", hint: "use a larger cluster size")
        }
        var counts = [UInt32](repeating: 0, count: Int(fileClusters))
        func ref(_ off: UInt64, _ len: UInt64, _ what: String, _ r: inout CheckResult) {
            guard len > 0 else { return }
            let first = off / cs, last = (off &+ len &- 1) / cs
            if last >= fileClusters || off &+ len < off {
                r.corruptions += 1
                r.messages.append("ERROR \(what) at offset \(off) is past the end of the image file")
                return
            }
            for c in first...last where counts[Int(c)] < UInt32.max { counts[Int(c)] += 1 }
        }
        ref(0, cs, "header", &result)
        let l1Bytes = UInt64(l1.count) * 8
        ref(header.l1TableOffset, l1Bytes, "L1 table", &result)
        if includeRefcountStructures {
            ref(header.refcountTableOffset, UInt64(header.refcountTableClusters) * cs, "refcount table", &result)
            for (i, e) in refTable.enumerated() {
                let off = e & Qcow2Entry.offsetMask
                if off == 0 { continue }
                if off % cs != 0 { result.corruptions += 1; result.messages.append("ERROR refcount block \(i) is not cluster aligned"); continue }
                ref(off, cs, "refcount block \(i)", &result)
            }
        }
        if !snapshots.isEmpty {
            let bytes = snapshots.reduce(UInt64(0)) { $0 + UInt64($1.serialize().count) }
            ref(header.snapshotsOffset, bytes, "snapshot table", &result)
        }
        var seenData = Set<UInt64>()
        var prevHost: UInt64 = 0
        func walk(_ table: [UInt64], active: Bool, _ r: inout CheckResult) throws(VireoError) {
            for (i, e) in table.enumerated() {
                let l2off = e & Qcow2Entry.offsetMask
                if l2off == 0 { continue }
                if l2off % cs != 0 || l2off >= fileClusters * cs {
                    r.corruptions += 1
                    r.messages.append("ERROR L1 entry \(i) points to an invalid L2 table offset \(l2off)")
                    continue
                }
                ref(l2off, cs, "L2 table", &r)
                let t: L2Table
                do { t = try l2Table(at: l2off) } catch {
                    r.corruptions += 1; r.messages.append("ERROR \(error.message)"); continue
                }
                for (j, le) in t.entries.enumerated() {
                    let kind: ClusterKind
                    do { kind = try classify(le) } catch {
                        r.corruptions += 1; r.messages.append("ERROR L2 entry \(j) of table at \(l2off): \(error.message)"); continue
                    }
                    switch kind {
                    case .data(_, _) where external:
                        if active { r.allocatedClusters += 1 }   // data-file clusters are not refcounted
                    case .zero where external:
                        break
                    case .data(let h, _):
                        ref(h, cs, "data cluster", &r)
                        if active {
                            r.allocatedClusters += 1
                            if prevHost != 0 && h != prevHost + cs { r.fragmentedClusters += 1 }
                            prevHost = h
                            seenData.insert(h)
                        }
                    case .zero(let h) where h != 0:
                        ref(h, cs, "preallocated zero cluster", &r)
                        if active { r.allocatedClusters += 1 }
                    case .compressed(let h, let len):
                        ref(h, UInt64(len), "compressed cluster", &r)
                        if active { r.allocatedClusters += 1; r.compressedClusters += 1 }
                    default: break
                    }
                }
            }
        }
        try walk(l1, active: true, &result)
        for s in snapshots {
            ref(s.l1TableOffset, UInt64(s.l1Size) * 8, "snapshot L1 table", &result)
            let raw = try file.readBytes(Int(s.l1Size) * 8, at: s.l1TableOffset, what: "snapshot L1 table")
            try walk(decodeBE64Table(raw, count: Int(s.l1Size)), active: false, &result)
        }
        return counts
    }

    /// Checks refcounts and COPIED flags; with `repair`, rebuilds the refcounts from the tables
    /// and fixes the flags (`.leaks` only when the image has no corruption beyond leaks).
    public func check(repair: RepairMode = .none) throws(VireoError) -> CheckResult {
        lock.lock(); defer { lock.unlock() }
        try checkOpen()
        if repair != .none { try checkWritable(); try writeBackMetadata(sync: true); try writeBackMetadata(sync: true) }
        var r = try checkOnce()
        if repair == .none || (r.leaks == 0 && r.corruptions == 0) { return r }
        if repair == .leaks && (r.corruptions > 0 || r.leaks == 0) { return r }
        try rebuildRefcounts()
        try fixCopiedFlags()
        try writeBackMetadata(sync: true)
        if header.incompatibleFeatures & Qcow2Header.Incompatible.corrupt != 0 && repair == .all {
            header.incompatibleFeatures &= ~Qcow2Header.Incompatible.corrupt
            try writeHeader()
            try file.sync()
        }
        let after = try checkOnce()
        r.leaksFixed = max(0, r.leaks - after.leaks)
        r.corruptionsFixed = max(0, r.corruptions - after.corruptions)
        r.messages += after.messages.map { "after repair: " + $0 }
        r.imageEndOffset = physicalEnd
        return r
    }

    func checkOnce() throws(VireoError) -> CheckResult {
        var r = CheckResult()
        r.totalClusters = divRoundUp(virtualSize, cs)
        let counts = try computeReferences(includeRefcountStructures: true, result: &r)
        let maxCluster = max(UInt64(counts.count), UInt64(refTable.count) * refsPerBlock)
        var c: UInt64 = 0
        while c < maxCluster {
            let t = c / refsPerBlock
            if t < UInt64(refTable.count), refTable[Int(t)] & Qcow2Entry.offsetMask == 0, c >= UInt64(counts.count) { c = (t + 1) * refsPerBlock; continue }
            if t >= UInt64(refTable.count) && c >= UInt64(counts.count) { break }
            let stored: UInt64
            do { stored = try refcount(c) } catch {
                r.corruptions += 1; r.messages.append("ERROR cannot read refcount of cluster \(c): \(error.message)")
                c = (t + 1) * refsPerBlock; continue
            }
            let want = c < UInt64(counts.count) ? UInt64(counts[Int(c)]) : 0
            if stored != want {
                if stored > want {
                    r.leaks += 1
                    if r.messages.count < 1000 { r.messages.append("Leaked cluster \(c) refcount=\(stored) reference=\(want)") }
                } else {
                    r.corruptions += 1
                    if r.messages.count < 1000 { r.messages.append("ERROR cluster \(c) refcount=\(stored) reference=\(want)") }
                }
            }
            c += 1
        }
        // COPIED flags in the active tree.
        for (i, e) in l1.enumerated() {
            let l2off = e & Qcow2Entry.offsetMask
            guard l2off != 0, l2off / cs < UInt64(counts.count) else { continue }
            if (counts[Int(l2off / cs)] == 1) != (e & Qcow2Entry.copied != 0) {
                r.corruptions += 1
                r.messages.append("ERROR OFLAG_COPIED L2 cluster: l1_index=\(i) l1_entry=\(String(e, radix: 16)) refcount=\(counts[Int(l2off / cs)])")
            }
            guard !external, let t = try? l2Table(at: l2off) else { continue }
            for le in t.entries where le & Qcow2Entry.compressed == 0 {
                let h = le & Qcow2Entry.offsetMask
                guard h != 0, h / cs < UInt64(counts.count) else { continue }
                if (counts[Int(h / cs)] == 1) != (le & Qcow2Entry.copied != 0) {
                    r.corruptions += 1
                    if r.messages.count < 1000 { r.messages.append("ERROR OFLAG_COPIED data cluster: l2_entry=\(String(le, radix: 16)) refcount=\(counts[Int(h / cs)])") }
                }
            }
        }
        r.imageEndOffset = physicalEnd
        return r
    }

    /// Recomputes every refcount from the L1/L2/snapshot tables and writes a fresh refcount
    /// table and blocks at the end of the file; the header switches to them last.
    func rebuildRefcounts() throws(VireoError) {
        var scratch = CheckResult()
        var counts = try computeReferences(includeRefcountStructures: false, result: &scratch)
        let start = UInt64(counts.count)
        var rb: UInt64 = 1, rt: UInt64 = 1
        while true {
            let total = start + rb + rt
            let nrb = divRoundUp(total, refsPerBlock)
            let nrt = max(1, divRoundUp(nrb * 8, cs))
            if nrb == rb && nrt == rt { break }
            rb = nrb; rt = nrt
        }
        let total = start + rb + rt
        counts += [UInt32](repeating: 1, count: Int(rb + rt))
        for c in 0..<counts.count where UInt64(counts[c]) > refMax {
            throw VireoError(.corrupt, "\(path): cluster \(c) has \(counts[c]) references, more than \(refBits)-bit refcounts can hold")
        }
        var table = [UInt64](repeating: 0, count: Int(rt * cs / 8))
        for i in 0..<rb {
            var blk = [UInt8](repeating: 0, count: Int(cs))
            let first = i * refsPerBlock
            for c in first..<min(total, first + refsPerBlock) where counts[Int(c)] != 0 {
                Self.setRef(&blk, Int(c - first), bits: refBits, UInt64(counts[Int(c)]))
            }
            let off = (start + i) * cs
            table[Int(i)] = off
            try file.writeBytes(blk, at: off)
        }
        let tableOff = (start + rb) * cs
        try file.writeBytes(encodeBE64Table(table, paddedTo: Int(rt * cs)), at: tableOff)
        physicalEnd = total * cs
        allocEnd = total * cs
        try file.sync()
        header.refcountTableOffset = tableOff
        header.refcountTableClusters = UInt32(rt)
        try writeHeader()
        try file.sync()
        refTable = table
        refBlocks = [:]
        refTableDirty = false
        pendingFree = []
        freeHint = 0
    }
}

extension Qcow2Image {
    /// Opens an image for `check`: a dirty image is not repaired behind the checker's back, and
    /// an image marked corrupt may be opened read-write to repair it.
    public static func openForCheck(path: String, repair: Bool, options: OpenOptions = OpenOptions()) throws(VireoError) -> Qcow2Image {
        var o = options
        o.readOnly = !repair
        o.repairDirty = false
        var chain: [String] = [canonicalPath(path)]
        let f = try ImageFile.open(path, writable: repair)
        return try Qcow2Image(file: f, options: o, chain: &chain, allowCorrupt: true)
    }
}
