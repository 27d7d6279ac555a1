import NIOCore
import NIOPosix
import Dispatch
import VireoAPI
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// `vireo host`: the daemon. Owns the inventory in `dataDir`, serves the API, supervises VMMs.
public enum HostDaemon {
    public struct Options: Sendable {
        public var socketPath: String
        public var dataDir: String
        /// "ADDR:PORT" for the optional TCP listener (needs `tokenFile`).
        public var listen: String?
        public var tokenFile: String?
        /// The `vireo` binary that runs each VMM (`vireo run ...`).
        public var vmmBinary: String
        /// Passed to every VMM as --active-memory-window (nil: the VMM's default, 10 s).
        public var activeMemoryWindow: UInt32?
        /// Passed to every VMM as --active-memory-sample (nil: the VMM's default, 1/16).
        public var activeMemorySample: UInt32?
        /// Directories besides the data directory where VM files may live (StoragePools.swift).
        public var pools: [String] = []
        /// Provisioned guest memory admitted per byte of host RAM + swap (nil: 1.5; Admission.swift).
        public var memoryOvercommit: Double?
        /// The minFree reserve the host memory states are measured against (nil: ESXi's sliding scale; HostMemory.swift).
        public var memoryMinFree: UInt64?
        /// This host's KVM is the PVM backend (the caller detects it: `KVMSystem.isPVM`).
        public var kvmIsPVM = false
        /// Start Linux-kernel VMs even on a PVM host (they are refused there otherwise).
        public var allowEmulatedKernels = false
        /// Make the `default` network (NAT, DHCP, DNS) at the first start of this data directory.
        public var defaultNetwork = true
        /// The --config file these options came from in part (said in the start-up line).
        public var configFile: String?
        public init(socketPath: String, dataDir: String, listen: String?, tokenFile: String?, vmmBinary: String) {
            self.socketPath = socketPath; self.dataDir = dataDir; self.listen = listen; self.tokenFile = tokenFile; self.vmmBinary = vmmBinary
        }
    }

    nonisolated(unsafe) private static var socketPathC: UnsafeMutablePointer<CChar>?
    nonisolated(unsafe) private static var stopPipe: Int32 = -1
    nonisolated(unsafe) private static var stopPending: sig_atomic_t = 0

    /// On SIGTERM/SIGINT (a byte on a pipe from the handler): every `GET /v1/events?follow=true`
    /// stream gets a last daemon-stopping line and its end, 300 ms to be sent, then the daemon exits.
    private static func watchStopSignals(_ service: HostService) {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { return }
        let readEnd = fds[0]
        stopPipe = fds[1]
        DispatchQueue(label: "vireo.host.stop").async {
            var b: UInt8 = 0
            while read(readEnd, &b, 1) < 0 && errno == EINTR {}
            service.eventHub.stopAll()
            NetworkHelpers.stopAll()   // dnsmasq ends with the daemon; bridges and TAPs stay for the VMMs
            usleep(300_000)
            if let p = HostDaemon.socketPathC { unlink(p) }
            _exit(0)
        }
    }

