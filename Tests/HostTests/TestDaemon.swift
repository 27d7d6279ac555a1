import Foundation
import Testing
import VireoAPI
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// The real `vireo` binary (built by `swift build`), as the VMM tests find it.
enum VireoBinary {
    static let packageRoot: String = {
        var parts = #filePath.split(separator: "/").map(String.init)
        parts.removeLast(3)   // Tests/HostTests/TestDaemon.swift
        return "/" + parts.joined(separator: "/")
    }()

    static let path: String? = {
        if let env = getenv("VIREO_BIN") { return String(cString: env) }
        var best: (path: String, mtime: Int)?
        for config in ["release", "debug"] {
            let p = "\(packageRoot)/.build/\(config)/vireo"
            var st = stat()
            if stat(p, &st) == 0, best == nil || st.st_mtim.tv_sec > best?.mtime ?? 0 { best = (p, st.st_mtim.tv_sec) }
        }
        if best == nil { print("SKIPPED (host daemon tests): no built vireo binary under .build/ and VIREO_BIN unset") }
        return best?.path
    }()

    static let hasKVM: Bool = {
        let ok = access("/dev/kvm", R_OK | W_OK) == 0
        if !ok { print("SKIPPED (host daemon VM tests): /dev/kvm is not usable here; probe-guest VMs need it") }
        return ok
    }()
}

/// A real `vireo host` process on a temporary socket and data directory.
final class TestDaemon: @unchecked Sendable {
    let dir: String
    let socket: String
    let dataDir: String
    var child: ChildProcess?
    var tcpPort: UInt16?
    let extra: [String]

    private static let counter = Mutex(0)

    init(extra: [String] = []) throws {
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
        let c = try ChildProcess([bin, "host", "--socket", socket, "--data-dir", dataDir] + extra)
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
