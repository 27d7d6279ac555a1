import VireoSupport

/// `qemu-img measure`: the file size a new image needs (QEMU's qcow2/raw measure rules).
public enum ImageMeasure {
    public struct Result: Sendable, Equatable {
        /// Bytes the new image needs for the data it will hold and its metadata.
        public var required: UInt64
        /// Bytes it would take with every cluster allocated.
        public var fullyAllocated: UInt64
    }

    /// Refcount table and block clusters needed to count `clusters` clusters and themselves.
    static func refcountMetadataClusters(_ clusters: UInt64, clusterSize cs: UInt64, refcountBits: UInt64) -> UInt64 {
        let perTable = cs / 8, perBlock = cs * 8 / refcountBits
        var table: UInt64 = 0, blocks: UInt64 = 0, n: UInt64 = 0, last: UInt64
        repeat {
            last = n
            blocks = divRoundUp(clusters + table + blocks, perBlock)
            table = divRoundUp(blocks, perTable)
            n = clusters + blocks + table
        } while n != last
        return blocks + table
    }

    /// Size of a fully allocated qcow2 image: header, L2 tables, L1 table, refcounts, data.
    static func qcow2FullSize(_ size: UInt64, _ o: Qcow2CreateOptions) throws(VireoError) -> UInt64 {
        let cs = o.clusterSize
        let aligned = alignUp(size, cs)
        let l2e: UInt64 = o.extendedL2 ? 16 : 8
        var meta = cs
        let nl2e = alignUp(aligned / cs, cs / l2e)
        let (l2Bytes, o1) = nl2e.multipliedReportingOverflow(by: l2e)
        guard !o1 else { throw VireoError(.invalidArgument, "size \(size) is too large") }
        meta += l2Bytes
        let nl1e = alignUp(l2Bytes / cs, cs / 8)
        meta += nl1e * 8
        let (total, o2) = meta.addingReportingOverflow(aligned)
        guard !o2 else { throw VireoError(.invalidArgument, "size \(size) is too large") }
        meta += refcountMetadataClusters(total / cs, clusterSize: cs, refcountBits: o.refcountBits) * cs
        let (full, o3) = meta.addingReportingOverflow(aligned)
        guard !o3 else { throw VireoError(.invalidArgument, "size \(size) is too large") }
        return full
    }

    /// Measures a new image of `format` and `size` bytes (nothing stored yet), or holding the
    /// contents of `source` (its whole chain) when given.
    public static func measure(format: DiskImageFormat, size: UInt64?, source: BlockImage?, qcow2 o: Qcow2CreateOptions = Qcow2CreateOptions(),
                               preallocation: Preallocation = .off) throws(VireoError) -> Result {
        guard let virtual = source?.virtualSize ?? size else {
            throw VireoError(.invalidArgument, "give --size or an input image")
        }
        switch format {
        case .raw:
            let r = alignUp(virtual, 512)
            return Result(required: r, fullyAllocated: r)
        case .qcow2:
            let cs = o.clusterSize
            guard cs >= 512, cs <= 2 << 20, cs & (cs - 1) == 0 else {
                throw VireoError(.invalidArgument, "cluster size \(cs) is invalid", hint: "use a power of two from 512 to 2M")
            }
            guard [1, 2, 4, 8, 16, 32, 64].contains(o.refcountBits) else {
                throw VireoError(.invalidArgument, "refcount_bits=\(o.refcountBits) is invalid")
            }
            if o.extendedL2 && cs < 16384 { throw VireoError(.invalidArgument, "extended L2 entries need a cluster size of at least 16K") }
            let aligned = alignUp(virtual, cs)
            var data: UInt64 = 0
            if let src = source {
                // Clusters holding data anywhere in the chain count whole; zero and unallocated do not.
                var off: UInt64 = 0
                while off < virtual {
                    let st = try ImageOperations.chainStatus(src, at: off, maxLength: min(virtual - off, 1 << 30))
                    guard st.length > 0 else { break }
                    var next = off + st.length
                    if st.state == .data {
                        next = min(alignUp(next, cs), alignUp(virtual, cs))
                        data += next - off + off % cs
                    }
                    off = next
                }
            }
            if preallocation == .full || preallocation == .falloc { data = aligned }
            let full = try qcow2FullSize(virtual, o)
            return Result(required: full - aligned + data, fullyAllocated: full)
        default:
            throw VireoError(.unsupported, "Vireo measures raw and qcow2 targets", hint: "use -O qcow2 or -O raw")
        }
    }
}
