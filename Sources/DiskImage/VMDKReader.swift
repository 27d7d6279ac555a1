import VireoSupport

/// Read-only VMDK: monolithicSparse and streamOptimized (one sparse extent), monolithicFlat
/// (a descriptor naming flat extents).
public final class VMDKImage: BlockImage, @unchecked Sendable {
    let file: ImageFile
    let lock = ImageLock()
    var closed = false
    public let format = DiskImageFormat.vmdk
    public var path: String { file.path }
    public private(set) var virtualSize: UInt64 = 0
    public var isReadOnly: Bool { true }
    public private(set) var clusterSize: UInt64 = 512
    public var backing: BlockImage? { nil }
    public private(set) var createType = ""

    /// Longest list of extents a descriptor may name: far beyond any real image (VMware's
    /// 2 GiB-split disks of 62 TiB need ~31,000), bounded so a hostile one cannot exhaust
    /// file descriptors or memory.
    static let maxExtents = 40_000

    /// An extent's guest bytes sit at [base, base + size) of the virtual disk. Every offset
    /// formed from one is checked at parse time: `offset + size` of a flat extent does not
    /// overflow, so `offset + (o - base)` cannot either.
    enum Extent {
        case sparse(Sparse)
        case flat(file: ImageFile, offset: UInt64, size: UInt64)
        case zero(size: UInt64)
        var size: UInt64 {
            switch self {
            case .sparse(let s): return s.extentSize
            case .flat(_, _, let n), .zero(let n): return n
            }
        }
    }

    final class Sparse {
        let file: ImageFile
        var capacity: UInt64 = 0
        /// The extent's length in the virtual disk (its capacity); bytes past `capacity` read as zero.
        var extentSize: UInt64 = 0
        var grainBytes: UInt64 = 0
        var gtes: UInt64 = 0
        var gd: [UInt32] = []
        var compressed = false
        var zeroGrains = false
        var gtCache: [Int: [UInt32]] = [:]
        var grainCache: (UInt64, [UInt8])?
        init(sparseFile: ImageFile) { self.file = sparseFile }
    }

    var extents: [Extent] = []

    let policy: BackingPolicy

    init(file: ImageFile, policy: BackingPolicy = .any) throws(VireoError) {
        self.file = file
        self.policy = policy
        let head = try file.readBytes(Int(min(try file.size(), 512)), at: 0, what: "VMDK header")
        if head.count >= 4, Array(head[0..<4]) == Array("COWD".utf8) {
            throw VireoError(.unsupported, "\(file.path) is a VMDK3 (COWD, ESX 2.x sparse) image, which Vireo does not read",
                             hint: "convert it with qemu-img convert -f vmdk -O qcow2 \(file.path) OUT.qcow2, then use OUT.qcow2")
        }
        if head.count >= 4, le32(head, 0) == 0x564d_444b {
            let s = try Self.parseSparse(file)
            extents = [.sparse(s)]
            virtualSize = s.capacity
            clusterSize = s.grainBytes
            createType = s.compressed ? "streamOptimized" : "monolithicSparse"
        } else {
            try parseDescriptor(head)
        }
    }

