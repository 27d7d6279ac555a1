import ArgumentParser
import VMM
import VireoConfig
import VireoSupport
import GuestMemory
#if canImport(Glibc)
import Glibc
#endif

/// `vireo run`: boot one VM in this process, its serial console on the terminal.
struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Boot a virtual machine in this process, with its serial console on the terminal.",
        discussion: """
        The VM ends when the guest reboots or powers off (exit 0), on SIGINT/SIGTERM (130/143),
        or on a fatal error (1, with a one-line reason).
        When stdin is a terminal it is put in raw mode (keys such as Ctrl-C go to the guest):
        Ctrl-A x quits (exit 130), Ctrl-A Ctrl-A sends Ctrl-A, Ctrl-A h lists the keys.
        Example: vireo run --kernel out/guest/vmlinuz --initrd out/guest/initramfs.cpio.gz --cpus 2 --memory 512M
        """)

    @Option(help: ArgumentHelp("Run the VM this configuration file describes (JSON: the VMConfig that `vireo host` writes for each VM; see docs/host.md). The file is the whole description: give none of --kernel, --probe, --cpus, --memory, --disk, ... with it.", valueName: "file"))
    var config: String?

    @Option(help: "The VM's name in its configuration.")
    var name: String?

    @Option(help: ArgumentHelp("Restore the machine saved in this snapshot directory (the control socket's `snapshot DIR`) instead of booting; it continues where it was saved (docs/snapshots.md).", valueName: "dir"))
    var restore: String?

    @Option(help: ArgumentHelp("Wait for a live migration on tcp:HOST:PORT or unix:PATH and run the machine it brings (the source's control socket: `migrate ADDRESS`); docs/migration.md.", valueName: "address"))
    var incoming: String?

    @Option(help: ArgumentHelp("With --incoming: accept only a source that presents the token in this file (the daemons make one per migration).", valueName: "file"))
    var incomingTokenFile: String?

    @Flag(help: "Start with the vCPUs paused (as QEMU's -S): the machine is built, restored or received, then waits for the control socket's `resume`. Needs --api-socket.")
    var paused = false

    @Option(help: "Guest kernel: an ELF vmlinux or a bzImage.")
    var kernel: String?

    @Option(help: "Initial ramdisk to load with the kernel.")
    var initrd: String?

    @Option(help: ArgumentHelp("Kernel command line (default: \(MachineConfig.defaultCmdline)).", valueName: "cmdline"))
    var cmdline: String?

    @Option(help: "Number of vCPUs (default 1).")
    var cpus: Int?

    @Option(help: "Guest RAM in whole MiB, like 512M or 2G (a bare number is MiB; default 512M).")
    var memory: String?

    @Option(help: "Where the guest's serial console goes: stdio, file=PATH or none.")
    var serial: String = "stdio"

    @Option(name: .customLong("console-socket"), help: ArgumentHelp("Also serve the serial console on this unix socket (mode 0600): any number of clients see the guest's output and may type to it.", valueName: "path"))
    var consoleSocket: String?

    @Option(name: .customLong("disk"), help: ArgumentHelp("virtio-blk disk (repeatable): path=FILE[,format=raw|qcow2][,readonly=on][,id=NAME][,backing=any|confined|forbidden][,bps=N][,iops=N]. Without format= the file's signature decides (and vireo says which): qcow2 by its header, raw when no image signature is there; a file declared raw that carries one is refused.", valueName: "spec"))
    var disks: [String] = []

    @Option(name: .customLong("net"), help: ArgumentHelp("virtio-net on a TAP device (repeatable): tap=NAME[,mac=MAC][,bps=N][,pps=N]. Needs CAP_NET_ADMIN to create the TAP.", valueName: "spec"))
    var nets: [String] = []

    @Flag(help: "virtio-rng: guest entropy from the host's getrandom.")
    var rng = false

    @Option(help: ArgumentHelp("virtio-balloon: size=MIB[,stats=on][,deflate-on-oom=on][,reporting=on][,control=FIFO]. Write a new target in MiB as a line to FIFO while the VM runs.", valueName: "spec"))
    var balloon: String?

    @Option(help: ArgumentHelp("virtio-vsock: cid=N,socket=PATH (Firecracker-style host unix sockets).", valueName: "spec"))
    var vsock: String?

    @Option(name: .customLong("vsock-socket"), help: ArgumentHelp("With --config: the host socket of the VM's vsock (its vsock_cid).", valueName: "path"))
    var vsockSocket: String?

    @Flag(help: "virtio-console: a second console (hvc0) on stdout.")
    var console = false

    @Option(name: .customLong("console-log"), help: ArgumentHelp("With --console: write hvc0 output to this file instead of stdout.", valueName: "path"))
    var consoleLog: String?

    @Option(help: ArgumentHelp("Run the built-in probe guest instead of a kernel: pio:N, mmio:N, dirty[:PASSES], compute:N.", visibility: .hidden))
    var probe: String?

    @Option(name: .customLong("probe-image"), help: ArgumentHelp("Run a flat ring-3 probe binary (bench/probe-virtio) that may drive the --disk/--net devices.", visibility: .hidden))
    var probeImage: String?
    @Option(name: .customLong("active-memory-window"), help: ArgumentHelp("Seconds per sample of the active-memory estimate (KVM dirty-page logging on guest RAM; the bytes the guest wrote in the last window). 0 turns it off.", valueName: "seconds"))
    var activeMemoryWindow: UInt32 = 10

    @Option(name: .customLong("active-memory-sample"), help: ArgumentHelp("Track a random 1/N of the guest pages per window for the active-memory estimate (N a power of two up to 1024; default 16; 1 = every page, exact but dearer). N times fewer write faults; see docs/PERFORMANCE.md.", valueName: "N"))
    var activeMemorySample: UInt32 = 16

    @Option(name: .customLong("swap-file"), help: ArgumentHelp("A per-VM swap file for cold guest pages that do not compress to half a page (control command `reclaim`; docs/memory-reclaim.md). Default: none, such pages stay in RAM.", valueName: "path"))
    var swapFile: String?

    @Option(name: .customLong("compress-store-max"), help: ArgumentHelp("The bound on the compressed store of reclaimed guest pages (e.g. 128M). Default: a quarter of guest RAM.", valueName: "size"))
    var compressStoreMax: String?

    @Option(help: "A unix socket for this VMM's control protocol: status, pause, resume, shutdown (ACPI power button), stop (used by `vireo host`).")
    var apiSocket: String?

    @Option(help: ArgumentHelp("Write how the VM ended (status line, reason line) to this file.", visibility: .hidden))
    var exitFile: String?

    /// The machine to run: the VM configuration (from --config, or built from the flags: one
    /// type either way) in the machine's terms, plus this run's wiring and sampler settings.
    func makeConfig(restoring: RestoreSource? = nil) throws -> MachineConfig {
        var wiring = MachineConfig.Wiring()
        wiring.serial = try parseSerial(serial)
        wiring.consoleSocket = consoleSocket
        if let restoring {
            // A snapshot or a migration brings the machine (under a --config of the caller's own
            // when one was adopted); only this run's wiring comes from the flags.
            wiring.vsockSocket = vsockSocket
            wiring.virtioConsoleLog = consoleLog
            var c = try restoring.machineConfig(wiring: wiring)
            c.consoleSocket = wiring.consoleSocket
            return try applySampler(c)
        }
        let vm: VMConfig
        if let config {
            let given = descriptionFlagsGiven
            guard given.isEmpty else {
                throw ValidationError("--config \(config) describes the whole VM; leave out \(given.joined(separator: ", ")) (or edit the file)")
            }
            vm = try Self.readConfig(config)
            wiring.vsockSocket = vsockSocket
            wiring.virtioConsoleLog = consoleLog
        } else {
            guard vsockSocket == nil else { throw ValidationError("--vsock-socket goes with --config; otherwise give --vsock cid=N,socket=PATH") }
            vm = try makeVMConfig(wiring: &wiring)
        }
        var config = try MachineConfig(vm: vm, wiring: wiring)
        if let probeImage { config.boot = .probe(.image(path: probeImage)) }
        return try applySampler(config)
    }

    /// The snapshot `--restore DIR` names, under the `--config FILE` given with it (a clone's
    /// or a revert's configuration: its own disks, TAPs, MACs, vsock CID, generation ID).
    func loadRestore(_ dir: String) throws -> RestoreSource {
        let given = descriptionFlagsGiven
        guard given.isEmpty else {
            throw ValidationError("--restore \(dir) brings the whole machine; leave out \(given.joined(separator: ", ")) (a --config of the same machine, with its own disks, TAPs and MACs, may be given)")
        }
        var source = try RestoreSource.load(dir)
        if let config { try source.adoptConfig(try Self.readConfig(config), for: .restore) }
        return source
    }

    /// The active-memory sampler's settings (`--active-memory-window`, `--active-memory-sample`).
    func applySampler(_ c: MachineConfig) throws -> MachineConfig {
        var config = c
        guard activeMemoryWindow <= 3600 else { throw ValidationError("--active-memory-window \(activeMemoryWindow) is more than an hour; give 1 to 3600 seconds, or 0 to turn the estimate off") }
        config.activeMemoryWindowSeconds = activeMemoryWindow
        // Logging starts one window in: a booting guest keeps its huge pages (see docs/PERFORMANCE.md).
        config.activeMemoryStartDelaySeconds = activeMemoryWindow
        guard activeMemorySample >= 1, activeMemorySample <= 1024, activeMemorySample & (activeMemorySample - 1) == 0 else {
            throw ValidationError("--active-memory-sample \(activeMemorySample) is not a power of two from 1 to 1024 (1 tracks every page)")
        }
        config.activeMemorySampleOneIn = activeMemorySample
        config.reclaim.swapFile = swapFile
        if let swapFile, swapFile.isEmpty || swapFile.hasSuffix("/") {
            throw ValidationError("--swap-file '\(swapFile)' is not a file path; give a path such as /var/lib/vireo/vms/NAME/swap")
        }
        if let text = compressStoreMax {
            guard let bytes = ByteSize.parse(text), bytes <= 1 << 46 else {
                throw ValidationError("--compress-store-max '\(text)' is not a size; give bytes or a K, M or G size such as 128M (0: compress nothing)")
            }
            config.reclaim.storeMaxBytes = bytes
        }
        return config
    }

    /// The flags that describe the VM itself, of those given (a --config file or a --restore
    /// snapshot brings the whole description, so none may be given with them).
    var descriptionFlagsGiven: [String] {
        [("--kernel", kernel != nil), ("--initrd", initrd != nil), ("--cmdline", cmdline != nil), ("--cpus", cpus != nil),
            ("--memory", memory != nil), ("--disk", !disks.isEmpty), ("--net", !nets.isEmpty), ("--rng", rng),
            ("--balloon", balloon != nil), ("--vsock", vsock != nil), ("--console", console), ("--probe", probe != nil),
            ("--probe-image", probeImage != nil), ("--name", name != nil)].filter(\.1).map(\.0)
    }

    /// Reads and checks a configuration file (VMConfig JSON).
    static func readConfig(_ path: String) throws -> VMConfig {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw VireoError.system("--config \(path): cannot open the configuration file") }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 { if errno == EINTR { continue }; throw VireoError.system("--config \(path): cannot read it") }
            if n == 0 { break }
            bytes += buf[0..<n]
            guard bytes.count <= 4 << 20 else { throw VireoError(.invalidArgument, "--config \(path) is larger than 4 MiB; it is not a VM configuration") }
        }
        do throws(ConfigProblem) { return try VMConfig.decode(bytes, source: "--config \(path)") } catch {
            throw VireoError(.invalidArgument, error.message)
        }
    }

    /// The VM configuration the flags describe; the run-only parts go into `wiring`.
    func makeVMConfig(wiring: inout MachineConfig.Wiring) throws -> VMConfig {
        var kernelPath = kernel
        if probeImage != nil {
            guard kernel == nil, probe == nil else { throw ValidationError("give only one of --kernel, --probe, --probe-image") }
            // A probe image drives virtio devices like a kernel would; it boots in its place.
            kernelPath = probeImage
        } else if probe != nil {
            guard kernel == nil else { throw ValidationError("give either --kernel or --probe, not both") }
        } else if kernel == nil {
            throw VireoError(.invalidArgument, "missing --kernel PATH (a vmlinux or bzImage; scripts/guest-assets.sh makes one from Debian's kernel)")
        }
        let cpus = self.cpus ?? 1
        guard (1...VMLimits.maxVCPUs).contains(cpus) else {
            throw VireoError(.invalidArgument, "--cpus \(cpus) is out of range", hint: "give 1 to \(VMLimits.maxVCPUs) vCPUs")
        }
        let bytes = try parseSize(memory ?? "512M", option: "--memory")
        try Machine.validateMemorySize(bytes)
        guard bytes % (1 << 20) == 0 else {
            throw VireoError(.invalidArgument, "--memory \(ByteSize.format(bytes)) is not a whole number of MiB", hint: "give a size such as 512M or 2G")
        }
        if let probe { _ = try ProbeWorkload.parse(probe) }
        var vm = VMConfig(name: name ?? "vm", vcpus: cpus, memoryMiB: Int(bytes >> 20), kernel: kernelPath,
                          initrd: initrd, cmdline: cmdline, probe: probe)
        do {
            vm.disks = try disks.map(DeviceOptions.disk)
            vm.nics = try nets.map(DeviceOptions.net)
            vm.rng = rng ? true : nil
            if let text = balloon {
                let b = try DeviceOptions.balloon(text)
                vm.balloonMiB = Int(b.targetMiB)
                vm.balloonStats = b.stats
                vm.balloonDeflateOnOOM = b.deflateOnOOM ? true : nil
                vm.balloonFreePageReporting = b.reporting ? true : nil
                wiring.balloonControl = b.control
            }
            if let text = vsock {
                let v = try DeviceOptions.vsock(text)
                vm.vsockCID = Int(v.cid)
                wiring.vsockSocket = v.socketPath
            }
            if console {
                vm.virtioConsole = true
                wiring.virtioConsoleLog = consoleLog
            } else if consoleLog != nil { throw DeviceOptions.ParseError("--console-log needs --console") }
        } catch let e as DeviceOptions.ParseError {
            throw ValidationError(e.description)
        }
        // The built-in probe has no drivers: it leaves disks alone (the host daemon's tests run
        // probe VMs on store images), and other devices make no sense with it.
        if probe != nil, !vm.nics.isEmpty || vm.rng == true || vm.balloonMiB != nil || vm.vsockCID != nil || vm.virtioConsole == true {
            throw ValidationError("virtio devices other than --disk need --kernel or --probe-image (the built-in probe has no drivers)")
        }
        do throws(ConfigProblem) { try vm.validate() } catch {
            throw ValidationError(error.message)
        }
        return vm
    }

    func run() throws {
        var wasRaw = false
        // SIGINT/SIGTERM end the machine through Machine.run's signalfd, which blocks them on its
        // own thread. Threads started before it (the control and console sockets' servers)
        // would otherwise take them with the default action: the VMM died without its exit file
        // (a daemon-run VMM's SIGTERM left its supervisor no reason). Blocked from here on, a
        // signal that comes while the machine is built waits for run() and stops it cleanly.
        var stopSignals = sigset_t()
        sigemptyset(&stopSignals)
        sigaddset(&stopSignals, SIGINT)
        sigaddset(&stopSignals, SIGTERM)
        pthread_sigmask(SIG_BLOCK, &stopSignals, nil)
        let exit = try reportingErrors { () throws -> MachineExit in
            var migration: IncomingMigration? = nil
            if paused, apiSocket == nil {
                throw ValidationError("--paused waits for the control socket's `resume`; give --api-socket PATH too")
            }
            if let incoming {
                let given = descriptionFlagsGiven
                guard given.isEmpty, restore == nil else {
                    throw ValidationError("--incoming brings the whole machine from the source; leave out \((given + (restore == nil ? [] : ["--restore"])).joined(separator: ", ")) (a --config of this side's own, with its disk paths and TAPs, may be given)")
                }
                let address = try MigrationAddress.parse(incoming)
                let local = try config.map(Self.readConfig)
                let token = try incomingTokenFile.map { Array(try OwnedFD.readFile($0, limit: 4096, what: "migration token file")).filter { $0 > 32 } }
                printError("vireo: waiting for a migration on \(address)")
                let received = try IncomingMigration.receive(on: address, token: token, disks: local?.disks ?? [])
                if let local {
                    do { try received.source.adoptConfig(local, for: .migration) } catch {
                        try? received.ready(error: "\(error)")
                        throw error
                    }
                }
                migration = received
            }
            let restoring = try migration?.source ?? restore.map(loadRestore)
            var config = try makeConfig(restoring: restoring)
            config.consoleEscape = config.serial == .stdio && isatty(0) == 1 && takesConsoleInput(config.boot)
            let probeLog = probeConsole(config)
            let machine: Machine
            do {
                machine = try Machine(config: config, onProbePass: { pass in
                    // Passes 1, 2, 4, 8, ... on stdout (benchmarks and tests wait for them); the
                    // probe guest has no UART: these are its console output too.
                    guard pass & (pass - 1) == 0 else { return }
                    writeLine("probe_pass=\(pass)")
                    probeLog?.append("probe: dirty pass \(pass) done\n")
                }, restoring: restoring)
            } catch {
                try? migration?.ready(error: "\(error)")
                throw error
            }
            if let migration {
                // The source hands the guest over only now; until its word, the guest is there.
                try migration.ready(error: nil)
                do { try migration.awaitGo() } catch {
                    throw VireoError(.io, "the source did not hand the VM over (\(error)); it runs on there, not here")
                }
            }
            let control = try apiSocket.map { try ControlServer(path: $0, machine: machine) }
            defer { control?.remove() }
            defer { if let consoleSocket { unlink(consoleSocket) } }
            if case .probe = config.boot, let ram = machine.memory.regions.first {
                let start = UInt64(UInt(bitPattern: ram.host))
                writeLine("guest_ram=\(hex(start))-\(hex(start + ram.size))")
            }
            // An interactive console: raw terminal with Ctrl-A escapes (restored however we end).
            let terminal = config.consoleEscape ? RawTerminal.enter() : nil
            defer { terminal?.restore() }
            wasRaw = terminal != nil
            migration?.confirmRunning()
            if paused { machine.pauseGate.startPaused() }
            let exit = machine.run()
            var reason = exit.description
            if case .migrated = exit {
                let m = machine.migration.snapshot
                reason = "migrated to \(m.destination): \(m.round) rounds, \(ByteSize.format(m.bytesSent)) sent (\(m.pagesSent) pages, \(m.zeroPages) zero pages skipped"
                    + (m.storageCopy ? ", \(ByteSize.format(m.diskBytesSent)) of disk" : "") + ") in \(m.totalMs) ms; the guest paused \(m.downtimeMs.map { "\($0) ms" } ?? "?")"
                    + " [downtime_ms=\(m.downtimeMs ?? 0) total_ms=\(m.totalMs) bytes_sent=\(m.bytesSent) disk_bytes_sent=\(m.diskBytesSent) rounds=\(m.round)]"
                printError("vireo: " + reason)
            }
            terminal?.restore()
            if let exitFile { writeExitFile(exitFile, status: exit.exitStatus, reason: reason) }
            return exit
        }
        if wasRaw, exit.exitStatus != 0 { printError("") }   // the guest's last line may be unfinished
        switch exit {
        case .failed(let why): printError("vireo: \(why)")
        case .signal(let s): printError("vireo: stopped by \(s == 2 ? "SIGINT" : s == 15 ? "SIGTERM" : "signal \(s)"); guest halted")
        default: break
        }
        if exit.exitStatus != 0 { throw ExitCode(exit.exitStatus) }
    }
}

