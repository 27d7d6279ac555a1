import CLinux
import Devices
import GuestMemory
import KVM
import Synchronization
import VireoSupport
import VireoConfig
import Virtio
import X86Boot
#if canImport(Glibc)
import Glibc
#endif

/// One virtual machine: KVM VM, guest memory, vCPUs, devices, and the threads that run them.
///
/// Threads: one host thread per vCPU, blocked in KVM_RUN and handling its own exits; the
/// thread that calls `run()` supervises (signals, console input, stop requests).
/// State: Created -> Running -> Stopped; the first stop reason wins (`StopSignal`).
public final class Machine: @unchecked Sendable {
    public let config: MachineConfig
    /// The VM configuration this machine runs (nil when built without one), every disk's
    /// format filled in as opened. Set during init only; the control command `config` reports it.
    public internal(set) var vmConfig: VMConfig?
    public let kvm: KVMSystem
    public let vm: VirtualMachine
    public let memory: GuestMemory
    public let vcpus: [VCPU]
    public let stats: [VCPUStats]
    public let stop: StopSignal
    /// Pause/resume of the vCPU threads (Machine+Control.swift).
    public let pauseGate = PauseGate()
    var devices: ExitHandler
    /// Receives bytes typed on the console (the UART's input), when there is a console.
    var consoleInput: (@Sendable ([UInt8]) -> Void)?
    /// The ACPI power button (Linux guests; nil for the probe guest, which has no ACPI).
    var powerButton: ACPIPowerButton?
    /// Closed when the machine is dropped (console file, etc.).
    var resources: [AnyObject] = []
    /// The virtio back ends' thread (nil without virtio devices); see Machine+Virtio.swift.
    var eventLoop: EventLoop?
    /// Dirty-page logging over guest RAM, when asked for (`trackDirtyPages` or an active-memory
    /// window) and KVM accepted it; see `dirtyLogUnavailable` otherwise.
    public let dirtyLog: DirtyLog?
    /// Why dirty logging was asked for but is off (what KVM refused), or nil.
    public let dirtyLogUnavailable: String?
    /// The active-memory sampler (nil when not asked for or when dirty logging is unavailable).
    public let activeMemory: ActiveMemorySampler?
    /// Compression and swapping of cold guest pages (MemoryReclaim/); idle until a `reclaim`.
    let reclaimer: MemoryReclaimer
    /// The virtio devices' counters, for `metrics()` (set up once in init).
    var diskCounters: [(name: String, path: String, counters: BlockCounters)] = []
    var netCounters: [(name: String, counters: NetCounters)] = []
    var balloon: VirtioBalloon?
    /// A Linux machine's legacy devices and PCI bus (their state goes into snapshots).
    var legacy: (serial: Serial16550, i8042: I8042, rtc: CMOSRTC)?
    var pciBus: PCIBus?
    /// The live migration out of this machine, if one was started (Migration/).
    public let migration = MigrationStatus()
    /// The virtio devices' wiring (nil without virtio devices).
    var virtioWiring: VirtioWiring?
    /// The disks the virtio-blk devices run on, for snapshots.
    var openDisks: [OpenDisk] = []
    /// When restoring: the snapshot's disks, whose internal snapshots the disks revert to as
    /// they open.
    let restoredDisks: [MachineSnapshot.Disk]
    /// Whether read-write disks revert to the snapshot's contents as they open (a restore, not a migration).
    let isRestoring: Bool
    /// Disks (by id) a restore takes as they are (a clone's: made from the snapshot's disks).
    let disksTakenAsGiven: Set<String>
    /// The CPU features vCPU 0 is offered (X86Boot.CPUFeatures), saved with each snapshot.
    var offeredCPUFeatures: [String: UInt32] = [:]
    /// How many unmapped accesses were printed (vCPU threads race on it; it only bounds the output).
    private let reportedUnmapped = Atomic<Int>(0)

    /// For probe guests: when the first guest instruction ran (CLOCK_MONOTONIC ns).
    public var probeFirstInstructionNanos: UInt64? {
        guard let p = devices as? ProbeDevices else { return nil }
        let t = p.firstInstructionNanos.load(ordering: .relaxed)
        return t == 0 ? nil : t
    }

