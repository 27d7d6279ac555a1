import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// One VMM per VM, whatever the inventory says: each VM's directory has a lock file
/// (`vmm.lock`) that its VMM holds for as long as it lives. The daemon takes the lock before it
/// spawns a VMM and hands the locked descriptor to the child (as fd 3: the same open file
/// description, so the child holds the lock from its first instruction); the daemon then closes
/// its copy. A second start (after a daemon crash lost the record, or from a second daemon on
/// the same data) finds the lock held and adopts the running VMM instead of starting another
/// on the same disks.
final class VMMLock {
    let fd: Int32

    private init(fd: Int32) { self.fd = fd }
    deinit { close(fd) }

    /// The lock, or nil when a VMM of this VM holds it.
    static func acquire(_ path: String) throws -> VMMLock? {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw VireoError.system("cannot open the VM's lock file \(path)") }
        if flock(fd, LOCK_EX | LOCK_NB) == 0 { return VMMLock(fd: fd) }
        let e = errno
        close(fd)
        if e == EWOULDBLOCK { return nil }
        throw VireoError.system("cannot lock \(path)", errno: e)
    }

    /// Whether a VMM holds the lock now (the daemon does not keep it).
    static func isHeld(_ path: String) -> Bool {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        if flock(fd, LOCK_EX | LOCK_NB) == 0 { flock(fd, LOCK_UN); return false }
        return errno == EWOULDBLOCK
    }
}
