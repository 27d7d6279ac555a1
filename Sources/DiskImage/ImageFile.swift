#if canImport(Glibc)
import Glibc
#endif
import VireoSupport

/// A host file holding an image, accessed with positioned I/O only (no shared file offset),
/// so one `ImageFile` can be used from any thread without coordination.
public final class ImageFile: @unchecked Sendable {
    public let path: String
    public let writable: Bool
    private(set) var fd: Int32

    private init(path: String, fd: Int32, writable: Bool) {
        self.path = path; self.fd = fd; self.writable = writable
    }

    public static func open(_ path: String, writable: Bool) throws(VireoError) -> ImageFile {
        let fd = Glibc.open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC)
        if fd < 0 {
            let e = errno
            throw VireoError.system("cannot open \(path)", errno: e,
                                    hint: e == ENOENT ? "check the path" : (e == EACCES ? "check the file's permissions, or open it read-only" : nil))
        }
        var st = stat()
        if fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR {
            Glibc.close(fd)
            throw VireoError(.invalidArgument, "\(path) is a directory, not a disk image")
        }
        return ImageFile(path: path, fd: fd, writable: writable)
    }

    /// Creates (or truncates) a file for a new image.
    public static func create(_ path: String, exclusive: Bool = false) throws(VireoError) -> ImageFile {
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | (exclusive ? O_EXCL : 0), 0o644)
        if fd < 0 { throw VireoError.system("cannot create \(path)", hint: "check that the directory exists and is writable") }
        return ImageFile(path: path, fd: fd, writable: true)
    }

    deinit { if fd >= 0 { Glibc.close(fd) } }

    public func close() {
        if fd >= 0 { Glibc.close(fd); fd = -1 }
    }

    public func size() throws(VireoError) -> UInt64 {
        var st = stat()
        if fstat(fd, &st) != 0 { throw VireoError.system("cannot stat \(path)") }
        if (st.st_mode & S_IFMT) == S_IFBLK {
            let end = lseek(fd, 0, SEEK_END)
            if end < 0 { throw VireoError.system("cannot size block device \(path)") }
            return UInt64(end)
        }
        return UInt64(max(0, st.st_size))
    }

    /// Bytes actually allocated on the host (st_blocks * 512).
    public func allocatedBytes() -> UInt64 {
        var st = stat()
        if fstat(fd, &st) != 0 { return 0 }
        return UInt64(max(0, st.st_blocks)) &* 512
    }

    /// Reads as much as the file holds; bytes past end of file read as zero. Returns bytes read from the file.
    @discardableResult
    public func read(into buf: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(VireoError) -> Int {
        guard let base = buf.baseAddress, buf.count > 0 else { return 0 }
        guard offset <= UInt64(Int64.max) - UInt64(buf.count) else {
            throw VireoError(.outOfRange, "read at offset \(offset) of \(path) is beyond any file size")
        }
        var done = 0
        while done < buf.count {
            // SAFETY: base+done..base+count lies inside `buf`.
            let n = pread(fd, base + done, buf.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw VireoError.system("cannot read \(path) at offset \(offset + UInt64(done))")
            }
            if n == 0 {
                // SAFETY: zero the unread tail, inside `buf`.
                memset(base + done, 0, buf.count - done)
                return done
            }
            done += n
        }
        return done
    }

    /// Reads exactly `count` bytes of metadata; a short read means the file is truncated.
    public func readBytes(_ count: Int, at offset: UInt64, what: @autoclosure () -> String) throws(VireoError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var got = 0
        var failure: VireoError?
        out.withUnsafeMutableBytes { p in
            do throws(VireoError) { got = try read(into: p, at: offset) } catch { failure = error }
        }
        if let failure { throw failure }
        if got < count {
            throw VireoError(.corrupt, "\(path): \(what()) at offset \(offset) (\(count) bytes) extends past the end of the file",
                             hint: "the image is truncated or damaged; try `vireo disk check -r all` on a copy")
        }
        return out
    }

    public func write(_ buf: UnsafeRawBufferPointer, at offset: UInt64) throws(VireoError) {
        guard let base = buf.baseAddress, buf.count > 0 else { return }
        guard offset <= UInt64(Int64.max) - UInt64(buf.count) else {
            throw VireoError(.outOfRange, "write at offset \(offset) of \(path) is beyond any file size")
        }
        var done = 0
        while done < buf.count {
            // SAFETY: base+done..base+count lies inside `buf`.
            let n = pwrite(fd, base + done, buf.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw VireoError.system("cannot write \(path) at offset \(offset + UInt64(done))",
                                        hint: errno == ENOSPC ? "the host file system is full" : nil)
            }
            done += n
        }
    }

    public func writeBytes(_ bytes: [UInt8], at offset: UInt64) throws(VireoError) {
        var failure: VireoError?
        bytes.withUnsafeBytes { p in
            do throws(VireoError) { try write(p, at: offset) } catch { failure = error }
        }
        if let failure { throw failure }
    }

    public func sync() throws(VireoError) {
        if fdatasync(fd) != 0 { throw VireoError.system("cannot flush \(path) to stable storage") }
    }

    public func truncate(to size: UInt64) throws(VireoError) {
        guard size <= UInt64(Int64.max) else { throw VireoError(.outOfRange, "file size \(size) too large") }
        if ftruncate(fd, off_t(size)) != 0 { throw VireoError.system("cannot resize \(path) to \(size) bytes") }
    }

    /// Reserves host blocks (thick provisioning, lazily zeroed by the file system).
    public func fallocate(offset: UInt64, length: UInt64) throws(VireoError) {
        guard length > 0 else { return }
        let r = posix_fallocate(fd, off_t(offset), off_t(length))
        if r != 0 { throw VireoError.system("cannot preallocate \(length) bytes in \(path)", errno: r,
                                            hint: "the file system may not support fallocate; use preallocation=full") }
    }

    /// Releases host blocks; best effort (returns false where the file system cannot punch holes).
    @discardableResult
    public func punchHole(offset: UInt64, length: UInt64) -> Bool {
        guard length > 0 else { return true }
        // FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        return c_fallocate(fd, 0x02 | 0x01, Int64(offset), Int64(length)) == 0
    }

    /// Zeroes a range cheaply when the file system can, else writes zeros.
    public func zeroRange(offset: UInt64, length: UInt64) throws(VireoError) {
        guard length > 0 else { return }
        // FALLOC_FL_ZERO_RANGE
        if c_fallocate(fd, 0x10, Int64(offset), Int64(length)) == 0 { return }
        if punchHole(offset: offset, length: length) { return }
        try writeZeros(offset: offset, length: length)
    }

    public func writeZeros(offset: UInt64, length: UInt64) throws(VireoError) {
        let chunk = 1 << 20
        let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { zeros.deallocate() }
        zeros.initializeMemory(as: UInt8.self, repeating: 0)
        var pos = offset, left = length
        while left > 0 {
            let n = Int(min(UInt64(chunk), left))
            try write(UnsafeRawBufferPointer(rebasing: zeros[0..<n]), at: pos)
            pos += UInt64(n); left -= UInt64(n)
        }
    }

    /// 3 /* SEEK_DATA */ / 4 /* SEEK_HOLE */: is `offset` in data, and where does that run end.
    public func dataRun(at offset: UInt64, fileSize: UInt64) -> (isData: Bool, end: UInt64) {
        let d = lseek(fd, off_t(offset), 3 /* SEEK_DATA */)
        if d < 0 {
            if errno == ENXIO { return (false, fileSize) }   // no data after offset
            return (true, fileSize)                            // no support: all data
        }
        if UInt64(d) > offset { return (false, min(UInt64(d), fileSize)) }
        let h = lseek(fd, off_t(offset), 4 /* SEEK_HOLE */)
        if h < 0 { return (true, fileSize) }
        return (true, min(UInt64(h), fileSize))
    }
}

/// Canonical absolute path (symlinks resolved) for loop detection.
func canonicalPath(_ path: String) -> String {
    guard let p = realpath(path, nil) else { return path }
    defer { free(p) }
    return String(cString: p)
}

func fileExists(_ path: String) -> Bool { access(path, F_OK) == 0 }

// fallocate(2) is a GNU extension the Glibc module does not export.
@_silgen_name("fallocate")
private func c_fallocate(_ fd: Int32, _ mode: Int32, _ offset: Int64, _ len: Int64) -> Int32