    /// For probe guests: when the first loop-port exit was handled (CLOCK_MONOTONIC ns).
    public var probeFirstLoopExitNanos: UInt64? {
        guard let p = devices as? ProbeDevices else { return nil }
        let t = p.firstLoopExitNanos.load(ordering: .relaxed)
        return t == 0 ? nil : t
    }

    public static let tssAddress = X86MemoryLayout.tssAddress
    public static let identityMapAddress = X86MemoryLayout.identityMapAddress

    /// Builds the machine; nothing runs until `run()`.
    /// - Parameter onProbePass: for probe `dirty` workloads, called after each pass.
    /// - Parameter restoring: a snapshot (Machine+Snapshot.swift) to restore instead of booting:
    ///   guest RAM maps its memory file, vCPUs and devices take its state.
    public init(config: MachineConfig, kvmPath: String = KVMSystem.defaultPath,
                onProbePass: (@Sendable (UInt64) -> Void)? = nil, restoring: RestoreSource? = nil) throws {
        self.config = config
        vmConfig = config.vm
        let kvm = try KVMSystem(path: kvmPath)
        self.kvm = kvm
        let maxCPUs = kvm.maxVCPUs
        guard config.cpus >= 1, config.cpus <= min(maxCPUs, 254) else {
            throw VireoError(.invalidArgument, "--cpus \(config.cpus) is out of range",
                             hint: "this host's KVM allows 1 to \(min(maxCPUs, 254)) vCPUs per VM")
        }
        try Machine.validateMemorySize(config.memorySize)
        restoredDisks = restoring?.snapshot.disks ?? []
        isRestoring = restoring?.revertsDisks ?? false
        disksTakenAsGiven = restoring?.disksTakenAsGiven ?? []
        stop = try StopSignal()
        vm = try kvm.createVM()
        try vm.setTSSAddress(Machine.tssAddress)
        try vm.setIdentityMapAddress(Machine.identityMapAddress)

        var memoryOptions = config.memoryOptions
        if let restoring {
            guard restoring.snapshot.memory.map({ [$0.guestBase, $0.size] }) == Machine.ramLayout(memorySize: config.memorySize).map({ [$0.base, $0.size] }) else {
                throw VireoError(.corrupt, "snapshot: its memory layout does not match a \(ByteSize.format(config.memorySize)) machine")
            }
            if restoring.receivedMemory == nil { memoryOptions.backing = .snapshotFile(restoring.memoryPath) }
        }
        if let received = restoring?.receivedMemory {
            guard received.regions.map({ [$0.guestBase, $0.size] }) == Machine.ramLayout(memorySize: config.memorySize).map({ [$0.base, $0.size] }) else {
                throw VireoError(.corrupt, "migration: the RAM received does not have a \(ByteSize.format(config.memorySize)) machine's layout")
            }
            memory = received
        } else {
            memory = try GuestMemory(layout: Machine.ramLayout(memorySize: config.memorySize), options: memoryOptions)
        }
        let wantLog = config.trackDirtyPages || config.activeMemoryWindowSeconds > 0
        (dirtyLog, dirtyLogUnavailable) = try Machine.mapRAM(memory, into: vm, logDirtyPages: wantLog,
                                                             manualProtect: config.activeMemorySampleOneIn > 1)
        // A sampler that starts late maps RAM without logging until then (KVM checked it works).
        let deferred = dirtyLog != nil && !config.trackDirtyPages && config.activeMemoryWindowSeconds > 0
            && config.activeMemoryStartDelaySeconds > 0
        if deferred { try Machine.setDirtyLogging(memory, in: vm, false) }
        activeMemory = dirtyLog.flatMap { [memory, vm] log in
            config.activeMemoryWindowSeconds > 0
                ? ActiveMemorySampler(log: log, windowSeconds: config.activeMemoryWindowSeconds, sampleOneIn: config.activeMemorySampleOneIn,
                                      startDelaySeconds: deferred ? config.activeMemoryStartDelaySeconds : 0,
                                      enableLogging: { try Machine.setDirtyLogging(memory, in: vm, true) })
                : nil
        }

        reclaimer = MemoryReclaimer(memory: memory, options: config.reclaim) { [stop] why in
            stop.request(.failed(why))
        }

        if case .linux = config.boot {
            // The in-kernel PIC/IOAPIC/LAPICs and PIT must exist before any vCPU.
            try vm.createIRQChip()
            try vm.createPIT2()
        }
        var vcpus: [VCPU] = []
        for id in 0..<config.cpus { vcpus.append(try vm.createVCPU(id: id)) }
        self.vcpus = vcpus
        stats = vcpus.map { _ in VCPUStats() }

        switch config.boot {
        case let .probe(workload):
            let supported = try kvm.supportedCPUID()
            offeredCPUFeatures = try Machine.cpuFeatures(supported.map {
                CPUIDEntry(function: $0.function, index: $0.index, flags: $0.flags, eax: $0.eax, ebx: $0.ebx, ecx: $0.ecx, edx: $0.edx)
            }, restoring: restoring)
            if let restoring {
                // RAM already holds the guest (its memory file); the vCPUs take their saved state.
                for (vcpu, state) in zip(vcpus, restoring.snapshot.vcpus) {
                    try vcpu.setCPUID(supported)
                    try vcpu.restoreState(state)
                }
            } else {
                try ProbeGuest.load(into: memory)
                if case let .image(path) = workload { try ProbeGuest.loadImage(path: path, into: memory) }
                for vcpu in vcpus {
                    try vcpu.setCPUID(supported)
                    try ProbeGuest.setUp(vcpu, workload: workload, memorySize: config.memorySize)
                }
            }
            let t0 = getenv("VIREO_BENCH_T0").flatMap { UInt64(String(cString: $0)) }
            let probe = ProbeDevices(stop: stop, mmioSink: ProbeWorkload.defaultMMIOAddress,
                                     benchStartNanos: t0, onPass: onProbePass, dirtyBytesPerSecond: workload.dirtyBytesPerSecond)
            if let restoring { try probe.restore(restoring.snapshot.devices) }
            if case let .pattern(_, hot) = workload { probe.patternWorkload = true; probe.patternHot = hot > 0 }
            devices = probe
            if !config.virtio.isEmpty {
                // Probe images drive virtio-pci themselves (poll mode: no irqchip, no MSI-X).
                let platform = PlatformDevices()
                try setUpVirtio(platform: platform)
                probe.fallback = platform
            } else if workload == .echo {
                // The echo workload polls COM1 (no irqchip: its interrupt line goes nowhere).
                let platform = PlatformDevices()
                probe.serial = try setUpSerial(on: platform, interrupt: UnwiredInterruptLine())
                probe.fallback = platform
            }
        case .linux:
            devices = UnclaimedDevices()
            try setUpLinux(restoring: restoring)
        }
    }

