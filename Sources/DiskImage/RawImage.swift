#if canImport(Glibc)
import Glibc
#endif
import VireoSupport

public enum Preallocation: String, Sendable, CaseIterable {
    /// Thin: nothing is reserved.
    case off
    /// qcow2 only: all metadata and cluster mappings written, no data blocks reserved.
    case metadata
    /// Thick, lazily zeroed: host blocks reserved with fallocate.
    case falloc
    /// Thick, eagerly zeroed: every byte written.
    case full
}

/// A flat image: virtual offset == host offset.
public final class RawImage: BlockImage, @unchecked Sendable {
    public let format = DiskImageFormat.raw
    public var path: String { file.path }
    public private(set) var virtualSize: UInt64
    public var isReadOnly: Bool { !file.writable }
    public let clusterSize: UInt64 = 512
    public var backing: BlockImage? { nil }
    let file: ImageFile
    private let lock = ImageLock()

    init(file: ImageFile) throws(VireoError) {
        self.file = file
        self.virtualSize = try file.size()
    }

    public static func create(path: String, size: UInt64, preallocation: Preallocation = .off) throws(VireoError) {
        if preallocation == .metadata {
            throw VireoError(.invalidArgument, "preallocation=metadata is meaningless for raw images (they have no metadata)",
                             hint: "use off, falloc or full")
        }
        let f = try ImageFile.create(path)
        defer { f.close() }
        try f.truncate(to: size)
        switch preallocation {
        case .off, .metadata: break
        case .falloc: try f.fallocate(offset: 0, length: size)
        case .full: try f.writeZeros(offset: 0, length: size)
        }
        try f.sync()
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(VireoError) {
        try checkRange(offset, buffer.count)
        try file.read(into: buffer, at: offset)
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(VireoError) {
        guard !isReadOnly else { throw VireoError(.permissionDenied, "\(path) is open read-only") }
        try checkRange(offset, buffer.count)
        try file.write(buffer, at: offset)
    }

    public func flush() throws(VireoError) {
        if !isReadOnly { try file.sync() }
    }

    public func discard(offset: UInt64, length: UInt64) throws(VireoError) {
        guard !isReadOnly else { throw VireoError(.permissionDenied, "\(path) is open read-only") }
        try checkRange(offset, 0)
        let end = min(virtualSize, offset &+ length)
        guard end > offset else { return }
        if !file.punchHole(offset: offset, length: end - offset) {
            try file.writeZeros(offset: offset, length: end - offset)
        }
    }

    public func writeZeroes(offset: UInt64, length: UInt64) throws(VireoError) {
        guard !isReadOnly else { throw VireoError(.permissionDenied, "\(path) is open read-only") }
        let end = min(virtualSize, offset &+ length)
        guard end > offset else { return }
        try file.zeroRange(offset: offset, length: end - offset)
    }

    public func blockStatus(at offset: UInt64, maxLength: UInt64) throws(VireoError) -> BlockStatus {
        guard offset < virtualSize else { return BlockStatus(state: .zero, length: 0) }
        let limit = min(virtualSize - offset, maxLength)
        let run = file.dataRun(at: offset, fileSize: virtualSize)
        let len = max(1, min(limit, run.end > offset ? run.end - offset : limit))
        return run.isData ? BlockStatus(state: .data, length: len, hostOffset: offset) : BlockStatus(state: .zero, length: len)
    }

    /// Grows or shrinks the file.
    public func resize(to size: UInt64) throws(VireoError) {
        guard !isReadOnly else { throw VireoError(.permissionDenied, "\(path) is open read-only") }
        try file.truncate(to: size)
        virtualSize = size
    }

    public func close() throws(VireoError) {
        lock.lock(); defer { lock.unlock() }
        if !isReadOnly { try file.sync() }
        file.close()
    }
}

/// A plain mutex for serializing calls on one image.
final class ImageLock: @unchecked Sendable {
    private var m = pthread_mutex_t()
    init() { pthread_mutex_init(&m, nil) }
    deinit { pthread_mutex_destroy(&m) }
    @inline(__always) func lock() { pthread_mutex_lock(&m) }
    @inline(__always) func unlock() { pthread_mutex_unlock(&m) }
}

extension RawImage {
    /// Gives up (false) or takes back (true) the file's write locks (a live migration's hand-over).
    public func setWriteLocksHeld(_ held: Bool) throws(VireoError) {
        if held { try FileLocking.acquire(fd: file.fd, path: path, mode: .writer) } else { FileLocking.release(fd: file.fd) }
    }
}