    static func parseSparse(_ f: ImageFile) throws(VireoError) -> Sparse {
        let p = f.path
        let size = try f.size()
        var h = try f.readBytes(512, at: 0, what: "VMDK sparse header")
        func bad(_ m: String) -> VireoError { VireoError(.corrupt, "\(p): \(m)", hint: "the VMDK file is damaged or not supported") }
        guard le32(h, 0) == 0x564d_444b else { throw bad("bad VMDK magic") }
        var gdOffset = le64(h, 56)
        if gdOffset == UInt64.max {
            // streamOptimized: the real header is the footer, 1024 bytes before the end.
            guard size >= 1536 else { throw bad("stream-optimized VMDK without a footer") }
            h = try f.readBytes(512, at: size - 1024, what: "VMDK footer")
            guard le32(h, 0) == 0x564d_444b else { throw bad("stream-optimized VMDK footer has bad magic") }
            gdOffset = le64(h, 56)
        }
        let version = le32(h, 4), flags = le32(h, 8)
        guard version <= 3 else { throw VireoError(.unsupported, "\(p): VMDK sparse version \(version) is not supported") }
        let s = Sparse(sparseFile: f)
        let capSectors = le64(h, 12), grainSectors = le64(h, 20)
        s.gtes = UInt64(le32(h, 44))
        guard grainSectors >= 1, grainSectors <= 32768, grainSectors & (grainSectors - 1) == 0 else { throw bad("grain size \(grainSectors) sectors is invalid") }
        guard s.gtes >= 1, s.gtes <= 4096 else { throw bad("\(s.gtes) grain table entries per table is invalid") }
        guard capSectors <= (UInt64(1) << 44) else { throw bad("capacity \(capSectors) sectors is absurd") }
        s.capacity = capSectors * 512
        s.extentSize = s.capacity
        s.grainBytes = grainSectors * 512
        s.compressed = flags & (1 << 16) != 0
        s.zeroGrains = flags & (1 << 2) != 0
        if s.compressed && le16(h, 77) != 1 { throw VireoError(.unsupported, "\(p): VMDK compression algorithm \(le16(h, 77)) is not supported") }
        let grains = divRoundUp(capSectors, grainSectors)
        let numGTs = divRoundUp(grains, s.gtes)
        guard numGTs * 4 <= min(size, 64 << 20) else { throw bad("grain directory of \(numGTs) entries does not fit the file") }
        let gdBytes = try checkedMul(gdOffset, 512, "VMDK grain directory")
        let raw = try f.readBytes(Int(numGTs * 4), at: gdBytes, what: "VMDK grain directory")
        s.gd = (0..<Int(numGTs)).map { le32(raw, $0 * 4) }
        return s
    }

    func parseDescriptor(_ head: [UInt8]) throws(VireoError) {
        let size = try file.size()
        guard size <= 1 << 20 else { throw VireoError(.corrupt, "\(path): neither a sparse VMDK nor a text descriptor") }
        let text = String(decoding: try file.readBytes(Int(size), at: 0, what: "VMDK descriptor"), as: UTF8.self)
        guard text.contains("# Disk DescriptorFile") || text.contains("createType") else {
            throw VireoError(.corrupt, "\(path): not a VMDK file")
        }
        func bad(_ m: String) -> VireoError {
            VireoError(.corrupt, "\(path): VMDK descriptor \(m)", hint: "the descriptor is damaged or hostile; do not use it")
        }
        for line in text.split(whereSeparator: { $0 == "\n" || $0 == "\r" }) {
            let l = String(line).trimmingWhitespace()
            if l.hasPrefix("createType") {
                createType = l.split(separator: "\"").dropFirst().first.map(String.init) ?? ""
                continue
            }
            let parts = l.split(separator: " ", maxSplits: 3)
            guard parts.count >= 3, ["RW", "RDONLY", "NOACCESS"].contains(String(parts[0])),
                  let sectors = UInt64(parts[1]), sectors <= (UInt64(1) << 44) else { continue }
            guard extents.count < Self.maxExtents else { throw bad("names more than \(Self.maxExtents) extents") }
            let type = String(parts[2])
            let bytes = sectors * 512   // sectors <= 2^44: no overflow
            var name = ""
            var extOff: UInt64 = 0
            if parts.count == 4 {
                let rest = String(parts[3])
                let q = rest.split(separator: "\"", omittingEmptySubsequences: false)
                if q.count >= 3 {
                    name = String(q[1])
                    let offText = String(q[2]).trimmingWhitespace()
                if !offText.isEmpty {
                    guard let v = UInt64(offText) else { throw bad("extent '\(l.prefix(200))' has an invalid offset '\(offText.prefix(40))'") }
                    extOff = v
                }
                }
            }
            if ["FLAT", "VMFS", "SPARSE"].contains(type) && name.isEmpty {
                throw bad("extent '\(l.prefix(200))' names no file (expected: ACCESS SECTORS TYPE \"FILE\" [OFFSET])")
            }
            switch type {
            case "FLAT", "VMFS":
                let ep = try DiskImage.resolveBacking(name: name, of: path, policy: policy == .forbidden ? .confined : policy)
                let start = try checkedMul(extOff, 512, "\(path): VMDK extent offset \(extOff)")
                let end = try checkedAdd(start, bytes, "\(path): VMDK extent at sector \(extOff) of \(sectors) sectors")
                guard end <= UInt64(Int64.max) else { throw bad("extent at sector \(extOff) of \(sectors) sectors ends past any file size") }
                let f = try ImageFile.open(ep, writable: false)
                extents.append(.flat(file: f, offset: start, size: bytes))
            case "ZERO":
                extents.append(.zero(size: bytes))
            case "SPARSE":
                let ep = try DiskImage.resolveBacking(name: name, of: path, policy: policy == .forbidden ? .confined : policy)
                let s = try Self.parseSparse(try ImageFile.open(ep, writable: false))
                // As qemu-img does, a sparse extent is as long as its own header says; the
                // descriptor's sector count is ignored (a lie there cannot shift later extents).
                s.extentSize = s.capacity
                extents.append(.sparse(s))
            default:
                throw VireoError(.unsupported, "\(path): VMDK extent type \(type) is not supported")
            }
            virtualSize = try checkedAdd(virtualSize, extents[extents.count - 1].size, "\(path): VMDK size")
        }
        guard !extents.isEmpty else { throw VireoError(.corrupt, "\(path): VMDK descriptor names no extents") }
    }