    /// The largest guest RAM we accept: what the host could plausibly back (RAM + swap, times
    /// an overcommit factor of 4) and never past the 46-bit guest-physical space KVM maps.
    public static func validateMemorySize(_ size: UInt64) throws {
        guard size > 0 else {
            throw VireoError(.invalidArgument, "--memory must be larger than 0", hint: "give a size such as 512M or 2G")
        }
        guard size % 4096 == 0 else {
            throw VireoError(.invalidArgument, "--memory \(size) is not a multiple of 4 KiB", hint: "give a size such as 512M or 2G")
        }
        guard size >= 4 << 20 else {
            throw VireoError(.invalidArgument, "--memory \(ByteSize.format(size)) is too small", hint: "give at least 4M (Linux wants 64M or more)")
        }
        var info = sysinfo()
        if sysinfo(&info) == 0 {
            let unit = UInt64(max(1, info.mem_unit))
            let host = (UInt64(info.totalram) &+ UInt64(info.totalswap)) &* unit
            let limit = host &* 4
            if size > limit {
                throw VireoError(.outOfRange, "--memory \(ByteSize.format(size)) is more than this host can back (\(ByteSize.format(host)) of RAM and swap)",
                                 hint: "give at most \(ByteSize.format(limit / (1 << 20) * (1 << 20))) (4x overcommit)")
            }
        }
        guard size <= 1 << 46 else {
            throw VireoError(.outOfRange, "--memory \(ByteSize.format(size)) exceeds the 64 TiB guest-physical limit")
        }
    }

    /// Guest RAM below the 3-4 GiB MMIO hole and, past 3 GiB, above 4 GiB.
    static func ramLayout(memorySize: UInt64) -> [(base: UInt64, size: UInt64)] {
        X86MemoryLayout.ramRegions(memorySize: memorySize)
    }

    // MARK: - Running

