import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// Retries a system call while it fails with EINTR. Returns the result, or throws
/// `VireoError.system(what)` on any other failure.
@inlinable
public func retryingEINTR<T: BinaryInteger>(_ what: @autoclosure () -> String, _ body: () -> T) throws -> T {
    while true {
        let r = body()
        if r >= 0 { return r }
        let e = errno
        if e == EINTR { continue }
        throw VireoError.system(what(), errno: e)
    }
}

/// A file descriptor this object owns: closed exactly once, in `deinit` or `close()`.
public final class OwnedFD: @unchecked Sendable {
    public let rawValue: Int32
    private var closed = false

    public init(taking fd: Int32) { self.rawValue = fd }

    /// Opens `path`; the error names the path and, for the usual mistakes, the fix.
    public static func open(_ path: String, flags: Int32, mode: mode_t = 0o644, purpose: String = "open") throws -> OwnedFD {
        let fd = try retryingEINTR("cannot \(purpose) \(path)") { Glibc.open(path, flags | O_CLOEXEC, mode) }
        return OwnedFD(taking: fd)
    }

    public func close() {
        if !closed { closed = true; _ = Glibc.close(rawValue) }
    }

    deinit { close() }
}

extension OwnedFD {
    /// Reads a whole regular file (bounded by `limit` bytes, to refuse absurd inputs).
    public static func readFile(_ path: String, limit: UInt64 = 1 << 32, what: String = "file") throws -> [UInt8] {
        let fd = try OwnedFD.open(path, flags: O_RDONLY, purpose: "read \(what)")
        var st = stat()
        guard fstat(fd.rawValue, &st) == 0 else { throw VireoError.system("cannot stat \(what) \(path)") }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw VireoError(.invalidArgument, "\(what) \(path) is not a regular file")
        }
        let size = UInt64(max(0, st.st_size))
        guard size <= limit else {
            throw VireoError(.outOfRange, "\(what) \(path) is \(ByteSize.format(size)), larger than the \(ByteSize.format(limit)) allowed")
        }
        // /proc and /sys files report size 0: read those in chunks until end of file.
        var bytes = [UInt8](repeating: 0, count: size > 0 ? Int(size) : 65536)
        var done = 0
        while true {
            if done == bytes.count {
                guard size == 0, UInt64(bytes.count) < limit else { break }
                bytes.append(contentsOf: repeatElement(0, count: min(bytes.count, Int(limit) - bytes.count)))
            }
            let n = try bytes.withUnsafeMutableBytes { (buf) throws -> Int in
                // SAFETY: the pointer and count stay inside `bytes`' buffer (done < count).
                try retryingEINTR("cannot read \(what) \(path)") {
                    read(fd.rawValue, buf.baseAddress.map { $0 + done }, buf.count - done)
                }
            }
            if n == 0 { break }
            done += n
        }
        if done < bytes.count { bytes.removeLast(bytes.count - done) }
        return bytes
    }
}
