import VireoSupport

/// Read-only VHD (Virtual PC / Hyper-V v1): fixed, dynamic and differencing disks.
///
/// A differencing disk (type 4) has a dynamic disk's layout plus a parent: its dynamic header
/// names the parent's unique ID, its Unicode file name and up to eight parent locators. A block
/// not in the table, and a sector whose bit in the block's sector bitmap is clear, read from the
/// parent.
public final class VHDImage: BlockImage, @unchecked Sendable {
    let file: ImageFile
    let lock = ImageLock()
    var closed = false
    public let format = DiskImageFormat.vhd
    public var path: String { file.path }
    public private(set) var virtualSize: UInt64 = 0
    public var isReadOnly: Bool { true }
    public private(set) var clusterSize: UInt64 = 512
    public var backing: BlockImage? { parent }
    public private(set) var isDynamic = false
    /// Differencing disk (type 4): unallocated blocks and clear bitmap bits read from `parent`.
    public private(set) var isDifferencing = false
    /// The parent's path as the locators (or the parent name) give it.
    public private(set) var parentName: String?
    var parent: BlockImage?
    /// Sector bitmaps of the differencing disk's allocated blocks (block index -> bitmap).
    var bitmapCache: [Int: [UInt8]] = [:]
    var bat: [UInt32] = []
    var blockSize: UInt64 = 0
    var bitmapBytes: UInt64 = 0
    var fixedDataEnd: UInt64 = 0
    /// The footer's unique ID (a differencing child records its parent's).
    var uniqueID: [UInt8] = []

    /// The parent's path from a differencing disk's dynamic header: a relative Windows path
    /// locator (W2ru), else an absolute one (W2ku) or a Mac URL (MacX) whose file name is looked
    /// for beside the child, else the parent's Unicode name (also beside the child).
    static func parentName(_ dh: [UInt8], file: ImageFile, fileSize: UInt64, bad: (String) -> VireoError) throws(VireoError) -> String {
        func utf16(_ b: ArraySlice<UInt8>, bigEndian: Bool) -> String {
            var units: [UInt16] = []
            var i = b.startIndex
            while i + 1 < b.endIndex {
                let u = bigEndian ? UInt16(b[i]) << 8 | UInt16(b[i + 1]) : UInt16(b[i + 1]) << 8 | UInt16(b[i])
                if u == 0 { break }
                units.append(u)
                i += 2
            }
            return String(decoding: units, as: UTF16.self)
        }
        func clean(_ p: String) -> String {
            var s = p.replacingBackslashes()
            while s.hasPrefix("./") { s.removeFirst(2) }
            return s
        }
        func baseName(_ p: String) -> String {
            let s = p.replacingBackslashes()
            return s.split(separator: "/").last.map(String.init) ?? s
        }
        var found: [UInt32: String] = [:]
        for i in 0..<8 {
            let e = 576 + i * 24
            let code = be32(dh, e)
            guard code != 0 else { continue }
            let len = UInt64(be32(dh, e + 8))
            let off = be64(dh, e + 16)
            guard len > 0 else { continue }
            guard len <= 64 << 10 else { throw bad("parent locator \(i) of \(len) bytes is too long") }
            let (end, o) = off.addingReportingOverflow(len)
            guard !o, end <= fileSize else { throw bad("parent locator \(i) (offset \(off), \(len) bytes) lies past the end of the file") }
            let b = try file.readBytes(Int(len), at: off, what: "VHD parent locator")
            switch code {
            case 0x5732_7275, 0x5732_6b75: found[code] = utf16(b[...], bigEndian: false)      // W2ru, W2ku
            case 0x4d61_6358: found[code] = String(decoding: b.prefix { $0 != 0 }, as: UTF8.self)  // MacX
            default: break
            }
        }
        if let r = found[0x5732_7275], !r.isEmpty { return clean(r) }
        for code: UInt32 in [0x5732_6b75, 0x4d61_6358] {
            if let a = found[code], !a.isEmpty { return baseName(a.hasPrefix("file://") ? String(a.dropFirst(7)) : a) }
        }
        let name = utf16(dh[64..<576], bigEndian: true)
        guard !name.isEmpty else { throw bad("differencing disk names no parent (no locator, no parent name)") }
        return baseName(name)
    }

    convenience init(file: ImageFile) throws(VireoError) {
        var chain: [String] = [canonicalPath(file.path)]
        try self.init(file: file, options: OpenOptions(readOnly: true), chain: &chain)
    }