    public static func run(_ o: Options) async throws {
        var tcp: (host: String, port: Int, token: String)?
        if let listen = o.listen {
            guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]), (0...65535).contains(port) else {
                throw VireoError(.invalidArgument, "--listen '\(listen)' is not ADDR:PORT", hint: "for example --listen 127.0.0.1:8443 (port 0 picks a free one)")
            }
            guard let tokenFile = o.tokenFile else {
                throw VireoError(.invalidArgument, "--listen needs --token-file FILE: TCP clients must send 'Authorization: Bearer <token>'")
            }
            let raw = try OwnedFD.readFile(tokenFile, limit: 4096, what: "token file")
            let token = String(decoding: raw, as: UTF8.self).split(whereSeparator: { $0 == "\n" || $0 == "\r" || $0 == " " }).first.map(String.init) ?? ""
            guard token.count >= 16 else {
                throw VireoError(.invalidArgument, "the token in \(tokenFile) is shorter than 16 characters", hint: "make one with: head -c 32 /dev/urandom | base64 > \(tokenFile)")
            }
            var host = String(listen[..<colon])
            if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            tcp = (host, port, token)
        }

        try HostService.makeDirectory(o.dataDir)
        let lock = try lockDataDir(o.dataDir)
        defer { _ = lock }
        if let parent = o.socketPath.split(separator: "/").dropLast().joined(separator: "/") as String?, !parent.isEmpty {
            try HostService.makeDirectory((o.socketPath.hasPrefix("/") ? "/" : "") + parent)
        }
        if VMMProcess.control(o.socketPath, "", timeoutSeconds: 1) != nil || isListening(o.socketPath) {
            throw VireoError(.conflict, "another daemon already answers on \(o.socketPath)", hint: "stop it, or give this one another --socket")
        }

        let service = try HostService(dataDir: o.dataDir, vmmBinary: o.vmmBinary, pools: o.pools)
        await service.configureActiveMemory(window: o.activeMemoryWindow, sample: o.activeMemorySample)
        await service.configureAdmission(memoryOvercommit: o.memoryOvercommit)
        await service.configureMemoryPolicy(minFree: o.memoryMinFree)
        await service.configureKernelPolicy(kvmIsPVM: o.kvmIsPVM, allowEmulatedKernels: o.allowEmulatedKernels)
        await service.migrateDefinitions()
        for line in await service.restoreNetworks(createDefault: o.defaultNetwork) { printLine("vireo host: " + line) }
        await service.adoptAll()
        if let tcp { await service.configureMigrationListener(host: tcp.host) }

        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let requestMetrics = RequestMetrics()
        let unixRouter = Router(service: service, token: nil, requestMetrics: requestMetrics)
        let unix = try await HTTPServer.bindUnix(o.socketPath, group: group, router: unixRouter)
        chmod(o.socketPath, 0o660)
        socketPathC = strdup(o.socketPath)
        watchStopSignals(service)
        for s in [SIGTERM, SIGINT] {
            signal(s) { _ in
                // Async-signal-safe: write, unlink and _exit only. VMMs live on in their own sessions.
                // The byte wakes watchStopSignals, which ends event streams first, then exits.
                var b: UInt8 = 1
                if HostDaemon.stopPending == 0 && HostDaemon.stopPipe >= 0 && write(HostDaemon.stopPipe, &b, 1) == 1 {
                    HostDaemon.stopPending = 1   // a second signal exits at once
                    return
                }
                if let p = HostDaemon.socketPathC { unlink(p) }
                _exit(0)
            }
        }
        signal(SIGPIPE, SIG_IGN)
        printLine("vireo host: listening on \(o.socketPath), data in \(o.dataDir), pid \(getpid())" + (o.configFile.map { ", config \($0)" } ?? ""))
        if o.kvmIsPVM {
            printLine(o.allowEmulatedKernels
                ? "vireo host: this host's KVM is the PVM backend; Linux-kernel VMs start anyway (--allow-emulated-kernels) but are emulated and do not boot usefully"
                : "vireo host: this host's KVM is the PVM backend: Linux-kernel VMs are refused at start (scripts/testbed.sh runs them; --allow-emulated-kernels starts them anyway)")
        }

        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await HTTPServer.serve(unix, router: unixRouter) }
            if let tcp {
                let tcpRouter = Router(service: service, token: tcp.token, requestMetrics: requestMetrics)
                let listener = try await HTTPServer.bindTCP(host: tcp.host, port: tcp.port, group: group, router: tcpRouter)
                let port = listener.channel.localAddress?.port ?? tcp.port
                printLine("vireo host: listening on \(tcp.host):\(port) (bearer token required)")
                tasks.addTask { try await HTTPServer.serve(listener, router: tcpRouter) }
            }
            tasks.addTask {
                while true {
                    await service.superviseTick()
                    try await Task.sleep(for: .milliseconds(250))
                }
            }
            tasks.addTask {
                // The reclamation ladder (docs/memory.md): once a second.
                while true {
                    await service.ladderTick()
                    try await Task.sleep(for: .seconds(1))
                }
            }
            try await tasks.next()
            tasks.cancelAll()
        }
    }

    /// One daemon per data directory: an exclusive flock held for the daemon's life.
    private static func lockDataDir(_ dir: String) throws -> OwnedFD {
        let fd = try OwnedFD.open(dir + "/daemon.lock", flags: O_RDWR | O_CREAT, purpose: "create the lock file")
        guard flock(fd.rawValue, LOCK_EX | LOCK_NB) == 0 else {
            throw VireoError(.conflict, "another vireo host is using the data directory \(dir)", hint: "stop it, or give this one another --data-dir")
        }
        return fd
    }

    private static func isListening(_ path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return UnixSocketAddress.with(path) { connect(fd, $0, $1) } == 0
    }

    private static func printLine(_ s: String) {
        let line = s + "\n"
        _ = line.withCString { write(2, $0, strlen($0)) }
    }
}

extension HostDaemon {
    /// For synchronous callers (the CLI): runs the daemon until it ends; rethrows its error.
    public static func runBlocking(_ o: Options) throws {
        final class Outcome: @unchecked Sendable { var error: Error? }
        let outcome = Outcome()
        // Whoever started us may have blocked SIGTERM/SIGINT; the daemon's handlers must see them.
        // Done before any thread of ours exists, so every thread inherits the mask.
        var stopSignals = sigset_t()
        sigemptyset(&stopSignals)
        sigaddset(&stopSignals, SIGTERM)
        sigaddset(&stopSignals, SIGINT)
        pthread_sigmask(SIG_UNBLOCK, &stopSignals, nil)
        let done = DispatchSemaphore(value: 0)
        Task.detached {
            do { try await run(o) } catch { outcome.error = error }
            done.signal()
        }
        done.wait()
        if let e = outcome.error { throw e }
    }
}