/// Whether the guest reads COM1 (a kernel, or the echo probe): only then is the terminal taken over.
private func takesConsoleInput(_ boot: MachineConfig.Boot) -> Bool {
    switch boot {
    case .linux: return true
    case let .probe(workload): return workload == .echo
    }
}

/// Writes a line to stdout immediately (unbuffered: benchmark harnesses read it through a pipe).
func writeLine(_ s: String) {
    let line = s + "\n"
    _ = line.withCString { write(1, $0, strlen($0)) }
}

func parseSerial(_ text: String) throws -> MachineConfig.Serial {
    switch text {
    case "stdio": return .stdio
    case "none", "off": return .none
    default:
        if text.hasPrefix("file="), text.count > 5 { return .file(String(text.dropFirst(5))) }
        throw VireoError(.invalidArgument, "--serial '\(text)' is not one of stdio, file=PATH, none")
    }
}

/// For probe guests with `--serial file=PATH`: the log their pass markers are written to.
private func probeConsole(_ config: MachineConfig) -> AppendFile? {
    guard case .probe = config.boot, case let .file(path) = config.serial else { return nil }
    return AppendFile(path: path, truncate: true)
}

final class AppendFile: Sendable {
    let fd: Int32
    init?(path: String, truncate: Bool) {
        fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | (truncate ? O_TRUNC : 0), 0o644)
        if fd < 0 { return nil }
    }
    deinit { close(fd) }
    func append(_ s: String) { _ = s.withCString { write(fd, $0, strlen($0)) } }
}

/// `--exit-file`: how the machine ended, for the daemon that supervises this VMM.
private func writeExitFile(_ path: String, status: Int32, reason: String) {
    guard let f = AppendFile(path: path, truncate: true) else { return }
    f.append("\(status)\n\(reason.replacingNewlines)\n")
}

private extension String {
    var replacingNewlines: String { String(map { $0 == "\n" ? " " : $0 }) }
}
