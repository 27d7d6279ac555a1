import VireoSupport

/// Read-only VHDX (Hyper-V, [MS-VHDX] v1): dynamic, fixed and differencing disks.
///
/// Layout: "vhdxfile" at 0; two 4 KiB headers at 64 KiB and 128 KiB (the valid one with the
/// higher sequence number is current; CRC-32C checked); two region tables at 192 KiB and
/// 256 KiB locating the block allocation table (BAT) and the metadata region; metadata items
/// give the block size, virtual size, logical sector size and (differencing) the parent
/// locator. The BAT interleaves `chunkRatio` payload-block entries with one sector-bitmap
/// entry; each entry holds a state (low 3 bits) and a file offset in MiB (bits 20-63).
///
/// A log left dirty (a non-zero log GUID in the header and a valid sequence of entries carrying
/// it) must be replayed before anything else is read. Vireo opens images read-only, so it replays
/// in memory (VHDXLog.swift): all reads after the headers go through the replayed view of the
/// file, which is never written.
///
/// Every offset and size read from the file is checked at open: present blocks lie inside the
/// file, so reads never form an offset that was not validated.
public final class VHDXImage: BlockImage, @unchecked Sendable {
    let file: ImageFile
    /// The file as read after log replay (the file itself when the log is clean).
    let src: VHDXReplayedFile
    let lock = ImageLock()
    public let format = DiskImageFormat.vhdx
    /// Whether a dirty log was replayed (in memory) when the image was opened.
    public var replayedLog: Bool { src.replayed }
    public var path: String { file.path }
    public private(set) var virtualSize: UInt64 = 0
    public var isReadOnly: Bool { true }
    public var clusterSize: UInt64 { blockSize }
    public private(set) var backing: BlockImage?
    /// "dynamic", "fixed" or "differencing".
    public private(set) var subformat = "dynamic"
    /// The parent's path as the locator names it (differencing disks).
    public private(set) var parentName: String?
    public private(set) var logicalSectorSize: UInt64 = 512
    var blockSize: UInt64 = 0
    var chunkRatio: UInt64 = 0
    var hasParent = false
    var bat: [UInt64] = []
    var bitmapCache: [Int: [UInt8]] = [:]

    static let mib: UInt64 = 1 << 20
    static let maxDiskSize: UInt64 = 64 << 40
    static let maxBATBytes: UInt64 = 256 << 20

    enum GUID {
        static let bat = guidBytes(0x2dc2_7766, 0xf623, 0x4200, [0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08])
        static let metadata = guidBytes(0x8b7c_a206, 0x4790, 0x4b9a, [0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e])
        static let fileParameters = guidBytes(0xcaa1_6737, 0xfa36, 0x4d43, [0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b])
        static let virtualDiskSize = guidBytes(0x2fa5_4224, 0xcd1b, 0x4876, [0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8])
        static let virtualDiskID = guidBytes(0xbeca_12ab, 0xb2e6, 0x4523, [0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46])
        static let logicalSectorSize = guidBytes(0x8141_bf1d, 0xa96f, 0x4709, [0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f])
        static let physicalSectorSize = guidBytes(0xcda3_48c7, 0x445d, 0x4471, [0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56])
        static let parentLocator = guidBytes(0xa8d3_5f2d, 0xb30b, 0x454d, [0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c])
        static let vhdxParentLocatorType = guidBytes(0xb04a_efb7, 0xd19e, 0x4a81, [0xb7, 0x89, 0x25, 0xb8, 0xe9, 0x44, 0x59, 0x13])

        /// A GUID as stored on disk: the first three fields little-endian, the last eight bytes as is.
        static func guidBytes(_ a: UInt32, _ b: UInt16, _ c: UInt16, _ d: [UInt8]) -> [UInt8] {
            var out: [UInt8] = []
            for i in 0..<4 { out.append(UInt8(truncatingIfNeeded: a >> (8 * UInt32(i)))) }
            for i in 0..<2 { out.append(UInt8(truncatingIfNeeded: b >> (8 * UInt16(i)))) }
            for i in 0..<2 { out.append(UInt8(truncatingIfNeeded: c >> (8 * UInt16(i)))) }
            return out + d
        }
    }

