import Foundation
import Testing
import VireoAPI
import VireoSupport
import VireoTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// A real `vireo host` process on a temporary socket and data directory.
final class TestDaemon: @unchecked Sendable {
    let dir: String
    let socket: String
    let dataDir: String
    var child: ChildProcess?
    var tcpPort: UInt16?
    let extra: [String]

    private static let counter = Mutex(0)
    /// A pool every test daemon has, for files tests share (e.g. a dummy kernel).
    static let sharedPool: String = {
        let p = "/tmp/vireo-test-pool-\(getpid())"
        mkdir(p, 0o755)
        return p
    }()

    /// Test daemons make no `default` network (many run at once; one host has one), but those
    /// that test it (HostNetworkTests) pass `defaultNetwork: true`.
    /// Environment the daemon gets besides the test's own (a PATH with a failing tool, say).
    let environment: [String: String]

    init(extra: [String] = [], defaultNetwork: Bool = false, environment: [String: String] = [:]) throws {
        let extra = defaultNetwork ? extra : extra + ["--no-default-network"]
        self.environment = environment
        let n = TestDaemon.counter.withLock { $0 += 1; return $0 }
        dir = "/tmp/vht-\(getpid())-\(n)"
        socket = dir + "/d.sock"
        dataDir = dir + "/data"
        self.extra = extra
        _ = system("rm -rf \(dir)")
        mkdir(dir, 0o755)
        try start()
    }

    /// Starts (or restarts) the daemon and waits until its socket answers.
    func start() throws {
        guard let bin = VireoBinary.path else { throw VireoError(.notFound, "vireo not built") }
        // The test's own directory and the suite's shared one are the daemon's storage pools.
        let c = try ChildProcess([bin, "host", "--socket", socket, "--data-dir", dataDir, "--pool", dir, "--pool", Self.sharedPool] + extra,
                                   environment: environment)
        child = c
        // Its stderr says where it listens (and, for --listen ...:0, the port it got).
        for _ in 0..<3 {
            guard let line = ChildProcess.readLine(c.stderr) else { break }
            if line.contains("bearer token required"), let r = line.range(of: #":(\d+) \("#, options: .regularExpression) {
                tcpPort = UInt16(line[r].dropFirst().prefix(while: \.isNumber))
            }
            if extra.contains("--listen") ? tcpPort != nil : line.contains("listening on") { break }
        }
        for _ in 0..<100 {
            if (try? client.request("GET", "/v1/host").status) == 200 { return }
            usleep(50_000)
        }
        throw VireoError(.io, "the daemon did not answer on \(socket)")
    }

    var client: APIClient { APIClient(socket: socket) }

    /// kill -9 of the daemon (its VMMs must live on).
    func kill9() {
        guard let c = child else { return }
        c.signal(SIGKILL)
        c.wait()
        child = nil
    }

    /// Ends the daemon and every VMM it recorded (tests leave nothing running).
    func shutdown() {
        if let list = try? client.call("GET", "/v1/vms", as: VMList.self) {
            for vm in list.vms where vm.state.hasProcess { _ = try? client.request("POST", "/v1/vms/\(vm.name)/kill") }
        }
        if let c = child { c.signal(SIGKILL); c.wait() }
        child = nil
        _ = system("rm -rf \(dir)")
    }

    deinit { shutdown() }

    // MARK: helpers

    @discardableResult
    func req(_ method: String, _ path: String, json: String? = nil) throws -> APIClient.Response {
        try client.request(method, path, body: json.map { Array($0.utf8) })
    }

    /// A raw connection to the daemon's socket that has sent `request` (with an optional small
    /// receive buffer, to play a slow client); the caller reads and closes it.
    func rawConnect(sending request: String, receiveBuffer: Int32? = nil) throws -> Int32 {
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        if var size = receiveBuffer { setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size)) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(socket.utf8)
        // SAFETY: sun_path is a zeroed fixed array longer than the test's short socket path.
        withUnsafeMutableBytes(of: &addr.sun_path) { p in for (i, b) in bytes.enumerated() { p[i] = b } }
        // SAFETY: addr is a complete sockaddr_un; connect reads that many bytes of it.
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { close(fd); throw APIErrorBody(code: "connect", message: "cannot connect to \(socket)") }
        let req = Array(request.utf8)
        // SAFETY: write reads exactly req.count bytes of req's storage.
        _ = req.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        return fd
    }

    /// Everything `fd` delivers until EOF (or `timeout` seconds of silence).
    static func readAll(_ fd: Int32, timeout: Int = 5) -> [UInt8] {
        var tv = timeval(tv_sec: timeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var raw: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            // SAFETY: read writes at most buf.count bytes into buf's own storage.
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            raw += buf[0..<n]
        }
        return raw
    }

    func vm(_ name: String) throws -> VM { try client.call("GET", "/v1/vms/\(name)", as: VM.self) }

    func createProbe(_ name: String, workload: String = "dirty", memory: Int = 64, extra: String = "") throws -> VM {
        let body = #"{"name":"\#(name)","probe":"\#(workload)","memory_mib":\#(memory)\#(extra)}"#
        let r = try req("POST", "/v1/vms", json: body)
        #expect(r.status == 201, "create \(name): \(r.text)")
        return try JSONDecoder().decode(VM.self, from: Data(r.body))
    }

    func action(_ name: String, _ verb: String) throws -> APIClient.Response {
        try req("POST", "/v1/vms/\(name)/\(verb)")
    }

    /// Polls until `cond` holds on the VM (or the timeout), returning the last VM seen.
    func waitFor(_ name: String, timeout: Double = 10, _ cond: (VM) -> Bool) throws -> VM {
        let deadline = Date().addingTimeInterval(timeout)
        var last = try vm(name)
        while !cond(last) && Date() < deadline {
            usleep(100_000)
            last = try vm(name)
        }
        return last
    }

    func metric(_ line: String) throws -> Double? {
        let text = try req("GET", "/metrics").text
        for l in text.split(separator: "\n") where l.hasPrefix(line + " ") {
            return Double(l.split(separator: " ").last ?? "")
        }
        return nil
    }
}

import Synchronization

func processAlive(_ pid: Int) -> Bool {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = stat.lastIndex(of: ")") else { return false }
    let state = stat[stat.index(after: close)...].split(separator: " ").first
    return state != "Z" && state != "X"
}