    func grainTable(_ s: Sparse, _ i: Int) throws(VireoError) -> [UInt32]? {
        if let t = s.gtCache[i] { return t }
        let sector = UInt64(s.gd[i])
        if sector == 0 { return nil }
        let raw = try s.file.readBytes(Int(s.gtes * 4), at: try checkedMul(sector, 512, "VMDK grain table"), what: "VMDK grain table")
        let t = (0..<Int(s.gtes)).map { le32(raw, $0 * 4) }
        if s.gtCache.count > 4096 { s.gtCache.removeAll() }
        s.gtCache[i] = t
        return t
    }

    /// Grain table entry for a byte offset in a sparse extent.
    func gte(_ s: Sparse, _ off: UInt64) throws(VireoError) -> UInt32 {
        let grain = off / s.grainBytes
        guard let t = try grainTable(s, Int(grain / s.gtes)) else { return 0 }
        return t[Int(grain % s.gtes)]
    }

    func readSparse(_ s: Sparse, into buf: UnsafeMutableRawBufferPointer, at off: UInt64) throws(VireoError) {
        var pos = 0
        while pos < buf.count {
            let o = off + UInt64(pos)
            if o >= s.capacity {
                // The descriptor made the extent longer than its sparse file: the rest is zero.
                // SAFETY: pos < buf.count (loop condition), so buf[pos...] lies inside `buf`.
                UnsafeMutableRawBufferPointer(rebasing: buf[pos...]).initializeMemory(as: UInt8.self, repeating: 0)
                return
            }
            let inGrain = o % s.grainBytes
            let n = Int(min(s.grainBytes - inGrain, UInt64(buf.count - pos), s.capacity - o))
            let part = UnsafeMutableRawBufferPointer(rebasing: buf[pos..<pos + n])
            let e = try gte(s, o)
            if e == 0 || (e == 1 && s.zeroGrains) {
                part.initializeMemory(as: UInt8.self, repeating: 0)
            } else if s.compressed {
                let grain = try decompressGrain(s, sector: UInt64(e))
                grain.withUnsafeBytes { g in part.copyMemory(from: UnsafeRawBufferPointer(rebasing: g[Int(inGrain)..<Int(inGrain) + n])) }
            } else {
                try s.file.read(into: part, at: try checkedAdd(try checkedMul(UInt64(e), 512, "VMDK grain"), inGrain, "VMDK grain"))
            }
            pos += n
        }
    }