    /// Payload block states (BAT entry bits 0-2).
    enum State {
        static let notPresent: UInt64 = 0, undefined: UInt64 = 1, zero: UInt64 = 2, unmapped: UInt64 = 3
        static let fullyPresent: UInt64 = 6, partiallyPresent: UInt64 = 7
    }

    init(file: ImageFile, options: OpenOptions, chain: inout [String]) throws(VireoError) {
        self.file = file
        let p = file.path
        func bad(_ m: String) -> VireoError { VireoError(.corrupt, "\(p): \(m)", hint: "the VHDX file is damaged or hostile; do not use it") }
        var size = try file.size()
        guard size >= 1 << 20 else { throw bad("too short for a VHDX file (\(size) bytes; the headers alone take 1 MiB)") }
        let ident = try file.readBytes(8, at: 0, what: "VHDX file identifier")
        guard ident == Array("vhdxfile".utf8) else { throw bad("no 'vhdxfile' signature at offset 0") }

        // Headers: the valid one with the higher sequence number is current.
        var current: [UInt8]?
        var currentSeq: UInt64 = 0
        for off in [UInt64(64 << 10), 128 << 10] {
            let h = try file.readBytes(4096, at: off, what: "VHDX header")
            guard Array(h[0..<4]) == Array("head".utf8), le32(h, 4) == CRC32C.checksum(h, zeroingFieldAt: 4) else { continue }
            let seq = le64(h, 8)
            if current == nil || seq > currentSeq { current = h; currentSeq = seq }
        }
        guard let header = current else { throw bad("neither VHDX header (at 64 KiB and 128 KiB) is valid (bad signature or checksum)") }
        guard le16(header, 66) == 1 else { throw VireoError(.unsupported, "\(p): VHDX version \(le16(header, 66)) is not supported (only 1)") }
        let src = VHDXReplayedFile(file: file, fileSize: size, entries: try VHDXLog.activeSequence(file, header: header, fileSize: size))
        self.src = src
        size = src.size   // the log may grow the file

        // Region table: the first valid copy.
        var regions: [UInt8]?
        for off in [UInt64(192 << 10), 256 << 10] {
            let r = try src.readBytes(64 << 10, at: off, what: "VHDX region table")
            if Array(r[0..<4]) == Array("regi".utf8), le32(r, 4) == CRC32C.checksum(r, zeroingFieldAt: 4) { regions = r; break }
        }
        guard let rt = regions else { throw bad("neither VHDX region table (at 192 KiB and 256 KiB) is valid (bad signature or checksum)") }
        let regionCount = Int(le32(rt, 8))
        guard regionCount <= 2047 else { throw bad("region table has \(regionCount) entries (at most 2047)") }
        var batRegion: (UInt64, UInt64)?, metaRegion: (UInt64, UInt64)?
        for i in 0..<regionCount {
            let e = 16 + i * 32
            let guid = Array(rt[e..<e + 16])
            let off = le64(rt, e + 16), len = UInt64(le32(rt, e + 24)), required = le32(rt, e + 28) & 1 != 0
            let known = guid == GUID.bat || guid == GUID.metadata
            if !known {
                if required { throw VireoError(.unsupported, "\(p): VHDX has a required region of a kind Vireo does not know", hint: "convert it with Hyper-V or qemu-img") }
                continue
            }
            let end = try checkedAdd(off, len, "\(p): VHDX region")
            guard off >= Self.mib, off % Self.mib == 0, len > 0, len % Self.mib == 0, end <= size else {
                throw bad("region at \(off) of \(len) bytes is misaligned or outside the file")
            }
            if guid == GUID.bat { batRegion = (off, len) } else { metaRegion = (off, len) }
        }
        guard let (batOff, batLen) = batRegion, let (metaOff, metaLen) = metaRegion else {
            throw bad("region table lacks the BAT or the metadata region")
        }

        // Metadata.
        let mt = try src.readBytes(64 << 10, at: metaOff, what: "VHDX metadata table")
        guard Array(mt[0..<8]) == Array("metadata".utf8) else { throw bad("metadata region has no 'metadata' signature") }
        let itemCount = Int(le16(mt, 10))
        guard itemCount <= 2047 else { throw bad("metadata table has \(itemCount) entries (at most 2047)") }
        var items: [[UInt8]: (UInt64, UInt64)] = [:]
        for i in 0..<itemCount {
            let e = 32 + i * 32
            let guid = Array(mt[e..<e + 16])
            let off = UInt64(le32(mt, e + 16)), len = UInt64(le32(mt, e + 20)), required = le32(mt, e + 24) & 4 != 0
            let known = [GUID.fileParameters, GUID.virtualDiskSize, GUID.virtualDiskID, GUID.logicalSectorSize,
                         GUID.physicalSectorSize, GUID.parentLocator].contains(guid)
            if !known {
                if required { throw VireoError(.unsupported, "\(p): VHDX has a required metadata item Vireo does not know", hint: "convert it with Hyper-V or qemu-img") }
                continue
            }
            guard len == 0 || (off >= 64 << 10 && off + len <= metaLen) else { throw bad("metadata item at \(off) of \(len) bytes lies outside the metadata region") }
            items[guid] = (metaOff + off, len)   // metaOff + metaLen checked above
        }
        func item(_ g: [UInt8], _ name: String, size n: Int) throws(VireoError) -> [UInt8] {
            guard let (o, l) = items[g] else { throw bad("metadata lacks the \(name) item") }
            guard l >= UInt64(n) else { throw bad("metadata item \(name) is \(l) bytes (needs \(n))") }
            return try src.readBytes(n, at: o, what: "VHDX \(name)")
        }
        let params = try item(GUID.fileParameters, "file parameters", size: 8)
        blockSize = UInt64(le32(params, 0))
        let leaveAllocated = le32(params, 4) & 1 != 0   // set by creators of fixed disks
        hasParent = le32(params, 4) & 2 != 0
        virtualSize = le64(try item(GUID.virtualDiskSize, "virtual disk size", size: 8), 0)
        logicalSectorSize = UInt64(le32(try item(GUID.logicalSectorSize, "logical sector size", size: 4), 0))
        guard blockSize >= Self.mib, blockSize <= 256 * Self.mib, blockSize & (blockSize - 1) == 0 else { throw bad("block size \(blockSize) is invalid (1 MiB to 256 MiB, a power of two)") }
        guard logicalSectorSize == 512 || logicalSectorSize == 4096 else { throw bad("logical sector size \(logicalSectorSize) is invalid (512 or 4096)") }
        guard virtualSize <= Self.maxDiskSize else { throw bad("virtual disk size \(virtualSize) is absurd (limit 64 TiB)") }
        chunkRatio = (UInt64(1) << 23) * logicalSectorSize / blockSize

        // BAT.
        let dataBlocks = divRoundUp(virtualSize, blockSize)
        let entries = hasParent ? divRoundUp(dataBlocks, chunkRatio) * (chunkRatio + 1)
                                : (dataBlocks == 0 ? 0 : dataBlocks + (dataBlocks - 1) / chunkRatio)
        let batBytes = entries * 8
        guard batBytes <= batLen else { throw bad("BAT region (\(batLen) bytes) is too small for \(entries) entries") }
        guard batBytes <= Self.maxBATBytes else { throw bad("BAT of \(entries) entries is too large") }
        let raw = try src.readBytes(Int(batBytes), at: batOff, what: "VHDX BAT")
        bat = (0..<Int(entries)).map { le64(raw, $0 * 8) }
        for (i, e) in bat.enumerated() {
            let state = e & 7, host = (e >> 20) * Self.mib
            let isBitmap = UInt64(i) % (chunkRatio + 1) == chunkRatio
            if isBitmap {
                guard state == State.notPresent || state == 6 else { throw bad("BAT entry \(i) (sector bitmap) has invalid state \(state)") }
                if state == 6 {
                    guard host >= Self.mib, host <= size, size - host >= Self.mib else { throw bad("sector bitmap \(i) at \(host) lies outside the file") }
                }
                continue
            }
            switch state {
            case State.notPresent, State.undefined, State.zero, State.unmapped: break
            case State.fullyPresent, State.partiallyPresent:
                if state == State.partiallyPresent {
                    guard hasParent else { throw bad("BAT entry \(i) is partially present in a disk without a parent") }
                    let bm = Int((UInt64(i) / (chunkRatio + 1)) * (chunkRatio + 1) + chunkRatio)
                    guard bm < bat.count, bat[bm] & 7 == 6 else { throw bad("BAT entry \(i) is partially present but its sector bitmap is missing") }
                }
                guard host >= Self.mib, host <= size, size - host >= blockSize else {
                    throw bad("BAT entry \(i) points at \(host), outside the file (\(size) bytes)")
                }
            default: throw bad("BAT entry \(i) has invalid state \(state)")
            }
        }
        subformat = hasParent ? "differencing" : (leaveAllocated ? "fixed" : "dynamic")

        if hasParent {
            let name = try Self.parentPath(src, items[GUID.parentLocator], bad: bad)
            parentName = name
            if options.openBacking {
                let resolved = try DiskImage.resolveBacking(name: name, of: p, policy: options.backingPolicy)
                backing = try DiskImage.open(path: resolved, format: nil, options: options, chain: &chain)
            }
        }
    }

