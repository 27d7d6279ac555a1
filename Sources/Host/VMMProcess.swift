import CSQLite
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// Starting VMM processes and talking to their control sockets.
enum VMMProcess {
    /// glibc's POSIX_SPAWN_SETSID (a GNU extension Swift's Glibc module does not export).
    static let spawnSetSID: Int16 = 0x80

    /// Starts `argv` in its own session (so neither the daemon's death nor its terminal's
    /// signals reach it), stdin from /dev/null, stdout and stderr appended to `logPath`.
    /// With `lockFD`, the child gets it as fd 3 (the VM's `vmm.lock`, held for its whole life).
    static func spawn(_ argv: [String], logPath: String, lockFD: Int32? = nil) throws -> pid_t {
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        // Children start with default signal dispositions and an empty mask, whatever the daemon uses.
        var none = sigset_t(); sigemptyset(&none)
        var all = sigset_t(); sigfillset(&all)
        posix_spawnattr_setsigmask(&attr, &none)
        posix_spawnattr_setsigdefault(&attr, &all)
        posix_spawnattr_setflags(&attr, spawnSetSID | Int16(POSIX_SPAWN_SETSIGMASK) | Int16(POSIX_SPAWN_SETSIGDEF))

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        if let lockFD { posix_spawn_file_actions_adddup2(&actions, lockFD, 3) }
        // Nothing else of the daemon (sockets, epoll, the inventory) leaks into a VMM.
        posix_spawn_file_actions_addclosefrom_np(&actions, lockFD == nil ? 3 : 4)

        var env: [String] = []
        var e = environ
        while let p = e.pointee { env.append(String(cString: p)); e += 1 }
        let cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        let cEnv: [UnsafeMutablePointer<CChar>?] = env.map { strdup($0) } + [nil]
        defer { for p in cArgs { free(p) }; for p in cEnv { free(p) } }
        var pid = pid_t()
        let rc = posix_spawn(&pid, argv[0], &actions, &attr, cArgs, cEnv)
        guard rc == 0 else { throw VireoError.system("cannot start the VMM \(argv[0])", errno: rc) }
        return pid
    }

    /// Sends one command line to a VMM's control socket; returns its one-line reply, or nil
    /// if nothing answers (no socket, refused, timeout).
    static func control(_ socketPath: String, _ command: String, timeoutSeconds: Int = 3) -> String? {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        guard UnixSocketAddress.with(socketPath, { connect(fd, $0, $1) }) == 0 else { return nil }
        let line = command + "\n"
        guard line.withCString({ send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }) > 0 else { return nil }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while out.count < 1 << 20 {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 { if errno == EINTR { continue }; return nil }
            if n == 0 { break }
            out += buf[0..<n]
            if out.last == 10 { break }
        }
        return out.isEmpty ? nil : String(decoding: out, as: UTF8.self)
    }

    /// Reaps `pid` if it is our child and has exited; returns its status (128+N for a signal).
    static func reap(_ pid: pid_t) -> Int32? {
        var status: Int32 = 0
        let r = waitpid(pid, &status, WNOHANG)
        guard r == pid else { return nil }
        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }
}
