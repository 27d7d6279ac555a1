import Testing
import VMM
import VireoSupport
import VireoTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// `vireo run --probe echo --console-socket S`: the real VMM on real KVM, with the ring-3 probe
/// guest echoing COM1 (a-z uppercased, '#' answered with 4096 '#'), so every byte checked here
/// went client -> socket -> UART RX FIFO -> guest -> UART THR -> every client.
@Suite(.serialized, .enabled(if: VireoBinary.path != nil && access("/dev/kvm", R_OK | W_OK) == 0))
struct ConsoleSocketTests {
    final class EchoVM {
        let dir: String
        let socket: String
        let log: String
        let child: ChildProcess

        init() throws {
            dir = "/tmp/vireo-console-\(getpid())-\(Int.random(in: 0..<1_000_000))"
            mkdir(dir, 0o755)
            socket = dir + "/console.sock"
            log = dir + "/console.log"
            guard let bin = VireoBinary.path else { throw VireoError(.notFound, "vireo not built") }
            child = try ChildProcess([bin, "run", "--probe", "echo", "--memory", "16M", "--serial", "file=\(log)", "--console-socket", socket])
            for _ in 0..<200 where access(socket, F_OK) != 0 { usleep(25_000) }
        }

        func stop() -> (status: Int32, stderr: String) {
            child.signal(SIGTERM)
            let status = child.wait()
            var err = ""
            while let l = ChildProcess.readLine(child.stderr) { err += l + "\n" }
            return (status, err)
        }

        deinit { child.signal(SIGKILL); child.wait(); _ = system("rm -rf \(dir)") }
    }

    @Test func clientsShareTheConsoleAndInputReachesTheGuest() throws {
        let vm = try EchoVM()
        var st = stat()
        #expect(stat(vm.socket, &st) == 0 && st.st_mode & 0o777 == 0o600, "the console socket is mode 0600")
        let a = try UnixClient(vm.socket), b = try UnixClient(vm.socket)
        usleep(100_000)   // both accepted before the guest answers
        try a.send("hello, vireo 1")
        #expect(a.receive(count: 14) == "HELLO, VIREO 1")
        #expect(b.receive(count: 14) == "HELLO, VIREO 1", "a second client sees the same output")
        try b.send("from b")
        #expect(a.receive(count: 6) == "FROM B", "input from either client reaches the guest")
        #expect(b.receive(count: 6) == "FROM B")
        // A client that leaves does not disturb the others.
        a.close()
        try b.send("still here")
        #expect(b.receive(count: 10) == "STILL HERE")
        let (status, _) = vm.stop()
        #expect(status == 143)
        #expect(access(vm.socket, F_OK) != 0, "the VMM removes its console socket when it ends")
        let logText = (try? OwnedFD.readFile(vm.log)).map { String(decoding: $0, as: UTF8.self) } ?? ""
        #expect(logText == "HELLO, VIREO 1FROM BSTILL HERE", "the log file still gets everything")
    }

    @Test func aClientThatStopsReadingIsDroppedWithoutStallingTheOthers() throws {
        let vm = try EchoVM()
        let stuck = try UnixClient(vm.socket)   // never reads until the end
        let b = try UnixClient(vm.socket)
        usleep(100_000)
        // 30 bursts of 4096 bytes: more than the 64 KiB backlog plus the socket buffer.
        let bursts = 30
        for i in 0..<bursts {
            let t0 = monotonicSeconds()
            try b.send("#")
            let got = b.receive(count: 4096, timeoutMs: 15_000)
            #expect(got.count == 4096 && got.allSatisfy { $0 == "#" }, "burst \(i): the reading client gets all its output")
            #expect(monotonicSeconds() - t0 < 15, "burst \(i) was not held up by the stuck client")
            if got.count != 4096 { break }
        }
        try b.send("ok")
        #expect(b.receive(count: 2) == "OK")
        // The stuck client was dropped: what it can still read is bounded, then end of file.
        let (bytes, eof) = stuck.drain(timeoutMs: 5000)
        #expect(eof, "the stuck client was disconnected")
        #expect(bytes < bursts * 4096, "the stuck client got \(bytes) bytes, not everything")
        let (_, stderr) = vm.stop()
        #expect(stderr.contains("console client dropped"), "the VMM says it dropped a client: \(stderr)")
    }

    @Test func escapeKeys() {
        var e = ConsoleEscape()
        #expect(e.feed(Array("ls\u{3}".utf8)) == (Array("ls\u{3}".utf8), nil))      // Ctrl-C goes to the guest
        #expect(e.feed([0x01, 0x01, 0x61]) == ([0x01, 0x61], nil))                  // C-a C-a -> C-a
        #expect(e.feed([0x01]) == ([], nil))                                         // armed across reads
        #expect(e.feed(Array("x".utf8)) == ([], .quit))
        #expect(e.feed([0x61, 0x01, 0x62]) == ([0x61, 0x01, 0x62], nil))            // C-a other: both bytes
        #expect(e.feed([0x01, 0x68, 0x7A]) == ([0x7A], .help))
    }
}

/// A blocking unix-socket client with timeouts.
final class UnixClient {
    let fd: Int32
    init(_ path: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        // SAFETY: sun_path is a zeroed fixed-size array longer than these test paths.
        withUnsafeMutableBytes(of: &addr.sun_path) { p in for (i, b) in bytes.enumerated() { p[i] = b } }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { Glibc.close(fd); throw VireoError.system("cannot connect to \(path)") }
    }
    deinit { Glibc.close(fd) }
    func close() { shutdown(fd, Int32(SHUT_RDWR)) }

    func send(_ s: String) throws {
        let bytes = Array(s.utf8)
        guard bytes.withUnsafeBytes({ Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == bytes.count else {
            throw VireoError.system("send failed")
        }
    }

    /// Up to `count` bytes, waiting at most `timeoutMs` in all.
    func receive(count: Int, timeoutMs: Int = 5000) -> String {
        var out: [UInt8] = []
        let deadline = monotonicSeconds() + Double(timeoutMs) / 1000
        var buf = [UInt8](repeating: 0, count: 65536)
        while out.count < count {
            let left = Int32(max(0, (deadline - monotonicSeconds()) * 1000))
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, left) > 0 else { break }
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, min($0.count, count - out.count), 0) }
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Reads everything until end of file or `timeoutMs` of silence: (bytes, reached EOF).
    func drain(timeoutMs: Int32) -> (Int, Bool) {
        var total = 0
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, timeoutMs) > 0 else { return (total, false) }
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { return (total, true) }
            total += n
        }
    }
}

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