    init(file: ImageFile, options: OpenOptions, chain: inout [String]) throws(VireoError) {
        self.file = file
        let size = try file.size()
        func bad(_ m: String) -> VireoError { VireoError(.corrupt, "\(file.path): \(m)", hint: "the VHD file is damaged") }
        guard size >= 512 else { throw bad("too short for a VHD footer") }
        var foot = try file.readBytes(512, at: size - 512, what: "VHD footer")
        if Array(foot[0..<8]) != Array("conectix".utf8) {
            // Some tools write a 511-byte footer; the copy at offset 0 of dynamic disks also works.
            foot = try file.readBytes(512, at: 0, what: "VHD footer copy")
            guard Array(foot[0..<8]) == Array("conectix".utf8) else { throw bad("no VHD footer ('conectix' cookie)") }
        }
        let diskType = be32(foot, 60)
        let currentSize = be64(foot, 48)
        let cyl = UInt64(be16(foot, 56)), heads = UInt64(foot[58]), spt = UInt64(foot[59])
        let creator = String(decoding: foot[28..<32], as: UTF8.self)
        // QEMU's rule: Virtual PC sizes the disk by its CHS geometry; these creators use current_size.
        let chsSize = cyl * heads * spt * 512
        let useCurrent = ["win ", "qem2", "d2v ", "CTXS", "tap\0"].contains(creator) || cyl * heads * spt == 65535 * 16 * 255 || chsSize == 0
        virtualSize = useCurrent ? currentSize : chsSize
        uniqueID = Array(foot[68..<84])
        guard virtualSize <= UInt64(1) << 44 else { throw bad("disk size \(virtualSize) is absurd") }
        switch diskType {
        case 2:
            guard virtualSize <= size - 512 || currentSize <= size - 512 else { throw bad("fixed VHD is shorter than its disk size") }
            fixedDataEnd = size - 512
        case 3, 4:
            isDynamic = true
            isDifferencing = diskType == 4
            let dynOff = be64(foot, 16)
            guard dynOff < size, size - dynOff >= 1024 else { throw bad("dynamic header offset \(dynOff) is outside the file") }
            let dh = try file.readBytes(1024, at: dynOff, what: "VHD dynamic header")
            guard Array(dh[0..<8]) == Array("cxsparse".utf8) else { throw bad("dynamic header has no 'cxsparse' cookie") }
            let tableOff = be64(dh, 16)
            let entries = UInt64(be32(dh, 28))
            blockSize = UInt64(be32(dh, 32))
            guard blockSize >= 512, blockSize <= 256 << 20, blockSize & (blockSize - 1) == 0 else { throw bad("block size \(blockSize) is invalid") }
            guard entries * 4 <= min(size, 64 << 20) else { throw bad("block table of \(entries) entries does not fit the file") }
            let (tableEnd, tov) = tableOff.addingReportingOverflow(entries * 4)
            guard !tov, tableEnd <= size else { throw bad("block table (offset \(tableOff), \(entries) entries) lies past the end of the file") }
            guard entries * blockSize >= virtualSize else { throw bad("block table (\(entries) blocks) is too small for the disk size") }
            let raw = try file.readBytes(Int(entries * 4), at: tableOff, what: "VHD block allocation table")
            bat = (0..<Int(entries)).map { be32(raw, $0 * 4) }
            bitmapBytes = alignUp(blockSize / 512 / 8, 512)
            clusterSize = blockSize
            // Every allocated block (bitmap + data) must lie inside the file.
            for (i, e) in bat.enumerated() where e != 0xffff_ffff {
                let (end, o) = (UInt64(e) * 512).addingReportingOverflow(bitmapBytes + blockSize)
                guard !o, end <= size else { throw bad("block \(i) (sector \(e)) lies past the end of the file") }
            }
            if isDifferencing {
                let name = try Self.parentName(dh, file: file, fileSize: size, bad: bad)
                parentName = name
                if options.openBacking {
                    let resolved = try DiskImage.resolveBacking(name: name, of: file.path, policy: options.backingPolicy, what: "parent disk")
                    guard fileExists(resolved) else {
                        throw VireoError(.notFound, "\(file.path): parent disk \(resolved) does not exist", hint: "put the parent VHD beside the differencing disk")
                    }
                    var popts = options
                    popts.readOnly = true
                    let p = try DiskImage.open(path: resolved, format: .vhd, options: popts, chain: &chain)
                    // The parent must be the disk this one was made from (its footer's unique ID).
                    if let pv = p as? VHDImage, pv.uniqueID != Array(dh[40..<56]) {
                        try? p.close()
                        throw VireoError(.corrupt, "\(file.path): parent \(resolved) is not the disk it was made from (unique ID differs)",
                                         hint: "the parent was replaced or modified; find the original parent")
                    }
                    parent = p
                }
            }
        default:
            throw bad("unknown VHD disk type \(diskType)")
        }
    }

    enum Piece { case data(UInt64), zero, parent }