    func decompressGrain(_ s: Sparse, sector: UInt64) throws(VireoError) -> [UInt8] {
        if let (k, g) = s.grainCache, k == sector { return g }
        let off = try checkedMul(sector, 512, "VMDK grain")
        let marker = try s.file.readBytes(12, at: off, what: "VMDK grain marker")
        let clen = UInt64(le32(marker, 8))
        guard clen > 0, clen <= s.grainBytes * 2 + 4096 else {
            throw VireoError(.corrupt, "\(path): compressed grain at sector \(sector) has invalid size \(clen)")
        }
        let input = try s.file.readBytes(Int(clen), at: off + 12, what: "VMDK compressed grain")
        var out = [UInt8](repeating: 0, count: Int(s.grainBytes))
        var failure: VireoError?
        let p = path
        input.withUnsafeBytes { i in
            out.withUnsafeMutableBytes { o in
                do throws(VireoError) { try Zlib.inflate(i, into: o, windowBits: Zlib.zlibWindowBits, allowShort: true, what: "\(p): grain at sector \(sector)") } catch { failure = error }
            }
        }
        if let failure { throw failure }
        s.grainCache = (sector, out)
        return out
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(VireoError) {
        try checkRange(offset, buffer.count)
        lock.lock(); defer { lock.unlock() }
        var pos = 0
        var base: UInt64 = 0
        for ext in extents {
            let end = base + ext.size
            while pos < buffer.count {
                let o = offset + UInt64(pos)
                guard o >= base, o < end else { break }
                let n = Int(min(end - o, UInt64(buffer.count - pos)))
                let part = UnsafeMutableRawBufferPointer(rebasing: buffer[pos..<pos + n])
                switch ext {
                case .zero: part.initializeMemory(as: UInt8.self, repeating: 0)
                case .flat(let f, let eo, _): try f.read(into: part, at: eo + (o - base))   // eo + size checked at parse
                case .sparse(let s): try readSparse(s, into: part, at: o - base)
                }
                pos += n
            }
            base = end
        }
        if pos < buffer.count {
            // Unreachable while extents cover virtualSize (they do by construction); never leak memory.
            // SAFETY: pos < buffer.count, so buffer[pos...] lies inside `buffer`.
            UnsafeMutableRawBufferPointer(rebasing: buffer[pos...]).initializeMemory(as: UInt8.self, repeating: 0)
        }
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(VireoError) { throw importedReadOnlyError(path) }
    public func flush() throws(VireoError) {}
    public func discard(offset: UInt64, length: UInt64) throws(VireoError) { throw importedReadOnlyError(path) }
    public func writeZeroes(offset: UInt64, length: UInt64) throws(VireoError) { throw importedReadOnlyError(path) }

    public func blockStatus(at offset: UInt64, maxLength: UInt64) throws(VireoError) -> BlockStatus {
        lock.lock(); defer { lock.unlock() }
        guard offset < virtualSize else { return BlockStatus(state: .zero, length: 0) }
        var base: UInt64 = 0
        for ext in extents {
            let end = base + ext.size
            if offset < end {
                let limit = min(maxLength, end - offset)
                switch ext {
                case .zero: return BlockStatus(state: .zero, length: limit)
                case .flat(_, let eo, _): return BlockStatus(state: .data, length: limit, hostOffset: eo + (offset - base))
                case .sparse(let s):
                    let o = offset - base
                    if o >= s.capacity { return BlockStatus(state: .zero, length: limit) }
                    let limitIn = min(limit, s.capacity - o)
                    func isZero(_ at: UInt64) throws(VireoError) -> (zero: Bool, run: UInt64) {
                        // A missing grain table is one zero run of gtes grains: skip it whole, so
                        // mapping a huge empty extent costs one step per table, not per grain.
                        let span = s.grainBytes * s.gtes
                        if s.gd[Int(at / s.grainBytes / s.gtes)] == 0 { return (true, span - at % span) }
                        let e = try gte(s, at)
                        return (e == 0 || (e == 1 && s.zeroGrains), s.grainBytes - at % s.grainBytes)
                    }
                    let first = try isZero(o)
                    var len = min(first.run, limitIn)
                    while len < limitIn {
                        let next = try isZero(o + len)
                        if next.zero != first.zero { break }
                        len += min(next.run, limitIn - len)
                    }
                    return BlockStatus(state: first.zero ? .zero : .data, length: len, compressed: s.compressed && !first.zero)
                }
            }
            base = end
        }
        return BlockStatus(state: .zero, length: min(maxLength, virtualSize - offset))
    }

    public func close() throws(VireoError) {
        lock.lock(); defer { lock.unlock() }
        for e in extents { if case .flat(let f, _, _) = e { f.close() }; if case .sparse(let s) = e { s.file.close() } }
        file.close()
        closed = true
    }
}
