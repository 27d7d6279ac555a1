import DiskImage
import VireoSupport

/// virtio-blk over any image the DiskImage library opens (qcow2 with its backing chain, raw,
/// read-only VMDK/VHD). The image's own lock serialises access; the event-loop thread is the
/// only caller.
public final class DiskImageBlockBackend: BlockBackend, @unchecked Sendable {
    public let image: any BlockImage
    public let identifier: [UInt8]
    public var size: UInt64 { image.virtualSize & ~511 }
    public var isReadOnly: Bool { image.isReadOnly }
    public var supportsDiscard: Bool { !image.isReadOnly }
    public var supportsWriteZeroes: Bool { !image.isReadOnly }

    public init(image: any BlockImage, identifier: String) {
        self.image = image
        self.identifier = Array(identifier.utf8.prefix(20))
    }

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try image.read(into: buffer, at: offset)
    }

    public func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws {
        try image.write(buffer, at: offset)
    }

    public func flush() throws { try image.flush() }

    public func discard(at offset: UInt64, count: UInt64) throws {
        try image.discard(offset: offset, length: count)
    }

    public func writeZeroes(at offset: UInt64, count: UInt64, mayUnmap: Bool) throws {
        try image.writeZeroes(offset: offset, length: count)
    }

    public func setWriteLocksHeld(_ held: Bool) throws {
        if let q = image as? Qcow2Image { try q.setWriteLocksHeld(held) } else if let r = image as? RawImage { try r.setWriteLocksHeld(held) }
    }

    public func close() throws { try image.close() }

    deinit { try? image.close() }
}