    /// The parent's path from the parent locator: `relative_path`, else `absolute_win32_path`,
    /// with Windows separators turned into '/'.
    static func parentPath(_ file: VHDXReplayedFile, _ loc: (UInt64, UInt64)?, bad: (String) -> VireoError) throws(VireoError) -> String {
        guard let (off, len) = loc else { throw bad("differencing disk has no parent locator") }
        guard len >= 20, len <= 64 << 10 else { throw bad("parent locator of \(len) bytes is invalid") }
        let b = try file.readBytes(Int(len), at: off, what: "VHDX parent locator")
        guard Array(b[0..<16]) == GUID.vhdxParentLocatorType else {
            throw VireoError(.unsupported, "\(file.path): VHDX parent locator of an unknown type", hint: "merge the differencing disk in Hyper-V first")
        }
        let count = Int(le16(b, 18))
        guard 20 + count * 12 <= b.count else { throw bad("parent locator's \(count) entries overflow it") }
        func string(_ o: UInt32, _ l: UInt16) throws(VireoError) -> String {
            let o = Int(o), l = Int(l)
            guard l % 2 == 0, o <= b.count, l <= b.count - o else { throw bad("parent locator entry lies outside the locator") }
            let units = stride(from: o, to: o + l, by: 2).map { UInt16(b[$0]) | UInt16(b[$0 + 1]) << 8 }
            return String(decoding: units, as: UTF16.self)
        }
        var kv: [String: String] = [:]
        for i in 0..<count {
            let e = 20 + i * 12
            kv[try string(le32(b, e), le16(b, e + 8))] = try string(le32(b, e + 4), le16(b, e + 10))
        }
        if let rel = kv["relative_path"], !rel.isEmpty {
            var r = rel.replacingBackslashes()
            while r.hasPrefix("./") { r.removeFirst(2) }
            return r
        }
        if let abs = kv["absolute_win32_path"], !abs.isEmpty {
            throw VireoError(.unsupported, "\(file.path) is a differencing VHDX whose parent is named only by the Windows path \(abs)",
                             hint: "merge it in Hyper-V, or copy the parent beside it and set a relative_path")
        }
        throw bad("parent locator names no parent path")
    }

