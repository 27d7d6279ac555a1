#if canImport(Glibc)
import Glibc
#endif
import VireoSupport

/// One extent of `map`: where guest bytes come from (qemu-img map's fields).
public struct MapEntry: Sendable, Equatable {
    public var start: UInt64
    public var length: UInt64
    /// Which image of the chain holds it (0: the top image).
    public var depth: Int
    public var present: Bool
    public var zero: Bool
    public var data: Bool
    public var offset: UInt64?
    public var compressed: Bool
    public var file: String?
}

/// Progress callback: fraction done, 0...1.
public typealias ProgressHandler = (Double) -> Void

public enum ImageOperations {
    static let chunk: UInt64 = 2 << 20

    /// The allocation map of an image through its whole backing chain.
    public static func map(_ image: BlockImage) throws(VireoError) -> [MapEntry] {
        var out: [MapEntry] = []
        var off: UInt64 = 0
        let size = image.virtualSize
        while off < size {
            var img: BlockImage? = image
            var depth = 0
            var entry: MapEntry?
            var remaining = size - off
            while let cur = img {
                if off >= cur.virtualSize {
                    entry = MapEntry(start: off, length: remaining, depth: depth, present: false, zero: true, data: false, offset: nil, compressed: false, file: nil)
                    break
                }
                let st = try cur.blockStatus(at: off, maxLength: min(remaining, cur.virtualSize - off))
                guard st.length > 0 else { break }
                remaining = min(remaining, st.length)
                switch st.state {
                case .data:
                    entry = MapEntry(start: off, length: remaining, depth: depth, present: true, zero: false, data: true,
                                     offset: st.hostOffset, compressed: st.compressed, file: cur.path)
                case .zero:
                    entry = MapEntry(start: off, length: remaining, depth: depth, present: true, zero: true, data: false, offset: nil, compressed: false, file: nil)
                case .unallocated:
                    if cur.backing == nil {
                        entry = MapEntry(start: off, length: remaining, depth: depth, present: false, zero: true, data: false, offset: nil, compressed: false, file: nil)
                    }
                }
                if entry != nil { break }
                img = cur.backing
                depth += 1
            }
            guard var e = entry else {
                throw VireoError(.internalError, "map made no progress at offset \(off) of \(image.path)")
            }
            if var last = out.last, last.depth == e.depth, last.present == e.present, last.zero == e.zero, last.data == e.data,
               last.compressed == e.compressed, last.file == e.file,
               (last.offset == nil && e.offset == nil) || (last.offset.map { $0 + last.length } == e.offset) {
                last.length += e.length
                out[out.count - 1] = last
            } else {
                if !e.data { e.offset = nil }
                out.append(e)
            }
            off += e.length
        }
        return out
    }

    public struct ConvertOptions: Sendable {
        public var format: DiskImageFormat = .qcow2
        public var compress = false
        public var qcow2 = Qcow2CreateOptions()
        public var preallocation: Preallocation = .off
        public var cache: CacheMode = .unsafe
        public init() {}
    }

    /// Copies the guest-visible contents of `src` into a new image at `dst`; zero areas stay thin.
    /// A conversion that fails removes the output: no half-written image is left behind.
    public static func convert(_ src: BlockImage, to dst: String, options: ConvertOptions,
                               progress: ProgressHandler? = nil) throws(VireoError) {
        if options.compress && options.format == .qcow2 && options.qcow2.dataFile != nil {
            throw VireoError(.invalidArgument, "compression (-c) cannot be used with an external data file")
        }
        do {
            try convertBody(src, to: dst, options: options, progress: progress)
        } catch {
            _ = unlink(dst)
            if options.format == .qcow2, let d = options.qcow2.dataFile { _ = unlink(DiskImage.resolveDataFilePath(d, of: dst)) }
            throw error
        }
    }

