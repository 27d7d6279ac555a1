import Synchronization
import VireoSupport

/// A read-write disk's back end that can record which parts of the disk the guest writes: a
/// storage migration copies the disk while the guest runs and then sends again what was written
/// meanwhile. Off (the usual case) it costs one atomic load per write.
public final class DirtyTrackingBlockBackend: BlockBackend, @unchecked Sendable {
    /// Tracking granularity: a write anywhere in a chunk makes the whole chunk dirty.
    public static let chunkSize: UInt64 = 64 << 10

    public let inner: any BlockBackend
    private let tracking = Atomic<Bool>(false)
    // Guarded by its mutex: one bit per chunk, set when written while tracking.
    private let bits: Mutex<[UInt64]>

    public init(_ inner: any BlockBackend) {
        self.inner = inner
        let chunks = (inner.size / Self.chunkSize) &+ 1
        bits = Mutex([UInt64](repeating: 0, count: Int(chunks / 64 &+ 1)))
    }

    public var size: UInt64 { inner.size }
    public var isReadOnly: Bool { inner.isReadOnly }
    public var identifier: [UInt8] { inner.identifier }
    public var supportsDiscard: Bool { inner.supportsDiscard }
    public var supportsWriteZeroes: Bool { inner.supportsWriteZeroes }
    public var chunkCount: Int { Int((inner.size &+ Self.chunkSize &- 1) / Self.chunkSize) }

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try inner.read(at: offset, into: buffer)
    }

    // The chunk is marked after the write: a copy that read the old bytes sends the chunk again.
    public func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws {
        defer { mark(offset, UInt64(buffer.count)) }
        try inner.write(at: offset, from: buffer)
    }

    public func flush() throws { try inner.flush() }

    public func discard(at offset: UInt64, count: UInt64) throws {
        defer { mark(offset, count) }
        try inner.discard(at: offset, count: count)
    }

    public func writeZeroes(at offset: UInt64, count: UInt64, mayUnmap: Bool) throws {
        defer { mark(offset, count) }
        try inner.writeZeroes(at: offset, count: count, mayUnmap: mayUnmap)
    }

    public func setWriteLocksHeld(_ held: Bool) throws { try inner.setWriteLocksHeld(held) }
    public func close() throws { try inner.close() }

    /// Starts recording writes (and forgets what was recorded before).
    public func startTracking() {
        bits.withLock { b in for i in b.indices { b[i] = 0 } }
        tracking.store(true, ordering: .releasing)
    }

    public func stopTracking() { tracking.store(false, ordering: .releasing) }

    /// The chunks written since the last call (one bit each), cleared.
    public func takeDirty() -> [UInt64] {
        bits.withLock { b in
            let out = b
            for i in b.indices { b[i] = 0 }
            return out
        }
    }

    private func mark(_ offset: UInt64, _ count: UInt64) {
        guard count > 0, tracking.load(ordering: .acquiring) else { return }
        let first = offset / Self.chunkSize
        let (end, o) = offset.addingReportingOverflow(count - 1)
        let last = (o ? UInt64.max : end) / Self.chunkSize
        bits.withLock { b in
            var c = first
            while c <= last, c / 64 < UInt64(b.count) {
                b[Int(c / 64)] |= UInt64(1) << (c % 64)
                c += 1
            }
        }
    }
}