    enum Piece { case data(UInt64), zero, parent }

    /// What the guest bytes at `o` are, for up to `maxLen` bytes inside one block.
    func piece(at o: UInt64, maxLen: UInt64) throws(VireoError) -> (Piece, UInt64) {
        let b = o / blockSize, inBlock = o % blockSize
        let len = min(blockSize - inBlock, maxLen)
        let idx = Int(b + b / chunkRatio)
        guard idx < bat.count else { return (.zero, len) }
        let e = bat[idx]
        let host = (e >> 20) * Self.mib
        switch e & 7 {
        case State.fullyPresent: return (.data(host + inBlock), len)
        // Zero, unmapped (trimmed) and undefined (never-valid) blocks read as zero, in a
        // differencing disk too: only a block not present in this file falls through to the parent.
        case State.zero, State.unmapped, State.undefined: return (.zero, len)
        case State.partiallyPresent:
            // Sector by sector: a set bit means this file holds the sector, clear means the parent.
            let chunk = Int(b / chunkRatio)
            let bitmap = try sectorBitmap(chunk)
            let firstSector = ((b % chunkRatio) * blockSize + inBlock) / logicalSectorSize
            func bit(_ s: UInt64) -> Bool { bitmap[Int(s / 8)] & (1 << (s % 8)) != 0 }
            let mine = bit(firstSector)
            var n = logicalSectorSize - inBlock % logicalSectorSize
            while n < len, bit(firstSector + (inBlock % logicalSectorSize + n) / logicalSectorSize) == mine { n += logicalSectorSize }
            return (mine ? .data(host + inBlock) : .parent, min(n, len))
        default: return (hasParent ? .parent : .zero, len)
        }
    }