    /// Runs the machine until it stops; returns why. Blocks the calling thread.
    public func run() -> MachineExit {
        // SIGINT/SIGTERM are taken by this thread through a signalfd; block them everywhere
        // (threads inherit the mask). SIGUSR1 only interrupts KVM_RUN on a vCPU thread.
        var stopSignals = sigset_t()
        sigemptyset(&stopSignals)
        sigaddset(&stopSignals, SIGINT)
        sigaddset(&stopSignals, SIGTERM)
        var previousMask = sigset_t()
        pthread_sigmask(SIG_BLOCK, &stopSignals, &previousMask)
        defer { pthread_sigmask(SIG_SETMASK, &previousMask, nil) }
        _ = vireo_install_handler(SIGUSR1, { _ in })
        let sfd = signalfd(-1, &stopSignals, VIREO_SFD_CLOEXEC | VIREO_SFD_NONBLOCK)
        defer { if sfd >= 0 { close(sfd) } }

        var threads: [HostThread] = []
        for (index, vcpu) in vcpus.enumerated() {
            do {
                let stats = stats[index]
                threads.append(try HostThread(name: "vcpu\(index)") { [self] in
                    self.vcpuLoop(vcpu: vcpu, index: index, stats: stats)
                })
            } catch {
                stop.request(.failed("cannot start vCPU \(index): \(error)"))
                break
            }
        }

        if let eventLoop {
            do { try eventLoop.start() } catch { stop.request(.failed("cannot start the device event loop: \(error)")) }
        }
        let sampler = startActiveMemorySampler()

        supervise(signalFD: sfd)
        DebugLog.log("supervisor woke; stopping \(threads.count) vCPU threads")

        for (i, t) in threads.enumerated() {
            vcpus[i].setImmediateExit(true)
            t.signal(SIGUSR1)
        }
        for (i, t) in threads.enumerated() {
            t.join()
            if DebugLog.enabled, let r = try? vcpus[i].registers() {
                DebugLog.log("vCPU \(i) stopped at rip \(hex(r.rip)) rsp \(hex(r.rsp)) rflags \(hex(r.rflags))")
            }
            DebugLog.log("vCPU \(i) joined: pio=\(stats[i].pioExits.load(ordering: .relaxed)) mmio=\(stats[i].mmioExits.load(ordering: .relaxed)) unmapped=\(stats[i].unmappedAccesses.load(ordering: .relaxed))")
        }
        eventLoop?.join()
        sampler?.join()
        reclaimer.shutdown()
        if let platform = devices as? PlatformDevices {
            let p = platform.ports.statistics
            DebugLog.log("port bus: unhandled reads \(p.unhandledReads) writes \(p.unhandledWrites), last \(p.lastUnhandledAddress.map { hex($0) } ?? "-")")
        }
        let exit = stop.recorded ?? .failed("the machine stopped without a reason (a Vireo bug)")
        // The disks are written back and closed here, not whenever the last reference goes:
        // a VMM that exits must leave consistent images. A migrated machine's disks belong to
        // the destination now; they were flushed before the handover and are left alone.
        if case .migrated = exit {} else { closeDisks() }
        return exit
    }

    /// Writes back and closes every disk (after the vCPUs and the event loop have stopped).
    func closeDisks() {
        for d in openDisks {
            do { try d.backend.close() } catch {
                writeStderrLine("vireo: disk \(d.id) (\(d.path)): closing it failed: \(error); run `vireo disk check \(d.path)`")
            }
        }
    }

    /// Waits for a stop request, a signal, or console input.
    private func supervise(signalFD: Int32) {
        let stdinOpen = consoleInput != nil
        var fds = [pollfd(fd: stop.eventFD, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: signalFD, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: stdinOpen ? 0 : -1, events: Int16(POLLIN), revents: 0)]
        var buffer = [UInt8](repeating: 0, count: 256)
        var escape = ConsoleEscape()
        while !stop.isStopping {
            let n = poll(&fds, nfds_t(fds.count), -1)
            if n < 0 { if errno == EINTR { continue }; stop.request(.failed("poll failed: \(VireoError.strerror(errno))")); break }
            if fds[1].revents & Int16(POLLIN) != 0 {
                var info = signalfd_siginfo()
                if read(signalFD, &info, MemoryLayout<signalfd_siginfo>.size) == MemoryLayout<signalfd_siginfo>.size {
                    stop.request(.signal(Int32(info.ssi_signo)))
                }
            }
            if fds[2].revents & Int16(POLLIN | POLLHUP) != 0 {
                let got = buffer.withUnsafeMutableBytes { read(0, $0.baseAddress, $0.count) }
                if got <= 0 { fds[2].fd = -1; continue }   // EOF: stop polling stdin
                guard config.consoleEscape else { consoleInput?(Array(buffer[0..<got])); continue }
                let (bytes, action) = escape.feed(buffer[0..<got])
                if !bytes.isEmpty { consoleInput?(bytes) }
                if action == .help { _ = ConsoleEscape.helpText.withCString { write(2, $0, strlen($0)) } }
                if action == .quit { stop.request(.signal(SIGINT)) }
            }
        }
    }

