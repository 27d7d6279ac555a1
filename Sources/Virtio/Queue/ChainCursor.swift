import GuestMemory

/// Sequential access to the readable or the writable part of a chain, across segment boundaries.
/// Bounds are enforced: reading past the readable part or writing past the writable part throws
/// (`VirtqueueError.requestTooShort`) instead of touching memory the guest did not hand over.
///
/// Not thread-safe; used by one back end while it processes one chain.
public struct ChainCursor {
    public let memory: GuestMemory
    private let segments: ArraySlice<DescriptorSegment>
    private var segmentIndex: Int
    private var offsetInSegment: UInt32 = 0
    /// Bytes consumed (read or written) so far.
    public private(set) var position: UInt64 = 0
    public let totalLength: UInt64

    public static func reader(_ chain: DescriptorChain, _ memory: GuestMemory) -> ChainCursor {
        ChainCursor(memory: memory, segments: chain.readable, total: chain.readableLength)
    }

    public static func writer(_ chain: DescriptorChain, _ memory: GuestMemory) -> ChainCursor {
        ChainCursor(memory: memory, segments: chain.writable, total: chain.writableLength)
    }

    private init(memory: GuestMemory, segments: ArraySlice<DescriptorSegment>, total: UInt64) {
        self.memory = memory
        self.segments = segments
        self.segmentIndex = segments.startIndex
        self.totalLength = total
    }

    public var remaining: UInt64 { totalLength &- position }

    /// Hands out the guest memory of the next `count` bytes as host buffers, one per segment piece,
    /// and advances. `count` must not exceed `remaining`.
    public mutating func advance(_ count: UInt64, _ body: (UnsafeMutableRawBufferPointer) throws -> Void) throws {
        guard count <= remaining else { throw VirtqueueError.requestTooShort("need \(count) bytes, \(remaining) left") }
        var left = count
        while left > 0, segmentIndex < segments.endIndex {
            let seg = segments[segmentIndex]
            let avail = UInt64(seg.length &- offsetInSegment)
            if avail == 0 { segmentIndex += 1; offsetInSegment = 0; continue }
            let n = min(avail, left)
            let buf = try memory.buffer(at: seg.address &+ UInt64(offsetInSegment), count: n)
            try body(buf)
            offsetInSegment &+= UInt32(truncatingIfNeeded: n)
            left &-= n
            position &+= n
        }
    }

    /// Copies the next `destination.count` bytes out of guest memory.
    public mutating func read(into destination: UnsafeMutableRawBufferPointer) throws {
        var done = 0
        try advance(UInt64(destination.count)) { src in
            // SAFETY: `done + src.count <= destination.count` because advance hands out exactly
            // `destination.count` bytes in total; both buffers are valid for their counts.
            UnsafeMutableRawBufferPointer(rebasing: destination[done..<(done + src.count)]).copyMemory(from: UnsafeRawBufferPointer(src))
            done += src.count
        }
    }

    public mutating func readBytes(_ count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: max(0, count))
        try out.withUnsafeMutableBytes { try read(into: $0) }
        return out
    }

    public mutating func read<T: FixedWidthInteger>(_: T.Type) throws -> T {
        var v = T.zero
        try withUnsafeMutableBytes(of: &v) { try read(into: $0) }
        return T(littleEndian: v)
    }

    /// Copies `source` into guest memory at the cursor.
    public mutating func write(_ source: UnsafeRawBufferPointer) throws {
        var done = 0
        try advance(UInt64(source.count)) { dst in
            // SAFETY: as in read(into:), the pieces add up to exactly source.count bytes.
            dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[done..<(done + dst.count)]))
            done += dst.count
        }
    }

    public mutating func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write($0) }
    }

    public mutating func write<T: FixedWidthInteger>(_ value: T) throws {
        var v = value.littleEndian
        try withUnsafeBytes(of: &v) { try write($0) }
    }

    public mutating func skip(_ count: UInt64) throws { try advance(count) { _ in } }
}
