import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// Random read access to a kernel image: its name (for messages), size, and a bounded reader.
/// Parsing reads only headers and notes, never the whole 50 MB vmlinux.
public struct KernelFile: Sendable {
    /// Path or label used in error messages.
    public let name: String
    public let size: UInt64
    private let reader: @Sendable (UInt64, Int) throws -> [UInt8]

    /// A kernel image already in memory.
    public init(bytes: [UInt8], name: String = "kernel") {
        self.name = name
        self.size = UInt64(bytes.count)
        self.reader = { offset, count in
            guard let start = intValue(offset), start <= bytes.count else { return [] }
            return Array(bytes[start..<(start + min(count, bytes.count - start))])
        }
    }

    /// A kernel image read on demand by `reader(offset, count)` (which may return fewer bytes at EOF).
    public init(name: String, size: UInt64, reader: @escaping @Sendable (UInt64, Int) throws -> [UInt8]) {
        self.name = name; self.size = size; self.reader = reader
    }

    /// Opens a kernel file on the host (regular files only).
    public static func open(path: String) throws -> KernelFile {
        let fd = try OwnedFD.open(path, flags: O_RDONLY, purpose: "read kernel")
        var st = stat()
        guard fstat(fd.rawValue, &st) == 0 else { throw VireoError.system("cannot stat kernel \(path)") }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw VireoError(.invalidArgument, "kernel \(path) is not a regular file",
                             hint: "give --kernel the path of a vmlinuz (bzImage) or vmlinux file")
        }
        let size = UInt64(max(0, st.st_size))
        return KernelFile(name: path, size: size) { offset, count in
            guard count > 0, offset < size, let off = off_t(exactly: offset) else { return [] }
            let want = Int(min(UInt64(count), size - offset))
            var buf = [UInt8](repeating: 0, count: want)
            var done = 0
            while done < want {
                let n = try buf.withUnsafeMutableBytes { (raw) throws -> Int in
                    // SAFETY: `done < want == raw.count`, so the pointer and length stay inside `buf`.
                    try retryingEINTR("cannot read kernel \(path)") {
                        pread(fd.rawValue, raw.baseAddress.map { $0 + done }, want - done, off + off_t(done))
                    }
                }
                if n == 0 { break }
                done += n
            }
            if done < want { buf.removeLast(want - done) }
            return buf
        }
    }

    /// Exactly `count` bytes at `offset`, or a `.corrupt` error naming `what` when the file is too short.
    public func read(offset: UInt64, count: Int, what: String) throws -> [UInt8] {
        guard count >= 0, let end = checkedAdd(offset, UInt64(count)), end <= size else {
            throw VireoError(.corrupt,
                             "kernel \(name) is truncated: \(what) at \(hexString(offset)) (\(count) bytes) lies beyond its \(size) bytes",
                             hint: "the file is damaged or incomplete; rebuild or re-download it")
        }
        let bytes = try reader(offset, count)
        guard bytes.count == count else {
            throw VireoError(.corrupt, "kernel \(name): short read of \(what) at \(hexString(offset))",
                             hint: "the file changed while being read; try again")
        }
        return bytes
    }

    /// Up to `count` bytes from the start (fewer when the file is smaller).
    public func prefix(_ count: Int) throws -> [UInt8] {
        try read(offset: 0, count: Int(min(UInt64(max(0, count)), size)), what: "header")
    }
}
