import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// A child process started with posix_spawn, its stdout and stderr on pipes.
public final class ChildProcess: @unchecked Sendable {
    public let pid: pid_t
    public let stdout: OwnedFD
    public let stderr: OwnedFD
    private var exitStatus: Int32?

    /// The path of the running executable (/proc/self/exe).
    public static func selfExecutable() -> String {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        guard n > 0 else { return CommandLine.arguments.first ?? "vireo" }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public init(_ argv: [String], environment extra: [String: String] = [:]) throws {
        var outPipe: [Int32] = [0, 0], errPipe: [Int32] = [0, 0]
        guard vireo_pipe_cloexec(&outPipe) == 0, vireo_pipe_cloexec(&errPipe) == 0 else { throw VireoError.system("pipe failed") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)

        var env: [String] = []
        var e = environ
        while let p = e.pointee { env.append(String(cString: p)); e += 1 }
        for (k, v) in extra { env.removeAll { $0.hasPrefix(k + "=") }; env.append("\(k)=\(v)") }

        let cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        let cEnv: [UnsafeMutablePointer<CChar>?] = env.map { strdup($0) } + [nil]
        defer { for p in cArgs { free(p) }; for p in cEnv { free(p) } }
        var child = pid_t()
        let rc = posix_spawn(&child, argv[0], &actions, nil, cArgs, cEnv)
        close(outPipe[1]); close(errPipe[1])
        guard rc == 0 else {
            close(outPipe[0]); close(errPipe[0])
            throw VireoError.system("cannot start \(argv[0])", errno: rc)
        }
        pid = child
        stdout = OwnedFD(taking: outPipe[0])
        stderr = OwnedFD(taking: errPipe[0])
    }

    /// Reads one line from `fd` (blocking); nil at end of file.
    public static func readLine(_ fd: OwnedFD) -> String? {
        var bytes: [UInt8] = []
        var c: UInt8 = 0
        while true {
            let n = read(fd.rawValue, &c, 1)
            if n <= 0 { return bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self) }
            if c == 10 { return String(decoding: bytes, as: UTF8.self) }
            bytes.append(c)
        }
    }

    public func signal(_ s: Int32) { kill(pid, s) }

    /// Waits for the child; returns its exit status (128+N for a signal).
    @discardableResult
    public func wait() -> Int32 {
        if let exitStatus { return exitStatus }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let code: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        exitStatus = code
        return code
    }
}
