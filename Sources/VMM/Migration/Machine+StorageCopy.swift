import Virtio
import VireoSupport

/// Storage migration, the source side: every disk's contents go to the destination in the
/// migration stream while the guest runs (a bulk copy), then, round by round with the RAM, the
/// chunks the guest wrote meanwhile (`DirtyTrackingBlockBackend`), and the last of them during
/// stop-and-copy. The destination writes them into disks of its own: the copy is flattened
/// (what the guest reads through a backing chain lands in one image).
extension Machine {
    /// Starts recording guest writes on every read-write disk (before the bulk copy reads it).
    func startDiskTracking() {
        for d in openDisks { d.tracker?.startTracking() }
    }

    func stopDiskTracking() {
        for d in openDisks { d.tracker?.stopTracking() }
    }

    /// The chunks written since the last call, per disk (empty for read-only disks).
    func takeDiskDirty() -> [[UInt64]] {
        openDisks.map { $0.tracker?.takeDirty() ?? [] }
    }

    static func dirtyDiskBytes(_ bits: [[UInt64]]) -> UInt64 {
        bits.reduce(0) { $0 &+ $1.reduce(0) { $0 &+ UInt64($1.nonzeroBitCount) } } &* DirtyTrackingBlockBackend.chunkSize
    }

    /// The bulk copy: each disk whole, as the guest reads it; ranges that read zero are not sent
    /// (the destination's new disk reads zero there).
    func sendDisksWhole(_ channel: MigrationChannel) throws {
        let step = UInt64(MigrationWire.maxDiskBytes)
        var buffer = [UInt8](repeating: 0, count: Int(step))
        for (i, d) in openDisks.enumerated() {
            let size = d.backend.size
            var offset: UInt64 = 0
            while offset < size {
                let n = min(step, size - offset)
                try buffer.withUnsafeMutableBytes { try d.backend.read(at: offset, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<Int(n)])) }
                if !Self.allZero(buffer, Int(n)) { try sendDiskBytes(channel, disk: i, offset: offset, buffer, Int(n)) }
                offset += n
                if migration.cancelRequested.load(ordering: .acquiring) { throw VireoError(.conflict, "migration cancelled; the VM runs on here") }
            }
        }
    }

    /// Sends the chunks whose bit is set, each run of adjacent chunks in messages of at most
    /// 1 MiB: the bytes, or a zero marker when the range reads zero now (a discard).
    func sendDirtyDisks(_ bits: [[UInt64]], _ channel: MigrationChannel) throws {
        let chunk = DirtyTrackingBlockBackend.chunkSize
        let perMessage = Int(UInt64(MigrationWire.maxDiskBytes) / chunk)
        var buffer = [UInt8](repeating: 0, count: Int(MigrationWire.maxDiskBytes))
        for (i, words) in bits.enumerated() where i < openDisks.count && !words.isEmpty {
            let d = openDisks[i]
            let size = d.backend.size
            let chunks = Int((size + chunk - 1) / chunk)
            var c = 0
            while c < chunks {
                guard c / 64 < words.count, words[c / 64] & (UInt64(1) << UInt64(c % 64)) != 0 else { c += 1; continue }
                var e = c + 1
                while e < chunks, e - c < perMessage, e / 64 < words.count, words[e / 64] & (UInt64(1) << UInt64(e % 64)) != 0 { e += 1 }
                let offset = UInt64(c) * chunk
                let n = Int(min(UInt64(e - c) * chunk, size - offset))
                try buffer.withUnsafeMutableBytes { try d.backend.read(at: offset, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<n])) }
                if Self.allZero(buffer, n) {
                    try channel.send([MigrationWire.Kind.diskZeros.rawValue] + MigrationChannel.le32(UInt32(i)) + MigrationChannel.le64(offset) + MigrationChannel.le64(UInt64(n)))
                } else {
                    try sendDiskBytes(channel, disk: i, offset: offset, buffer, n)
                }
                c = e
            }
        }
    }

    private func sendDiskBytes(_ channel: MigrationChannel, disk: Int, offset: UInt64, _ buffer: [UInt8], _ n: Int) throws {
        try channel.send([MigrationWire.Kind.disk.rawValue] + MigrationChannel.le32(UInt32(disk)) + MigrationChannel.le64(offset) + MigrationChannel.le32(UInt32(n)))
        try buffer.withUnsafeBytes { try channel.send(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        migration.update { $0.diskBytesSent &+= UInt64(n); $0.bytesSent = channel.bytesSent }
    }

    private static func allZero(_ b: [UInt8], _ n: Int) -> Bool {
        b.withUnsafeBytes { raw in
            let whole = min(n, raw.count) / 8
            for w in 0..<whole where raw.loadUnaligned(fromByteOffset: w * 8, as: UInt64.self) != 0 { return false }
            for k in (whole * 8)..<min(n, raw.count) where raw[k] != 0 { return false }
            return true
        }
    }
}
