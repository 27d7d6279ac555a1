#if canImport(Glibc)
import Glibc
#endif
import VireoSupport

extension Qcow2Image {
    /// Writes the disk as it was at internal snapshot `name` into a new qcow2 image at `path`,
    /// backed by the same backing file as this image (so only what the snapshot's own tree
    /// holds is copied: data and zero clusters; unallocated ones read through, as they did).
    /// This image may be in use meanwhile (a VM writing it, through this same object): each
    /// step reads under the image's lock, and the snapshot's clusters never change while it
    /// exists. A failure removes the output: no half-written image is left.
    /// Used to make a clone's base from a machine snapshot (qemu-img's `convert -l` is the peer).
    public func exportSnapshot(_ name: String, to path: String, progress: ProgressHandler? = nil) throws(VireoError) {
        let (snapL1, diskSize) = try snapshotTable(name)
        let backingPath: String? = backingImage?.path ?? header.backingFile.map { b in
            b.hasPrefix("/") ? b : DiskImage.directoryOf(self.path) + "/" + b
        }
        var o = Qcow2CreateOptions(clusterSize: cs)
        o.backingFile = backingPath
        o.backingFormat = backingImage?.format ?? header.backingFormat.flatMap(DiskImageFormat.init(rawValue:))
        if access(path, F_OK) == 0 {
            throw VireoError(.conflict, "\(path) already exists", hint: "remove it or choose another path")
        }
        do throws(VireoError) {
            try Qcow2Image.create(path: path, size: diskSize, options: o)
            let out = try Qcow2Image.open(path: path, readOnly: false, options: OpenOptions(readOnly: false, cache: .unsafe, openBacking: false))
            do throws(VireoError) {
                try copySnapshotTree(snapL1, diskSize: diskSize, into: out, zeroesMatter: backingPath != nil, progress: progress)
                try out.close()
            } catch {
                try? out.close()
                throw error
            }
            // Durable before anyone builds on it.
            let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
            if fd >= 0 { _ = fsync(fd); Glibc.close(fd) }
        } catch {
            unlink(path)
            throw error
        }
        progress?(1)
    }

    /// The snapshot's L1 table (padded to cover its disk size) and disk size.
    private func snapshotTable(_ name: String) throws(VireoError) -> ([UInt64], UInt64) {
        lock.lock(); defer { lock.unlock() }
        try checkOpen()
        guard let i = findSnapshot(name) else {
            throw VireoError(.notFound, "\(path) has no snapshot '\(name)'", hint: "list them with `vireo disk snapshot -l \(path)`")
        }
        let s = snapshots[i]
        let raw = try file.readBytes(Int(s.l1Size) * 8, at: s.l1TableOffset, what: "snapshot L1 table")
        var table = decodeBE64Table(raw, count: Int(s.l1Size))
        let need = Int(divRoundUp(s.diskSize, cs * UInt64(l2Entries)))
        if table.count < need { table += [UInt64](repeating: 0, count: need - table.count) }
        return (table, s.diskSize)
    }

    /// Runs `body` with the snapshot's tree standing in for the active one (under the lock).
    private func withSnapshotTree<T>(_ table: [UInt64], _ body: () throws(VireoError) -> T) throws(VireoError) -> T {
        lock.lock(); defer { lock.unlock() }
        try checkOpen()
        let active = l1
        l1 = table
        defer { l1 = active }
        return try body()
    }

    private func copySnapshotTree(_ table: [UInt64], diskSize: UInt64, into out: Qcow2Image, zeroesMatter: Bool,
                                  progress: ProgressHandler?) throws(VireoError) {
        let step: UInt64 = max(1 << 20, cs)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(step), alignment: 4096)
        defer { buffer.deallocate() }
        var v: UInt64 = 0
        while v < diskSize {
            let want = min(step, diskSize - v)
            // One run of the same kind, read while the snapshot's tree is in place.
            let (kind, length): (ClusterKind, UInt64) = try withSnapshotTree(table) { () throws(VireoError) -> (ClusterKind, UInt64) in
                let (k, n) = try mapRun(v, want)
                let len = min(n, want)
                switch k {
                case .data, .compressed:
                    try readLocked(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(len)]), at: v)
                default: break
                }
                return (k, len)
            }
            guard length > 0 else { throw VireoError(.corrupt, "\(path): snapshot tree maps no bytes at \(v)") }
            switch kind {
            case .data, .compressed:
                let part = UnsafeRawBufferPointer(rebasing: buffer[0..<Int(length)])
                if !isAllZero(part) { try out.write(part, at: v) } else if zeroesMatter { try out.writeZeroes(offset: v, length: length) }
            case .zero:
                if zeroesMatter { try out.writeZeroes(offset: v, length: length) }
            case .unallocated:
                break
            }
            v += length
            progress?(Double(v) / Double(diskSize))
        }
    }
}
