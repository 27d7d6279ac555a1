#if canImport(Glibc)
import Glibc
#endif

/// A unix-domain socket address (`sockaddr_un`) for a path: the one place the path is copied
/// into `sun_path` for bind and connect.
public enum UnixSocketAddress {
    /// Whether `path` fits `sun_path` with its terminating NUL (at most 107 bytes on Linux).
    public static func fits(_ path: String) -> Bool {
        path.utf8.count < MemoryLayout.size(ofValue: sockaddr_un().sun_path)
    }

    /// Calls `body` (bind, connect) with the address of `path` and its length; a path that does
    /// not fit returns -1 with errno ENAMETOOLONG without calling it.
    public static func with(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> Int32) -> Int32 {
        guard fits(path) else { errno = ENAMETOOLONG; return -1 }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        // SAFETY: sun_path is a zeroed fixed-size C array longer than the path's bytes (fits above),
        // so the copy stays inside it and leaves the terminating NUL.
        withUnsafeMutableBytes(of: &addr.sun_path) { p in for (i, b) in path.utf8.enumerated() { p[i] = b } }
        // SAFETY: addr is a complete sockaddr_un; the callee reads at most its size.
        return withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }
}
