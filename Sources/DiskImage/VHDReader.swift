import VireoSupport

/// Read-only VHD (Virtual PC / Hyper-V v1): fixed and dynamic disks.
public final class VHDImage: BlockImage, @unchecked Sendable {
    let file: ImageFile
    let lock = ImageLock()
    var closed = false
    public let format = DiskImageFormat.vhd
    public var path: String { file.path }
    public private(set) var virtualSize: UInt64 = 0
    public var isReadOnly: Bool { true }
    public private(set) var clusterSize: UInt64 = 512
    public var backing: BlockImage? { nil }
    public private(set) var isDynamic = false
    var bat: [UInt32] = []
    var blockSize: UInt64 = 0
    var bitmapBytes: UInt64 = 0
    var fixedDataEnd: UInt64 = 0

    init(file: ImageFile) throws(VireoError) {
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
        guard virtualSize <= UInt64(1) << 44 else { throw bad("disk size \(virtualSize) is absurd") }
        switch diskType {
        case 2:
            guard virtualSize <= size - 512 || currentSize <= size - 512 else { throw bad("fixed VHD is shorter than its disk size") }
            fixedDataEnd = size - 512
        case 3:
            isDynamic = true
            let dynOff = be64(foot, 16)
            guard dynOff < size, size - dynOff >= 1024 else { throw bad("dynamic header offset \(dynOff) is outside the file") }
            let dh = try file.readBytes(1024, at: dynOff, what: "VHD dynamic header")
            guard Array(dh[0..<8]) == Array("cxsparse".utf8) else { throw bad("dynamic header has no 'cxsparse' cookie") }
            let tableOff = be64(dh, 16)
            let entries = UInt64(be32(dh, 28))
            blockSize = UInt64(be32(dh, 32))
            guard blockSize >= 512, blockSize <= 256 << 20, blockSize & (blockSize - 1) == 0 else { throw bad("block size \(blockSize) is invalid") }
            guard entries * 4 <= min(size, 64 << 20) else { throw bad("block table of \(entries) entries does not fit the file") }
            guard entries * blockSize >= virtualSize else { throw bad("block table (\(entries) blocks) is too small for the disk size") }
            let raw = try file.readBytes(Int(entries * 4), at: tableOff, what: "VHD block allocation table")
            bat = (0..<Int(entries)).map { be32(raw, $0 * 4) }
            bitmapBytes = alignUp(blockSize / 512 / 8, 512)
            clusterSize = blockSize
        case 4:
            throw VireoError(.unsupported, "\(file.path) is a differencing VHD, which is not supported", hint: "merge it in its original tool first")
        default:
            throw bad("unknown VHD disk type \(diskType)")
        }
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
        let h = hostOffset(offset)
        var len = min(blockSize - offset % blockSize, limit)
        while len < limit {
            if (hostOffset(offset + len) == nil) != (h == nil) { break }
            len += min(blockSize, limit - len)
        }
        return h == nil ? BlockStatus(state: .zero, length: len) : BlockStatus(state: .data, length: len)
    }

    public func close() throws(VireoError) {
        file.close()
        closed = true
    }
}
