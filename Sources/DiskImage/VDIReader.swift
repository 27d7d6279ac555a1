import VireoSupport

/// Read-only VDI (VirtualBox Disk Image, header version 1.1): dynamic ("normal") and fixed
/// ("static") images. Differencing and undo images name their parent by UUID only and are refused.
///
/// Layout (all little-endian): a 64-byte text line, the signature 0xbeda107f at 0x40, then
/// the header: version, header size, image type, flags, description, the offsets of the block
/// map and of the data, geometry, the disk size (u64 at 0x170), block size, per-block extra
/// bytes, the number of blocks and of allocated blocks. The block map holds one u32 per block:
/// the index of its data block, 0xffffffff (never written) or 0xfffffffe (discarded), both
/// reading as zero.
public final class VDIImage: BlockImage, @unchecked Sendable {
    let file: ImageFile
    let lock = ImageLock()
    public let format = DiskImageFormat.vdi
    public var path: String { file.path }
    public private(set) var virtualSize: UInt64 = 0
    public var isReadOnly: Bool { true }
    public private(set) var clusterSize: UInt64 = 512
    public var backing: BlockImage? { nil }
    /// "dynamic" or "fixed".
    public private(set) var subformat = "dynamic"
    var blockMap: [UInt32] = []
    var blockSize: UInt64 = 0
    /// Where data block 0 starts and the distance between data blocks.
    var dataStart: UInt64 = 0
    var blockStride: UInt64 = 0

    static let signature: UInt32 = 0xbeda_107f
    static let unallocated: UInt32 = 0xffff_ffff
    static let discarded: UInt32 = 0xffff_fffe
    /// Largest disk accepted (VirtualBox's own limit is below this).
    static let maxDiskSize: UInt64 = 64 << 40
    /// Largest block map read into memory (64 Mi blocks).
    static let maxBlockMapBytes: UInt64 = 256 << 20

    init(file: ImageFile) throws(VireoError) {
        self.file = file
        let p = file.path
        func bad(_ m: String) -> VireoError { VireoError(.corrupt, "\(p): \(m)", hint: "the VDI file is damaged or hostile; do not use it") }
        let size = try file.size()
        guard size >= 512 else { throw bad("too short for a VDI header (\(size) bytes)") }
        let h = try file.readBytes(512, at: 0, what: "VDI header")
        guard le32(h, 0x40) == Self.signature else { throw bad("no VDI signature 0xbeda107f at offset 0x40") }
        let version = le32(h, 0x44)
        guard version == 0x0001_0001 else {
            throw VireoError(.unsupported, "\(p): VDI header version \(version >> 16).\(version & 0xffff) is not supported (only 1.1)",
                             hint: "convert it with VBoxManage clonemedium --format VDI, or qemu-img convert -O qcow2")
        }
        let headerSize = UInt64(le32(h, 0x48))
        guard headerSize >= 0x180, headerSize <= 512 else { throw bad("header size \(headerSize) is invalid") }
        switch le32(h, 0x4c) {
        case 1: subformat = "dynamic"
        case 2: subformat = "fixed"
        case 3, 4:
            throw VireoError(.unsupported, "\(p) is a VirtualBox differencing (snapshot) VDI, which Vireo does not read",
                             hint: "merge it into its parent first (VBoxManage clonemedium of the snapshot), then import the result")
        case let t: throw bad("unknown VDI image type \(t)")
        }
        let mapOffset = UInt64(le32(h, 0x154))
        let dataOffset = UInt64(le32(h, 0x158))
        let sectorSize = le32(h, 0x168)
        guard sectorSize == 512 else { throw VireoError(.unsupported, "\(p): VDI sector size \(sectorSize) is not supported (only 512)") }
        let diskSize = le64(h, 0x170)
        blockSize = UInt64(le32(h, 0x178))
        let blockExtra = UInt64(le32(h, 0x17c))
        let blocks = UInt64(le32(h, 0x180))
        guard diskSize <= Self.maxDiskSize else { throw bad("disk size \(diskSize) is absurd (limit \(Self.maxDiskSize))") }
        guard blockSize >= 512, blockSize <= 256 << 20, blockSize % 512 == 0 else { throw bad("block size \(blockSize) is invalid") }
        guard blockExtra <= 1 << 20, blockExtra % 512 == 0 else { throw bad("per-block extra data of \(blockExtra) bytes is invalid") }
        // blocks < 2^32 and blockSize <= 2^28: the product fits.
        guard blocks * blockSize >= diskSize else { throw bad("\(blocks) blocks of \(blockSize) bytes are too few for a \(diskSize)-byte disk") }
        let mapBytes = blocks * 4
        guard mapBytes <= Self.maxBlockMapBytes else { throw bad("block map of \(blocks) entries is too large") }
        guard mapOffset >= 0x200 || blocks == 0 else { throw bad("block map at offset \(mapOffset) overlaps the header") }
        let mapEnd = try checkedAdd(mapOffset, mapBytes, "\(p): VDI block map")
        guard mapEnd <= size else { throw bad("block map (\(blocks) entries at \(mapOffset)) extends past the end of the file") }
        guard dataOffset >= mapEnd || blocks == 0 else { throw bad("data area at \(dataOffset) overlaps the block map") }
        virtualSize = diskSize
        clusterSize = blockSize
        dataStart = dataOffset + blockExtra       // both < 2^33
        blockStride = blockSize + blockExtra
        let raw = try file.readBytes(Int(mapBytes), at: mapOffset, what: "VDI block map")
        blockMap = (0..<Int(blocks)).map { le32(raw, $0 * 4) }
        // Every allocated block must lie inside the file: nothing reads outside what the header
        // describes, and a lying map is caught now rather than read as silent zeros.
        for (i, e) in blockMap.enumerated() where e < Self.discarded {
            let start = try checkedAdd(dataStart, try checkedMul(UInt64(e), blockStride, "\(p): VDI block \(i)"), "\(p): VDI block \(i)")
            let end = try checkedAdd(start, blockSize, "\(p): VDI block \(i)")
            guard end <= size else { throw bad("block \(i) is mapped to data block \(e), past the end of the file") }
        }
    }

    /// Host offset of a guest offset, nil when the block reads as zero.
    func hostOffset(_ off: UInt64) -> UInt64? {
        let b = Int(off / blockSize)
        guard b < blockMap.count, blockMap[b] < Self.discarded else { return nil }
        return dataStart + UInt64(blockMap[b]) * blockStride + off % blockSize   // checked at open
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(VireoError) {
        try checkRange(offset, buffer.count)
        lock.lock(); defer { lock.unlock() }
        var pos = 0
        while pos < buffer.count {
            let o = offset + UInt64(pos)
            let n = Int(min(blockSize - o % blockSize, UInt64(buffer.count - pos)))
            // SAFETY: 1 <= n <= buffer.count - pos, so the slice lies inside `buffer`.
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
        let first = hostOffset(offset)
        var len = min(blockSize - offset % blockSize, limit)
        while len < limit {
            let next = hostOffset(offset + len)
            if let f = first {
                guard next == f + len else { break }   // data runs end where the file is not contiguous
            } else if next != nil { break }
            len += min(blockSize, limit - len)
        }
        return first.map { BlockStatus(state: .data, length: len, hostOffset: $0) } ?? BlockStatus(state: .zero, length: len)
    }

    public func close() throws(VireoError) {
        lock.lock(); defer { lock.unlock() }
        file.close()
    }
}
