import GuestMemory
/// One guest buffer of a descriptor chain, already validated to lie inside guest RAM.
public struct DescriptorSegment: Sendable, Equatable, CustomStringConvertible {
    public var address: UInt64
    public var length: UInt32
    /// Device-writable (VIRTQ_DESC_F_WRITE); otherwise device-readable.
    public var isWritable: Bool
    public init(address: UInt64, length: UInt32, isWritable: Bool) {
        self.address = address; self.length = length; self.isWritable = isWritable
    }
    public var description: String { "\(isWritable ? "W" : "R")[\(hex(address))+\(length)]" }
}

/// A request the driver made available: the head index (what goes back in the used ring) and its
/// buffers, indirect tables flattened, device-readable segments strictly before device-writable ones.
public struct DescriptorChain: Sendable, Equatable {
    public let head: UInt16
    public let segments: [DescriptorSegment]
    /// Index of the first writable segment (== segments.count when there is none).
    public let firstWritable: Int

    public init(head: UInt16, segments: [DescriptorSegment]) {
        self.head = head
        self.segments = segments
        self.firstWritable = segments.firstIndex(where: \.isWritable) ?? segments.count
    }

    public var readable: ArraySlice<DescriptorSegment> { segments[..<firstWritable] }
    public var writable: ArraySlice<DescriptorSegment> { segments[firstWritable...] }
    public var readableLength: UInt64 { readable.reduce(0) { $0 &+ UInt64($1.length) } }
    public var writableLength: UInt64 { writable.reduce(0) { $0 &+ UInt64($1.length) } }
}
