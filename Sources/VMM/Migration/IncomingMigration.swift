import GuestMemory
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
    public let source: RestoreSource
    let channel: MigrationChannel
    /// Bytes of RAM received, and in how long (for the report).
    public let pagesReceived: UInt64
    public let zeroPages: UInt64

    init(source: RestoreSource, channel: MigrationChannel, pagesReceived: UInt64, zeroPages: UInt64) {
        self.source = source; self.channel = channel; self.pagesReceived = pagesReceived; self.zeroPages = zeroPages
    }

    /// Listens on `address`, accepts the source and receives everything up to the state.
    public static func receive(on address: MigrationAddress) throws -> IncomingMigration {
        let channel = try address.acceptOne()
        channel.setReceiveTimeout(seconds: 120)
        let hello = try channel.receive(16)
        guard Array(hello[0..<8]) == MigrationWire.magic else {
            throw VireoError(.corrupt, "incoming migration: the peer is not a Vireo VMM sending a migration stream")
        }
        let version = MigrationChannel.u32(hello, 8)
        guard version == MigrationWire.version else {
            throw VireoError(.unsupported, "incoming migration: stream version \(version); this vireo reads version \(MigrationWire.version)",
                             hint: "migrate between VMMs of the same release")
        }
        let count = MigrationChannel.u32(hello, 12)
        guard count >= 1, count <= MigrationWire.maxRegions else { throw VireoError(.corrupt, "incoming migration: \(count) memory regions") }
        var layout: [(base: UInt64, size: UInt64)] = []
        var total: UInt64 = 0
        for _ in 0..<count {
            let b = try channel.receive(16)
            let base = MigrationChannel.u64(b, 0), size = MigrationChannel.u64(b, 8)
            let (sum, o) = total.addingReportingOverflow(size)
            guard !o else { throw VireoError(.corrupt, "incoming migration: memory sizes overflow") }
            total = sum
            layout.append((base, size))
        }
        try Machine.validateMemorySize(total)
        let memory = try GuestMemory(layout: layout, options: GuestMemory.Options(hugepages: true))
        var pages: UInt64 = 0, zeros: UInt64 = 0
        while true {
            let kind = try channel.receiveU8()
            switch MigrationWire.Kind(rawValue: kind) {
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
                var source = RestoreSource(snapshot: snapshot, memoryPath: "")
                source.receivedMemory = memory
                source.revertsDisks = false
                return IncomingMigration(source: source, channel: channel, pagesReceived: pages, zeroPages: zeros)
            default:
                throw VireoError(.corrupt, "incoming migration: unknown message kind \(kind)")
            }
        }
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