    /// Where the bytes at `off` come from, and for how many bytes (inside one block).
    func piece(_ off: UInt64, _ maxLen: UInt64) throws(VireoError) -> (Piece, UInt64) {
        let inBlock = off % blockSize
        let len = min(blockSize - inBlock, maxLen)
        let b = Int(off / blockSize)
        guard b < bat.count, bat[b] != 0xffff_ffff else { return (isDifferencing ? .parent : .zero, len) }
        let host = UInt64(bat[b]) * 512 + bitmapBytes + inBlock
        guard isDifferencing else { return (.data(host), len) }
        let bm: [UInt8]
        if let c = bitmapCache[b] { bm = c } else {
            bm = try file.readBytes(Int(bitmapBytes), at: UInt64(bat[b]) * 512, what: "VHD sector bitmap")
            if bitmapCache.count > 4096 { bitmapCache.removeAll() }
            bitmapCache[b] = bm
        }
        func mine(_ sector: UInt64) -> Bool { bm[Int(sector / 8)] & (0x80 >> UInt8(sector % 8)) != 0 }
        let s0 = inBlock / 512
        let m = mine(s0)
        var n = 512 - inBlock % 512
        while n < len && mine(s0 + (inBlock % 512 + n) / 512) == m { n += 512 }
        return (m ? .data(host) : .parent, min(n, len))
    }

    func hostOffset(_ off: UInt64) -> UInt64? {
        if !isDynamic { return off }
        let b = Int(off / blockSize)
        guard b < bat.count, bat[b] != 0xffff_ffff else { return nil }
        return UInt64(bat[b]) * 512 + bitmapBytes + off % blockSize
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(VireoError) {
        try checkRange(offset, buffer.count)
        lock.lock(); defer { lock.unlock() }
        if !isDynamic {
            // Reads past the data area (a short fixed disk) are zero.
            let avail = offset < fixedDataEnd ? Int(min(UInt64(buffer.count), fixedDataEnd - offset)) : 0
            if avail > 0 { try file.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<avail]), at: offset) }
            if avail < buffer.count { UnsafeMutableRawBufferPointer(rebasing: buffer[avail...]).initializeMemory(as: UInt8.self, repeating: 0) }
            return
        }
        var pos = 0
        while pos < buffer.count {
            let o = offset + UInt64(pos)
            let n = Int(min(blockSize - o % blockSize, UInt64(buffer.count - pos)))
            let part = UnsafeMutableRawBufferPointer(rebasing: buffer[pos..<pos + n])
            if isDifferencing {
                let (p, len) = try piece(o, UInt64(n))
                let sub = UnsafeMutableRawBufferPointer(rebasing: buffer[pos..<pos + Int(len)])
                switch p {
                case .data(let h): try file.read(into: sub, at: h)
                case .zero: sub.initializeMemory(as: UInt8.self, repeating: 0)
                case .parent: try readFromBacking(sub, at: o)
                }
                pos += Int(len)
                continue
            }
            if let h = hostOffset(o) { try file.read(into: part, at: h) } else { part.initializeMemory(as: UInt8.self, repeating: 0) }
            pos += n
        }
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(VireoError) { throw importedReadOnlyError(path) }
    public func flush() throws(VireoError) {}
    public func discard(offset: UInt64, length: UInt64) throws(VireoError) { throw importedReadOnlyError(path) }
    public func writeZeroes(offset: UInt64, length: UInt64) throws(VireoError) { throw importedReadOnlyError(path) }

    public func blockStatus(at offset: UInt64, maxLength: UInt64) throws(VireoError) -> BlockStatus {
        guard offset < virtualSize else { return BlockStatus(state: .zero, length: 0) }
        let limit = min(maxLength, virtualSize - offset)
        if !isDynamic { return BlockStatus(state: .data, length: limit, hostOffset: offset) }
        if isDifferencing {
            lock.lock(); defer { lock.unlock() }
            let (p0, l0) = try piece(offset, limit)
            var len = l0
            while len < limit {
                let (p, l) = try piece(offset + len, limit - len)
                switch (p0, p) {
                case (.data, .data), (.zero, .zero), (.parent, .parent): break
                default: return Self.status(p0, len)
                }
                len += l
            }
            return Self.status(p0, len)
        }
        let h = hostOffset(offset)
        var len = min(blockSize - offset % blockSize, limit)
        while len < limit {
            if (hostOffset(offset + len) == nil) != (h == nil) { break }
            len += min(blockSize, limit - len)
        }
        return h == nil ? BlockStatus(state: .zero, length: len) : BlockStatus(state: .data, length: len)
    }

    static func status(_ p: Piece, _ len: UInt64) -> BlockStatus {
        switch p {
        case .data: return BlockStatus(state: .data, length: len)
        case .zero: return BlockStatus(state: .zero, length: len)
        case .parent: return BlockStatus(state: .unallocated, length: len)
        }
    }

    public func close() throws(VireoError) {
        if let p = parent { try? p.close() }
        file.close()
        closed = true
    }
}

