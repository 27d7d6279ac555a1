#if canImport(Glibc)
import Glibc
#endif
import VireoSupport

/// Image locking as QEMU does it, so Vireo and QEMU (and two Vireo VMMs) see each other: open
/// file description (OFD) byte-range locks at offsets 100+i ("holds permission i") and 200+i
/// ("does not let others have permission i"), i being 0 consistent read, 1 write, 2 write
/// unchanged. A writer (a VM's read-write disk) holds read, write and write-unchanged and
/// shares no write; a reader (a read-only disk, a backing file, `vireo disk info`) holds read
/// and shares no write either. So a second writer, or a reader beside a writer, is refused,
/// and readers share. The locks go with the descriptor: closing it (or the process ending)
/// releases them.
public enum FileLocking {
    public enum Mode: Sendable { case reader, writer }

    static let permBase: Int64 = 100
    static let sharedBase: Int64 = 200
    static let ofdGetLock: Int32 = 36   // F_OFD_GETLK
    static let ofdSetLock: Int32 = 37   // F_OFD_SETLK
    static let names = ["consistent read", "write", "write unchanged"]

    /// Locks `fd` (the image `path`) for `mode`; throws `.conflict` naming what another process
    /// holds, with the way out.
    public static func acquire(fd: Int32, path: String, mode: Mode) throws(VireoError) {
        let held: [Int] = mode == .writer ? [0, 1, 2] : [0]
        let unshared: [Int] = [1]
        for i in held { try set(fd, permBase + Int64(i), path) }
        for i in unshared { try set(fd, sharedBase + Int64(i), path) }
        for i in held where try taken(fd, sharedBase + Int64(i)) {
            throw VireoError(.conflict, "\(path) is in use: another process (a VM, QEMU, or a vireo disk command) does not let others have \(names[i]) access to it",
                             hint: "stop the VM that uses it, or for a read of a disk in use give -U (the data may be changing)")
        }
        for i in unshared where try taken(fd, permBase + Int64(i)) {
            throw VireoError(.conflict, "\(path) is in use: another process is writing it",
                             hint: "stop the VM that writes it, or for a read of a disk in use give -U (the data may be changing)")
        }
    }

    /// Gives up every lock `fd` holds (a live migration hands the disk to the destination VMM,
    /// which takes them; `acquire` takes them back if the migration fails).
    public static func release(fd: Int32) {
        for byte in [permBase, permBase + 1, permBase + 2, sharedBase, sharedBase + 1, sharedBase + 2] {
            var l = flock()
            l.l_type = Int16(F_UNLCK)
            l.l_whence = Int16(SEEK_SET)
            l.l_start = off_t(byte)
            l.l_len = 1
            _ = fcntl(fd, ofdSetLock, &l)
        }
    }

    private static func set(_ fd: Int32, _ byte: Int64, _ path: String) throws(VireoError) {
        var l = flock()
        l.l_type = Int16(F_RDLCK)
        l.l_whence = Int16(SEEK_SET)
        l.l_start = off_t(byte)
        l.l_len = 1
        if fcntl(fd, ofdSetLock, &l) != 0 {
            // The other side holds a write lock on the byte: QEMU never does; treat as in use.
            throw VireoError.system("cannot lock \(path) (byte \(byte))", hint: "another program holds a lock on the image")
        }
    }

    /// Whether another open file description holds a lock on `byte`.
    private static func taken(_ fd: Int32, _ byte: Int64) throws(VireoError) -> Bool {
        var l = flock()
        l.l_type = Int16(F_WRLCK)
        l.l_whence = Int16(SEEK_SET)
        l.l_start = off_t(byte)
        l.l_len = 1
        l.l_pid = 0
        guard fcntl(fd, ofdGetLock, &l) == 0 else { throw VireoError.system("cannot test the lock on an image") }
        return l.l_type != Int16(F_UNLCK)
    }
}
