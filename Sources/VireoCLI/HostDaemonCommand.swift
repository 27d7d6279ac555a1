import ArgumentParser
import Host
import KVM
import VireoAPI
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// `vireo host [serve]`: the daemon.
struct HostServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run the host daemon: VM inventory, one VMM process per VM, REST API (the default of `vireo host`).",
        discussion: """
        VMs keep running when the daemon stops or is killed; a restarted daemon re-adopts them.
        Example: vireo host --socket /run/vireo/vireo.sock --data-dir /var/lib/vireo
        """)

    @Option(help: ArgumentHelp("A config file (TOML: `key = value` lines, the keys being these flags' names, e.g. data-dir = \"/var/lib/vireo\"); a flag given here wins over it.", valueName: "file"))
    var config: String?

    @Option(help: "Unix socket the API listens on (default \(APIClient.defaultSocket)).")
    var socket: String?

    @Option(help: "Directory for the inventory database and each VM's logs and sockets (default /var/lib/vireo).")
    var dataDir: String?

    @Option(help: "Also listen on TCP ADDR:PORT (needs --token-file; clients send 'Authorization: Bearer TOKEN', browsers log in at /ui/).")
    var listen: String?

    @Option(help: "File holding the bearer token for the TCP listener (16+ characters).")
    var tokenFile: String?

    @Option(name: .customLong("pool"), help: ArgumentHelp("A storage pool (repeatable): a directory whose files VMs may use as kernels, initrds, disks, template bases and import sources. The data directory is always one; files anywhere else are refused. Given here, these replace the config file's.", valueName: "dir"))
    var pools: [String] = []

    @Option(help: ArgumentHelp("The vireo binary that runs each VMM.", visibility: .hidden))
    var vmmBinary: String?

    @Option(name: .customLong("active-memory-window"), help: ArgumentHelp("Seconds per sample of each VM's active-memory estimate (given to every VMM; 0 turns it off; default 10).", valueName: "seconds"))
    var activeMemoryWindow: UInt32?

    @Option(name: .customLong("active-memory-sample"), help: ArgumentHelp("Each VM's estimate tracks a random 1/N of its pages per window (a power of two up to 1024; default 16; 1 = every page, exact but dearer).", valueName: "N"))
    var activeMemorySample: UInt32?

    @Option(name: .customLong("memory-overcommit"), help: ArgumentHelp("Provisioned guest memory this host admits per byte of RAM + swap (0.01 to 100; default 1.5): a VM starts only if its memory plus that of the VMs running fits (RAM + swap) x RATIO.", valueName: "ratio"))
    var memoryOvercommit: Double?

    @Option(name: .customLong("memory-min-free"), help: ArgumentHelp("The free-memory reserve the host's memory states are measured against (high from 4x it, soft below 64%, hard below 32%, low below that; docs/memory.md). Default: ESXi's scale, 6% of the first 4 GiB of RAM (or of the daemon's memory cgroup limit) down to 1% past 28 GiB.", valueName: "size"))
    var memoryMinFree: String?

    @Flag(inversion: .prefixedNo, help: "Make the `default` network (a NAT bridge with DHCP and DNS) at this data directory's first start (the default; --no-default-network does not).")
    var defaultNetwork: Bool?
    @Flag(inversion: .prefixedNo, help: "On a host whose KVM is the PVM backend (`vireo host check` says so), start Linux-kernel VMs anyway; they are refused there otherwise, since stock kernels are emulated and do not boot usefully.")
    var allowEmulatedKernels: Bool?

    func run() throws {
        try reportingErrors {
            var file = HostConfigFile(path: "")
            if let config { file = try HostConfigFile.load(config) }
            let memoryOvercommit = self.memoryOvercommit ?? file.decimal("memory-overcommit")
            let activeMemoryWindow = self.activeMemoryWindow ?? file.uint32("active-memory-window")
            let activeMemorySample = self.activeMemorySample ?? file.uint32("active-memory-sample")
            if let r = memoryOvercommit, !(0.01...100).contains(r) {
                throw VireoError(.invalidArgument, "memory-overcommit \(r) is out of range: give 0.01 to 100 (1 admits RAM + swap exactly; the default 1.5 admits half as much again)")
            }
            guard (activeMemoryWindow ?? 0) <= 3600 else {
                throw VireoError(.invalidArgument, "active-memory-window \(activeMemoryWindow ?? 0) is more than an hour; give 1 to 3600 seconds, or 0 to turn the estimate off")
            }
            var options = HostDaemon.Options(
                socketPath: socket ?? file.string("socket") ?? APIClient.defaultSocket,
                dataDir: dataDir ?? file.string("data-dir") ?? "/var/lib/vireo",
                listen: listen ?? file.string("listen"), tokenFile: tokenFile ?? file.string("token-file"),
                vmmBinary: vmmBinary ?? file.string("vmm-binary") ?? ChildProcess.selfExecutable())
            if let n = activeMemorySample, n == 0 || n > 1024 || n & (n - 1) != 0 {
                throw VireoError(.invalidArgument, "active-memory-sample \(n) is not a power of two from 1 to 1024 (1 tracks every page)")
            }
            options.activeMemoryWindow = activeMemoryWindow
            options.activeMemorySample = activeMemorySample
            options.pools = pools.isEmpty ? file.strings("pool") ?? [] : pools
            options.memoryOvercommit = memoryOvercommit
            if let m = memoryMinFree ?? file.string("memory-min-free") {
                guard let v = ByteSize.parse(m, defaultUnit: 1 << 20), v >= 1 << 20 else {
                    throw VireoError(.invalidArgument, "memory-min-free '\(m)' is not a size of 1 MiB or more; write it like 64M or 1G")
                }
                options.memoryMinFree = v
            }
            options.kvmIsPVM = KVMSystem.isPVM
            options.allowEmulatedKernels = allowEmulatedKernels ?? file.bool("allow-emulated-kernels") ?? false
            options.defaultNetwork = defaultNetwork ?? file.bool("default-network") ?? true
            if let path = config { options.configFile = path }
            try HostDaemon.runBlocking(options)
        }
    }
}