    func sectorBitmap(_ chunk: Int) throws(VireoError) -> [UInt8] {
        if let b = bitmapCache[chunk] { return b }
        let e = bat[chunk * Int(chunkRatio + 1) + Int(chunkRatio)]   // present: checked at open
        let b = try src.readBytes(Int(Self.mib), at: (e >> 20) * Self.mib, what: "VHDX sector bitmap")
        if bitmapCache.count >= 16 { bitmapCache.removeAll() }
        bitmapCache[chunk] = b
        return b
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(VireoError) {
        try checkRange(offset, buffer.count)
        lock.lock(); defer { lock.unlock() }
        var pos = 0
        while pos < buffer.count {
            let o = offset + UInt64(pos)
            let (kind, n) = try piece(at: o, maxLen: UInt64(buffer.count - pos))
            // SAFETY: piece() returns 1 <= n <= buffer.count - pos, so the slice lies inside `buffer`.
            let part = UnsafeMutableRawBufferPointer(rebasing: buffer[pos..<pos + Int(n)])
            switch kind {
            case .data(let h): try src.read(into: part, at: h)
            case .zero: part.initializeMemory(as: UInt8.self, repeating: 0)
            case .parent: try readFromBacking(part, at: o)
            }
            pos += Int(n)
        }
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(VireoError) { throw importedReadOnlyError(path) }
    public func flush() throws(VireoError) {}
    public func discard(offset: UInt64, length: UInt64) throws(VireoError) { throw importedReadOnlyError(path) }
    public func writeZeroes(offset: UInt64, length: UInt64) throws(VireoError) { throw importedReadOnlyError(path) }

    public func blockStatus(at offset: UInt64, maxLength: UInt64) throws(VireoError) -> BlockStatus {
        lock.lock(); defer { lock.unlock() }
        guard offset < virtualSize else { return BlockStatus(state: .zero, length: 0) }
        let limit = min(maxLength, virtualSize - offset)
        let (first, n0) = try piece(at: offset, maxLen: limit)
        var len = n0
        while len < limit {
            let (next, n) = try piece(at: offset + len, maxLen: limit - len)
            switch (first, next) {
            case (.data(let h0), .data(let h)) where h == h0 + len: break
            case (.zero, .zero), (.parent, .parent): break
            default: return status(first, len)
            }
            len += n
        }
        return status(first, len)
    }

    func status(_ p: Piece, _ len: UInt64) -> BlockStatus {
        switch p {
        case .data(let h): return BlockStatus(state: .data, length: len, hostOffset: h)
        case .zero: return BlockStatus(state: .zero, length: len)
        case .parent: return BlockStatus(state: .unallocated, length: len)
        }
    }

    public func close() throws(VireoError) {
        lock.lock(); defer { lock.unlock() }
        try backing?.close()
        file.close()
    }
}

extension String {
    func replacingBackslashes() -> String { String(map { $0 == "\\" ? "/" : $0 }) }
}
