import CLinux
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// What the daemon reads from /proc and /sys about VMM processes and the host.
enum ProcFS {
    /// A small text file, or nil (a process that vanished, a file we may not read).
    static func read(_ path: String, limit: Int = 1 << 20) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 16384)
        while out.count < limit {
            let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 { if errno == EINTR { continue }; return nil }
            if n == 0 { break }
            out += buf[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// At most `limit` bytes of a file from byte `offset` on, or nil if it cannot be opened.
    static func read(_ path: String, from offset: UInt64, limit: Int = 1 << 16) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: limit)
        var got = 0
        while got < limit {
            let (pos, overflow) = offset.addingReportingOverflow(UInt64(got))
            guard !overflow, pos <= UInt64(Int64.max) else { break }
            let n = buf[got...].withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(pos)) }
            if n < 0 { if errno == EINTR { continue }; return nil }
            if n == 0 { break }
            got += n
        }
        return String(decoding: buf[0..<got], as: UTF8.self)
    }

    /// The size of a file in bytes (0 if it does not exist).
    static func fileSize(_ path: String) -> UInt64 {
        var st = stat()
        guard stat(path, &st) == 0, st.st_size > 0 else { return 0 }
        return UInt64(st.st_size)
    }

    /// Fields of /proc/PID/stat after the command name (which may hold spaces and parentheses).
    static func statFields(pid: Int32) -> [Substring]? {
        guard let s = read("/proc/\(pid)/stat"), let close = s.lastIndex(of: ")") else { return nil }
        return s[s.index(after: close)...].split(separator: " ")
    }

    /// Field 22 (starttime, clock ticks since boot); with the pid it names one process for all time.
    static func startTime(pid: Int32) -> UInt64? {
        guard let f = statFields(pid: pid), f.count > 19 else { return nil }
        return UInt64(f[19])   // fields after ')' start at field 3 (state)
    }

    /// True if `pid` is a live (not zombie) process that started at `startTime`.
    static func isAlive(pid: Int32, startTime: UInt64?) -> Bool {
        guard let f = statFields(pid: pid), f.count > 19 else { return false }
        if f[0] == "Z" || f[0] == "X" { return false }
        if let startTime, UInt64(f[19]) != startTime { return false }
        return true
    }

    /// A value in kB from /proc/PID/status (VmRSS, ...), in bytes.
    static func statusBytes(pid: Int32, key: String) -> UInt64? {
        guard let s = read("/proc/\(pid)/status") else { return nil }
        for line in s.split(separator: "\n") where line.hasPrefix(key + ":") {
            let parts = line.split(separator: " ", omittingEmptySubsequences: true)
            if parts.count >= 2, let kb = UInt64(parts[1]) { return kb * 1024 }
        }
        return nil
    }

    struct ThreadTimes: Sendable { var vcpu: Int; var tid: Int32; var cpuSeconds: Double; var readySeconds: Double }

    /// Per-vCPU CPU time and run-queue wait: the VMM's threads named `vcpuN`, from schedstat.
    static func vcpuTimes(pid: Int32) -> [ThreadTimes] {
        guard let dir = opendir("/proc/\(pid)/task") else { return [] }
        defer { closedir(dir) }
        var out: [ThreadTimes] = []
        while let e = readdir(dir) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            guard let tid = Int32(name) else { continue }
            guard let comm = read("/proc/\(pid)/task/\(tid)/comm"), comm.hasPrefix("vcpu"),
                  let index = Int(comm.dropFirst(4).prefix(while: { $0.isNumber })) else { continue }
            guard let ss = read("/proc/\(pid)/task/\(tid)/schedstat") else { continue }
            let f = ss.split(separator: " ").compactMap { UInt64($0.prefix(while: { $0.isNumber })) }
            guard f.count >= 2 else { continue }
            out.append(ThreadTimes(vcpu: index, tid: tid, cpuSeconds: Double(f[0]) / 1e9, readySeconds: Double(f[1]) / 1e9))
        }
        return out.sorted { $0.vcpu < $1.vcpu }
    }

    static var onlineCPUs: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }

    static var physicalMemory: UInt64 {
        var info = sysinfo()
        guard sysinfo(&info) == 0 else { return 0 }
        return UInt64(info.totalram) &* UInt64(max(1, info.mem_unit))
    }

    /// RAM plus swap, for the memory sanity limit (4x overcommit of it, as `vireo run` checks).
    static var memoryAndSwap: UInt64 {
        var info = sysinfo()
        guard sysinfo(&info) == 0 else { return 0 }
        return (UInt64(info.totalram) &+ UInt64(info.totalswap)) &* UInt64(max(1, info.mem_unit))
    }

    static var hostname: String {
        var buf = [CChar](repeating: 0, count: 256)
        guard gethostname(&buf, buf.count - 1) == 0 else { return "localhost" }
        return String(decoding: buf.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func fileExists(_ path: String, regular: Bool = true) -> Bool {
        var st = stat()
        guard stat(path, &st) == 0 else { return false }
        return !regular || (st.st_mode & S_IFMT) == S_IFREG
    }
}