/// `vireo host info`: the daemon's view of this host.
struct HostInfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "info", abstract: "Show this host's capacity and what its VMs use (asks the daemon).")
    @OptionGroup var client: ClientOptions

    func run() throws {
        try reportingErrors {
            let c = try client.makeClient()
            let r = try c.request("GET", "/v1/host")
            try APIClient.check(r)
            if client.json { print(r.text); return }
            let h = try client.decode(HostInfo.self, r)
            var rows: [(String, String)] = [
                ("hostname", h.hostname), ("version", h.version), ("kvm", h.kvm ? "yes" : "no (/dev/kvm not usable)"),
                ("pCPUs", String(h.pcpus)), ("vCPUs provisioned", String(h.vcpusProvisioned)),
                ("vCPU:pCPU overcommit", String(format2(h.vcpuOvercommitRatio))),
                ("memory physical", ByteSize.format(h.memoryPhysicalBytes)),
                ("memory provisioned", ByteSize.format(h.memoryProvisionedBytes)),
                ("VMs", "\(h.vmsTotal) (\(h.vmsRunning) running)"), ("data dir", h.dataDir),
            ]
            if let l = h.memoryLadder {
                let pct = l.minFreeBytes == 0 ? 0 : l.freeBytes * 100 / l.minFreeBytes
                rows.append(("memory state", "\(l.state.rawValue): \(ByteSize.format(l.freeBytes)) free of \(ByteSize.format(l.totalBytes)) (\(l.source == "host" ? "host RAM" : "cgroup \(l.source)"), \(pct)% of minFree \(ByteSize.format(l.minFreeBytes))); \(l.stateChanges) change\(l.stateChanges == 1 ? "" : "s")"))
                rows.append(("saved by sharing", ByteSize.format(l.ksmSavedBytes) + (l.ksmRun.map { $0 == 1 ? " (KSM on, \(l.ksmPagesToScan ?? 0) pages per scan)" : " (KSM off)" } ?? " (no KSM)")))
                rows.append(("saved by balloons", ByteSize.format(l.balloonBytes)))
                rows.append(("saved by compression", ByteSize.format(l.compressedBytes)))
                rows.append(("saved by swap", ByteSize.format(l.swappedBytes)))
                if !l.vmsWithoutBalloon.isEmpty { rows.append(("no balloon driver", l.vmsWithoutBalloon.joined(separator: ", "))) }
                if !l.vmsWithoutReclaim.isEmpty { rows.append(("VMM cannot compress", l.vmsWithoutReclaim.joined(separator: ", "))) }
            }
            printKeyValues(rows)
        }
    }
}

func format2(_ d: Double) -> String {
    let r = (d * 100).rounded() / 100
    return String(r)
}

func printKeyValues(_ rows: [(String, String)]) {
    let w = rows.map(\.0.count).max() ?? 0
    for (k, v) in rows { print(k + ":" + String(repeating: " ", count: w - k.count + 2) + v) }
}