    private func vcpuLoop(vcpu: VCPU, index: Int, stats: VCPUStats) {
        let devices = self.devices
        pauseGate.register(index: index)
        while !stop.isStopping {
            if pauseGate.isPaused { pauseGate.park(vcpu: vcpu, stop: stop); continue }
            let exit: VCPUExit
            do { exit = try vcpu.run() } catch {
                stop.request(.failed("\(error)"))
                return
            }
            switch exit {
            case let .io(io):
                stats.pioExits.add(1, ordering: .relaxed)
                if !devices.handlePortIO(io, vcpu: index), !io.isWrite {
                    for i in io.data.indices { io.data[i] = 0xFF }
                }
            case let .mmio(mmio):
                stats.mmioExits.add(1, ordering: .relaxed)
                if !devices.handleMMIO(mmio, vcpu: index) {
                    stats.unmappedAccesses.add(1, ordering: .relaxed)
                    reportUnmapped(mmio, vcpu: index)
                    if !mmio.isWrite { for i in mmio.data.indices { mmio.data[i] = 0xFF } }
                }
            case .interrupted:
                continue
            case .halt:
                stats.otherExits.add(1, ordering: .relaxed)
                // Without an in-kernel LAPIC a halted CPU with interrupts off never wakes.
                stop.request(.failed("vCPU \(index) halted with no interrupt controller to wake it"))
            case .shutdown:
                stop.request(.reset("triple fault on vCPU \(index)"))
            case let .systemEvent(type, _):
                switch Int32(type) {
                case KVM_SYSTEM_EVENT_SHUTDOWN: stop.request(.poweroff)
                case KVM_SYSTEM_EVENT_RESET: stop.request(.reset("system reset event"))
                default: stop.request(.failed("vCPU \(index): guest crash system event \(type)"))
                }
            case let .internalError(suberror, data):
                let rip = (try? vcpu.registers().rip).map { hex($0) } ?? "?"
                let what = suberror == 1 ? "emulation failure (an instruction KVM cannot emulate)" : "suberror \(suberror)"
                stop.request(.failed("KVM internal error on vCPU \(index): \(what) at rip \(rip), data [\(data.map { hex($0) }.joined(separator: " "))]"))
            case let .failEntry(reason, cpu):
                stop.request(.failed("KVM could not enter vCPU \(index): hardware entry failure reason \(hex(reason)) on host CPU \(cpu)"))
            case let .exception(number, code):
                stop.request(.failed("vCPU \(index): unhandled guest exception \(number) (error code \(code))"))
            case .irqWindowOpen:
                continue
            case let .other(reason):
                stop.request(.failed("vCPU \(index): unexpected KVM exit reason \(reason)"))
            }
        }
    }

    private func reportUnmapped(_ mmio: MMIOExit, vcpu: Int) {
        let n = reportedUnmapped.add(1, ordering: .relaxed).newValue
        guard n <= 8 else { return }
        let verb = mmio.isWrite ? "wrote \(mmio.data.count) bytes to" : "read \(mmio.data.count) bytes from"
        var line = "vireo: vCPU \(vcpu) \(verb) unmapped guest-physical address \(hex(mmio.address)); ignored"
        if n == 8 { line += " (further unmapped accesses are counted, not printed)" }
        writeStderrLine(line)
    }
}

/// Devices of a machine that has none yet: every access is unclaimed.
final class UnclaimedDevices: ExitHandler, @unchecked Sendable {
    func handlePortIO(_ io: IOExit, vcpu: Int) -> Bool { false }
    func handleMMIO(_ mmio: MMIOExit, vcpu: Int) -> Bool { false }
}
