#if canImport(Glibc)
import Glibc
#endif
import DiskImage
import Synchronization
import VireoSupport

/// Storage behind a virtio-blk device, addressed in bytes (requests are sector-aligned, but guest
/// buffers split them at arbitrary byte boundaries). The DiskImage formats (raw, qcow2) implement
/// this in the VMM; `InMemoryBlockBackend` and `FileBlockBackend` are simple ready-made ones.
///
/// Errors thrown are host I/O errors: the device reports them to the guest as VIRTIO_BLK_S_IOERR.
/// Concurrency: called from the thread running the device's queue (the event loop).
public protocol BlockBackend: AnyObject {
    /// Capacity in bytes (a multiple of 512).
    var size: UInt64 { get }
    var isReadOnly: Bool { get }
    /// Up to 20 bytes of serial number for VIRTIO_BLK_T_GET_ID.
    var identifier: [UInt8] { get }
    var supportsDiscard: Bool { get }
    var supportsWriteZeroes: Bool { get }
    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws
    func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws
    func flush() throws
    func discard(at offset: UInt64, count: UInt64) throws
    func writeZeroes(at offset: UInt64, count: UInt64, mayUnmap: Bool) throws
    /// Gives up (false) or takes back (true) the image's write locks: a live migration hands the
    /// disk to the destination VMM. Back ends without locks do nothing.
    func setWriteLocksHeld(_ held: Bool) throws
    /// Writes back everything the back end holds and releases it; called once, when the
    /// machine has stopped and no queue runs any more.
    func close() throws
}

extension BlockBackend {
    public func setWriteLocksHeld(_ held: Bool) throws {}
    public func close() throws { try flush() }
}

/// A RAM disk (tests, scratch disks).
public final class InMemoryBlockBackend: BlockBackend, @unchecked Sendable {
    // Guarded by `lock`.
    private var bytes: [UInt8]
    private let lock = Mutex(())
    public let isReadOnly: Bool
    public let identifier: [UInt8]
    public var supportsDiscard: Bool { true }
    public var supportsWriteZeroes: Bool { true }
    /// Set to make every request fail (tests of the error path).
    public var failAll = false
    public private(set) var flushes = 0

    public init(size: UInt64, readOnly: Bool = false, identifier: String = "vireo-ram") {
        bytes = [UInt8](repeating: 0, count: Int(size / 512 * 512))
        isReadOnly = readOnly
        self.identifier = Array(identifier.utf8.prefix(20))
    }

    public var size: UInt64 { UInt64(bytes.count) }

    private func range(_ offset: UInt64, _ count: Int) throws -> Range<Int> {
        let (end, o) = offset.addingReportingOverflow(UInt64(count))
        guard !failAll, !o, end <= UInt64(bytes.count) else { throw VireoError(.io, "in-memory disk: access out of range") }
        return Int(offset)..<Int(end)
    }

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        let r = try range(offset, buffer.count)
        lock.withLock { _ in bytes.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[r])) } }
    }

    public func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws {
        let r = try range(offset, buffer.count)
        lock.withLock { _ in bytes.withUnsafeMutableBytes { UnsafeMutableRawBufferPointer(rebasing: $0[r]).copyMemory(from: buffer) } }
    }

    public func flush() throws {
        guard !failAll else { throw VireoError(.io, "in-memory disk: flush failed") }
        flushes += 1
    }

    public func discard(at offset: UInt64, count: UInt64) throws { try writeZeroes(at: offset, count: count, mayUnmap: true) }

    public func writeZeroes(at offset: UInt64, count: UInt64, mayUnmap: Bool) throws {
        guard count <= UInt64(Int.max) else { throw VireoError(.io, "in-memory disk: range too large") }
        let r = try range(offset, Int(count))
        lock.withLock { _ in for i in r { bytes[i] = 0 } }
    }
}

/// A raw image file or block device accessed with pread/pwrite (no discard support).
public final class FileBlockBackend: BlockBackend, @unchecked Sendable {
    public let fd: OwnedFD
    public let size: UInt64
    public let isReadOnly: Bool
    public let identifier: [UInt8]
    public var supportsDiscard: Bool { false }
    public var supportsWriteZeroes: Bool { true }

    /// The file's path (for lock messages).
    public let path: String

    public func setWriteLocksHeld(_ held: Bool) throws {
        if held { try FileLocking.acquire(fd: fd.rawValue, path: path, mode: .writer) } else { FileLocking.release(fd: fd.rawValue) }
    }

    public init(path: String, readOnly: Bool, identifier: String? = nil, locking: Bool = false) throws {
        self.path = path
        fd = try OwnedFD.open(path, flags: readOnly ? O_RDONLY : O_RDWR, purpose: "open disk image")
        if locking { try FileLocking.acquire(fd: fd.rawValue, path: path, mode: readOnly ? .reader : .writer) }
        let end = lseek(fd.rawValue, 0, SEEK_END)
        guard end >= 0 else { throw VireoError.system("cannot size disk image \(path)") }
        size = UInt64(end) / 512 * 512
        isReadOnly = readOnly
        self.identifier = Array((identifier ?? String(path.split(separator: "/").last ?? "disk")).utf8.prefix(20))
    }

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        var done = 0
        while done < buffer.count {
            let n = try retryingEINTR("disk read") {
                // SAFETY: the destination range [done, count) lies inside `buffer`.
                pread(fd.rawValue, buffer.baseAddress.map { $0 + done }, buffer.count - done, off_t(offset) + off_t(done))
            }
            if n == 0 {   // past EOF of a file that shrank: zeroes
                UnsafeMutableRawBufferPointer(rebasing: buffer[done...]).initializeMemory(as: UInt8.self, repeating: 0)
                return
            }
            done += n
        }
    }

    public func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < buffer.count {
            let n = try retryingEINTR("disk write") {
                // SAFETY: the source range [done, count) lies inside `buffer`.
                pwrite(fd.rawValue, buffer.baseAddress.map { $0 + done }, buffer.count - done, off_t(offset) + off_t(done))
            }
            done += n
        }
    }

    public func flush() throws { _ = try retryingEINTR("disk flush") { fdatasync(fd.rawValue) } }

    public func discard(at offset: UInt64, count: UInt64) throws {}

    public func writeZeroes(at offset: UInt64, count: UInt64, mayUnmap: Bool) throws {
        let chunk = [UInt8](repeating: 0, count: 64 * 1024)
        var done: UInt64 = 0
        while done < count {
            let n = Int(min(UInt64(chunk.count), count - done))
            try chunk.withUnsafeBytes { try write(at: offset &+ done, from: UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            done += UInt64(n)
        }
    }
}