    static func convertBody(_ src: BlockImage, to dst: String, options: ConvertOptions,
                            progress: ProgressHandler?) throws(VireoError) {
        let size = src.virtualSize
        switch options.format {
        case .raw:
            try RawImage.create(path: dst, size: size, preallocation: options.preallocation)
        case .qcow2:
            var q = options.qcow2
            q.preallocation = options.preallocation
            q.backingFile = nil
            try Qcow2Image.create(path: dst, size: size, options: q)
        default:
            throw VireoError(.unsupported, "cannot write \(options.format) images", hint: "convert to qcow2 or raw")
        }
        let out = try DiskImage.open(path: dst, format: options.format,
                                     options: OpenOptions(readOnly: false, cache: options.cache, openBacking: false))
        let qout = out as? Qcow2Image
        let step = options.compress ? max(out.clusterSize, 65536) : max(chunk, out.clusterSize)
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(step), alignment: 4096)
        defer { buf.deallocate() }
        var off: UInt64 = 0
        let preallocated = options.preallocation != .off
        while off < size {
            let n = min(step, size - off)
            // Skip what the whole source chain leaves unallocated or zero.
            // Work in whole output clusters (off stays cluster aligned).
            let g0 = out.clusterSize
            let st = try chainStatus(src, at: off, maxLength: n)
            let skip = st.length / g0 * g0
            if st.state != .data && !preallocated && skip > 0 {
                off += skip
                progress?(Double(off) / Double(size))
                continue
            }
            let len = st.state == .data ? min(alignUp(st.length, g0), n) : min(max(skip, g0), n)
            let part = UnsafeMutableRawBufferPointer(rebasing: buf[0..<Int(len)])
            try src.read(into: part, at: off)
            // Write non-zero clusters only (zero detection keeps the output thin).
            let g = out.clusterSize
            var p: UInt64 = 0
            while p < len {
                let w = min(g - ((off + p) % g), len - p)
                var q = p + w
                let z = isAllZero(UnsafeRawBufferPointer(rebasing: part[Int(p)..<Int(q)]))
                // Extend over following clusters with the same zero-ness.
                while q < len {
                    let w2 = min(g, len - q)
                    if isAllZero(UnsafeRawBufferPointer(rebasing: part[Int(q)..<Int(q + w2)])) != z { break }
                    q += w2
                    if options.compress { break }
                }
                if !z || preallocated {
                    if z { try out.writeZeroes(offset: off + p, length: q - p) } else if options.compress, let qo = qout {
                        var c = p
                        while c < q {
                            let cl = min(g - ((off + c) % g), q - c)
                            let piece = UnsafeRawBufferPointer(rebasing: part[Int(c)..<Int(c + cl)])
                            let done = (off + c) % g == 0 ? try qo.writeCompressed(piece, at: off + c) : false
                            if !done {
                                try out.write(piece, at: off + c)
                            }
                            c += cl
                        }
                    } else {
                        try out.write(UnsafeRawBufferPointer(rebasing: part[Int(p)..<Int(q)]), at: off + p)
                    }
                }
                p = q
            }
            off += len
            progress?(Double(off) / Double(size))
        }
        try out.close()
        progress?(1)
    }

    /// Status through the chain: `.data` if any layer stores data, else zero/unallocated.
    static func chainStatus(_ image: BlockImage, at off: UInt64, maxLength: UInt64) throws(VireoError) -> BlockStatus {
        var img: BlockImage? = image
        var limit = maxLength
        while let cur = img {
            if off >= cur.virtualSize { return BlockStatus(state: .zero, length: limit) }
            let st = try cur.blockStatus(at: off, maxLength: min(limit, cur.virtualSize - off))
            guard st.length > 0 else { return BlockStatus(state: .zero, length: limit) }
            limit = min(limit, st.length)
            if st.state != .unallocated { return BlockStatus(state: st.state, length: limit) }
            img = cur.backing
        }
        return BlockStatus(state: .unallocated, length: limit)
    }

    public enum CompareResult: Equatable, Sendable {
        case identical
        case mismatch(offset: UInt64)
    }

    /// Compares guest-visible contents; a larger image must read zero past the smaller one's end
    /// (qemu-img compare's default, non-strict mode).
    public static func compare(_ a: BlockImage, _ b: BlockImage, progress: ProgressHandler? = nil) throws(VireoError) -> CompareResult {
        let common = min(a.virtualSize, b.virtualSize)
        let total = max(a.virtualSize, b.virtualSize)
        let ba = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(chunk), alignment: 4096)
        let bb = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(chunk), alignment: 4096)
        defer { ba.deallocate(); bb.deallocate() }
        var off: UInt64 = 0
        while off < common {
            let n = min(chunk, common - off)
            let sa = try chainStatus(a, at: off, maxLength: n)
            let sb = try chainStatus(b, at: off, maxLength: sa.length)
            if sa.state != .data && sb.state != .data {
                off += sb.length
                progress?(Double(off) / Double(total))
                continue
            }
            let len = Int(sb.length)
            let pa = UnsafeMutableRawBufferPointer(rebasing: ba[0..<len]), pb = UnsafeMutableRawBufferPointer(rebasing: bb[0..<len])
            try a.read(into: pa, at: off)
            try b.read(into: pb, at: off)
            if !pa.elementsEqual(pb) {
                var i = 0
                while i < len && pa[i] == pb[i] { i += 1 }
                return .mismatch(offset: (off + UInt64(i)) & ~511)
            }
            off += UInt64(len)
            progress?(Double(off) / Double(total))
        }
        let longer = a.virtualSize > b.virtualSize ? a : b
        while off < total {
            let n = min(chunk, total - off)
            let st = try chainStatus(longer, at: off, maxLength: n)
            if st.state == .data {
                let p = UnsafeMutableRawBufferPointer(rebasing: ba[0..<Int(st.length)])
                try longer.read(into: p, at: off)
                if let i = p.firstIndex(where: { $0 != 0 }) { return .mismatch(offset: (off + UInt64(i)) & ~511) }
            }
            off += st.length
        }
        progress?(1)
        return .identical
    }

    /// Writes the top image's own data into its backing file; then empties the top image
    /// unless `keep` (qemu-img commit -d).
    public static func commit(path: String, format: DiskImageFormat? = nil, keep: Bool = false,
                              options: OpenOptions = OpenOptions(), progress: ProgressHandler? = nil) throws(VireoError) {
        var ro = options
        ro.readOnly = true
        let top = try DiskImage.open(path: path, format: format, options: ro)
        guard let q = top as? Qcow2Image, let bname = q.header.backingFile, let oldBacking = top.backing else {
            throw VireoError(.invalidArgument, "\(path) has no backing file to commit into")
        }
        let bpath = try DiskImage.resolveBacking(name: bname, of: path, policy: options.backingPolicy)
        let bfmt = oldBacking.format
        try oldBacking.close()
        var rw = options
        rw.readOnly = false
        let base = try DiskImage.open(path: bpath, format: bfmt, options: rw)
        if base.virtualSize < top.virtualSize {
            if let bq = base as? Qcow2Image { try bq.resize(to: top.virtualSize) }
            else if let br = base as? RawImage { try br.resize(to: top.virtualSize) }
        }
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(chunk), alignment: 4096)
        defer { buf.deallocate() }
        var off: UInt64 = 0
        let size = top.virtualSize
        while off < size {
            let st = try top.blockStatus(at: off, maxLength: min(chunk, size - off))
            guard st.length > 0 else { break }
            switch st.state {
            case .unallocated: break
            case .zero: try base.writeZeroes(offset: off, length: st.length)
            case .data:
                let p = UnsafeMutableRawBufferPointer(rebasing: buf[0..<Int(st.length)])
                try top.read(into: p, at: off)
                try base.write(UnsafeRawBufferPointer(p), at: off)
            }
            off += st.length
            progress?(Double(off) / Double(size))
        }
        try base.close()
        try top.close()
        if !keep {
            let t = try Qcow2Image.open(path: path, options: OpenOptions(readOnly: false, backingPolicy: options.backingPolicy, openBacking: false))
            try t.makeEmpty()
            try t.close()
        }
    }

    /// Points `path` at a new backing file. Safe mode first copies into the image every range
    /// where the old and new backing contents differ, so the guest sees no change.
    /// `newBacking` nil makes the image standalone.
    public static func rebase(path: String, newBacking: String?, newFormat: DiskImageFormat?, unsafe: Bool,
                              options: OpenOptions = OpenOptions(), progress: ProgressHandler? = nil) throws(VireoError) {
        var o = options
        o.readOnly = false
        o.openBacking = !unsafe
        let top = try Qcow2Image.open(path: path, options: o)
        var fmt = newFormat
        if !unsafe {
            var newImg: BlockImage? = nil
            if let nb = newBacking {
                let resolved = try DiskImage.resolveBacking(name: nb, of: path, policy: options.backingPolicy)
                let ni = try DiskImage.open(path: resolved, format: newFormat, readOnly: true, options: options)
                newImg = ni
                if fmt == nil { fmt = ni.format }
            }
            let size = top.virtualSize
            let c = top.clusterSize
            let step = max(c, 65536) / c * c
            let b1 = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(step), alignment: 4096)
            let b2 = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(step), alignment: 4096)
            defer { b1.deallocate(); b2.deallocate() }
            var off: UInt64 = 0
            while off < size {
                let st = try top.blockStatus(at: off, maxLength: min(step, size - off))
                guard st.length > 0 else { break }
                if st.state == .unallocated {
                    let n = Int(st.length)
                    let p1 = UnsafeMutableRawBufferPointer(rebasing: b1[0..<n]), p2 = UnsafeMutableRawBufferPointer(rebasing: b2[0..<n])
                    try top.readFromBacking(p1, at: off)
                    if let ni = newImg, off < ni.virtualSize {
                        let avail = Int(min(UInt64(n), ni.virtualSize - off))
                        p2.initializeMemory(as: UInt8.self, repeating: 0)
                        try ni.read(into: UnsafeMutableRawBufferPointer(rebasing: p2[0..<avail]), at: off)
                    } else {
                        p2.initializeMemory(as: UInt8.self, repeating: 0)
                    }
                    if !p1.elementsEqual(p2) { try top.write(UnsafeRawBufferPointer(p1), at: off) }
                }
                off += st.length
                progress?(Double(off) / Double(size))
            }
            try newImg?.close()
            try top.flush()
        } else if let nb = newBacking, fmt == nil {
            if let resolved = try? DiskImage.resolveBacking(name: nb, of: path, policy: options.backingPolicy), fileExists(resolved) {
                fmt = try? DiskImage.probe(path: resolved)
            }
        }
        try top.setBackingFile(newBacking, format: fmt)
        try top.close()
    }
}
