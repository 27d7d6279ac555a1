import DiskImage
import GuestMemory
import VireoConfig
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// The destination of a live migration (`vireo run --incoming ADDRESS`): it waits for the
/// source, takes guest RAM and then the machine's state into a `RestoreSource`, and finishes the
/// hand-over once the machine is built (`ready`, then `awaitGo`, then `confirmRunning`).
/// Everything the stream says is checked before it is used; bad input ends the migration with
/// one line, and the source's VM runs on.
public final class IncomingMigration: @unchecked Sendable {
    public var source: RestoreSource
    let channel: MigrationChannel
    /// Bytes of RAM received, and in how long (for the report).
    public let pagesReceived: UInt64
    public let zeroPages: UInt64

    init(source: RestoreSource, channel: MigrationChannel, pagesReceived: UInt64, zeroPages: UInt64) {
        self.source = source; self.channel = channel; self.pagesReceived = pagesReceived; self.zeroPages = zeroPages
    }

    /// Listens on `address`, accepts the source and receives everything up to the state.
    /// `token`: what the source must present (the daemon's per-migration token; nil accepts any).
    /// `disks`: this side's disks, in the VM's order, for a storage migration (the source's
    /// disk contents are written into them; each must have the source disk's virtual size).
    public static func receive(on address: MigrationAddress, token: [UInt8]? = nil, disks: [VirtioConfig.Disk] = []) throws -> IncomingMigration {
        let channel = try address.acceptOne()
        channel.setReceiveTimeout(seconds: 120)
        let hello = try MigrationWire.Hello.receive(channel)
        if let token, !constantTimeEqual(token, hello.token) {
            throw VireoError(.permissionDenied, "incoming migration: the source did not present this migration's token; nothing was received",
                             hint: "the source's daemon passes the token the destination's daemon made for this migration")
        }
        var layout: [(base: UInt64, size: UInt64)] = []
        var total: UInt64 = 0
        for r in hello.regions {
            let (sum, o) = total.addingReportingOverflow(r.size)
            guard !o else { throw VireoError(.corrupt, "incoming migration: memory sizes overflow") }
            total = sum
            layout.append((r.base, r.size))
        }
        try Machine.validateMemorySize(total)
        let targets = try hello.storageCopy ? openTargets(disks, sizes: hello.diskSizes) : []
        defer { for t in targets { try? t.close() } }
        let memory = try GuestMemory(layout: layout, options: GuestMemory.Options(hugepages: true))
        var pages: UInt64 = 0, zeros: UInt64 = 0
        var diskBuffer: [UInt8] = []
        while true {
            let kind = try channel.receiveU8()
            switch MigrationWire.Kind(rawValue: kind) {
            case .disk?:
                let h = try channel.receive(16)
                let (disk, offset, n) = (MigrationChannel.u32(h, 0), MigrationChannel.u64(h, 4), MigrationChannel.u32(h, 12))
                guard Int(disk) < targets.count, n >= 1, n <= MigrationWire.maxDiskBytes, offset % 512 == 0,
                      offset <= targets[Int(disk)].virtualSize, UInt64(n) <= targets[Int(disk)].virtualSize - offset else {
                    throw VireoError(.corrupt, "incoming migration: disk bytes for disk \(disk) at \(offset)+\(n) lie outside the disks received")
                }
                if diskBuffer.count < Int(n) { diskBuffer = [UInt8](repeating: 0, count: Int(MigrationWire.maxDiskBytes)) }
                try diskBuffer.withUnsafeMutableBytes { try channel.receive(into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<Int(n)])) }
                try diskBuffer.withUnsafeBytes { try targets[Int(disk)].write(UnsafeRawBufferPointer(rebasing: $0[0..<Int(n)]), at: offset) }
            case .diskZeros?:
                let h = try channel.receive(20)
                let (disk, offset, n) = (MigrationChannel.u32(h, 0), MigrationChannel.u64(h, 4), MigrationChannel.u64(h, 12))
                guard Int(disk) < targets.count, n >= 1, offset % 512 == 0,
                      offset <= targets[Int(disk)].virtualSize, n <= targets[Int(disk)].virtualSize - offset else {
                    throw VireoError(.corrupt, "incoming migration: a zero range for disk \(disk) at \(offset)+\(n) lies outside the disks received")
                }
                try targets[Int(disk)].writeZeroes(offset: offset, length: n)
            case .pages?:
                let h = try channel.receive(12)
                let address = MigrationChannel.u64(h, 0), n = MigrationChannel.u32(h, 8)
                guard n >= 1, n <= MigrationWire.maxPagesPerMessage, address % MigrationWire.pageSize == 0 else {
                    throw VireoError(.corrupt, "incoming migration: a page message of \(n) pages at \(hex(address))")
                }
                let bytes = UInt64(n) * MigrationWire.pageSize
                guard memory.contains(address, count: bytes) else {
                    throw VireoError(.corrupt, "incoming migration: pages at \(hex(address))+\(bytes) lie outside guest RAM")
                }
                try channel.receive(into: try memory.buffer(at: address, count: bytes))
                pages &+= UInt64(n)
            case .zeros?:
                let h = try channel.receive(12)
                let address = MigrationChannel.u64(h, 0), n = MigrationChannel.u32(h, 8)
                let bytes = UInt64(n) * MigrationWire.pageSize
                guard n >= 1, n <= 1 << 20, address % MigrationWire.pageSize == 0, memory.contains(address, count: bytes) else {
                    throw VireoError(.corrupt, "incoming migration: a zero-page message of \(n) pages at \(hex(address))")
                }
                try memory.discard(at: address, count: bytes)
                zeros &+= UInt64(n)
            case .state?:
                let n = try channel.receiveU32()
                guard n >= UInt32(SnapshotFile.headerSize), n <= UInt32(SnapshotFile.maxBody + SnapshotFile.headerSize) else {
                    throw VireoError(.corrupt, "incoming migration: a machine state of \(n) bytes")
                }
                let snapshot = try SnapshotFile.decode(try channel.receive(Int(n)), source: "the migration stream")
                guard snapshot.memory.map({ [$0.guestBase, $0.size] }) == layout.map({ [$0.base, $0.size] }) else {
                    throw VireoError(.corrupt, "incoming migration: the machine state's memory layout is not the RAM sent")
                }
                for t in targets { try t.flush() }
                var source = RestoreSource(snapshot: snapshot, memoryPath: "")
                source.receivedMemory = memory
                source.revertsDisks = false
                return IncomingMigration(source: source, channel: channel, pagesReceived: pages, zeroPages: zeros)
            default:
                throw VireoError(.corrupt, "incoming migration: unknown message kind \(kind)")
            }
        }
    }

    /// Opens this side's disks to receive a storage migration: one per source disk, each of the
    /// source disk's virtual size, written through the DiskImage library (qcow2 or raw).
    static func openTargets(_ disks: [VirtioConfig.Disk], sizes: [UInt64]) throws -> [any BlockImage] {
        guard !disks.isEmpty || sizes.isEmpty else {
            throw VireoError(.invalidArgument, "incoming migration: the source copies \(sizes.count) disk(s), and this VMM was given none to receive them",
                             hint: "start the destination with --config naming disks of its own (the daemon does so for vireo vm migrate --storage copy)")
        }
        guard disks.count == sizes.count else {
            throw VireoError(.invalidArgument, "incoming migration: the source copies \(sizes.count) disk(s); this VMM's configuration has \(disks.count)")
        }
        var out: [any BlockImage] = []
        do {
            for (d, size) in zip(disks, sizes) {
                let format = d.format.flatMap { DiskImageFormat(name: $0.rawValue) }
                guard format == .qcow2 || format == .raw else {
                    throw VireoError(.invalidArgument, "incoming migration: disk \(d.path) must be declared qcow2 or raw to receive a copy")
                }
                var o = OpenOptions(readOnly: false)
                o.locking = true
                let image = try DiskImage.open(path: d.path, format: format, readOnly: false, options: o)
                out.append(image)
                guard image.virtualSize & ~511 == size else {
                    throw VireoError(.invalidArgument, "incoming migration: disk \(d.path) holds \(image.virtualSize) bytes; the source's disk holds \(size)",
                                     hint: "create the destination's disk with the source disk's virtual size")
                }
            }
        } catch {
            for i in out { try? i.close() }
            throw error
        }
        return out
    }

    /// Tells the source the machine is restored (`error` nil) or why it could not be.
    public func ready(error: String?) throws {
        let text = Array((error ?? "").utf8.prefix(Int(MigrationWire.maxReadyText)))
        try channel.send([MigrationWire.Kind.ready.rawValue] + MigrationChannel.le32(UInt32(text.count)) + text)
    }

    /// Waits for the source's word that this VMM may run the guest. Throws when the source went
    /// away first: then the guest stays with the source, and this VMM must not run it.
    public func awaitGo() throws {
        channel.setReceiveTimeout(seconds: 60)
        guard try channel.receiveU8() == MigrationWire.Kind.go.rawValue else {
            throw VireoError(.corrupt, "incoming migration: the source answered out of turn")
        }
    }

    /// Tells the source the guest runs here now (it then ends).
    public func confirmRunning() {
        try? channel.send([MigrationWire.Kind.running.rawValue])
    }
}

/// Compares two byte strings in time that depends on their lengths only (tokens).
func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard a.count == b.count else { return false }
    var d: UInt8 = 0
    for i in a.indices { d |= a[i] ^ b[i] }
    return d == 0
}
