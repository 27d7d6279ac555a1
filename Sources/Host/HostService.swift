import VireoAPI
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// A start found the VM's lock held: a VMM of it runs already.
struct VMMAlreadyRunning: Error {}

/// The daemon's state and every operation on it. One actor: the inventory has one writer, and
/// operations on one VM are serialised by a per-VM lock (a second `start` racing the first
/// waits, then sees the VM running and gets 409). Operations on different VMs interleave.
actor HostService {
    let dataDir: String
    let vmmBinary: String
    let inventory: Inventory
    /// Where VM files may live (StoragePools.swift).
    let pools: StoragePools
    /// VMMs this daemon started (it can waitpid them); re-adopted ones are watched through /proc.
    private var children: Set<pid_t> = []
    /// VMs whose VMM is ending because a client asked (stop, kill, reboot): not a failure, no restart.
    private var stopRequested: [String: String] = [:]
    private var busy: Set<String> = []
    /// VMs whose stop is waiting for the guest to act on an ACPI shutdown request.
    private var gracefulStops: Set<String> = []
    private var waiters: [String: [CheckedContinuation<Void, Never>]] = [:]
    /// Monotonic time of each VM's last start, and its count of quick failures (restart back-off).
    private var lastStart: [String: Double] = [:]
    private var quickFailures: [String: Int] = [:]
    /// Where each VMM this daemon started began writing in its VM's vmm.log (the log is appended
    /// to across runs): only lines after it can be that VMM's own words.
    private var logStart: [String: UInt64] = [:]
    /// `vireo run --active-memory-window` / `--active-memory-sample` for every VMM started (nil: the VMM's default).
    var activeMemoryWindow: UInt32?
    var activeMemorySample: UInt32?
    /// The host's memory overcommit policy (Admission.swift; `vireo host --memory-overcommit`).
    var admission = MemoryAdmission.forThisHost(ratio: nil)
    /// `vireo host --memory-min-free SIZE` (nil: ESXi's sliding scale of the host's memory; HostMemory.swift).
    var memoryMinFree: UInt64?
    /// The reclamation ladder's state (HostService+MemoryPolicy.swift).
    var ladder = LadderState()
    /// This host's KVM is the PVM backend (`KVMSystem.isPVM`, as `vireo host check` detects it):
    /// it cannot boot stock Linux kernels usefully; kernel VMs are refused unless
    /// `allowEmulatedKernels` (`vireo host --allow-emulated-kernels`).
    var kvmIsPVM = false
    var allowEmulatedKernels = false

    /// Live migrations this daemon sends (HostService+Migrate.swift), by VM name; kept after they
    /// end so the client sees the outcome.
    var migrations: [String: MigrationInfo] = [:]
    /// The address of this daemon's TCP listener (`--listen`): incoming migrations' VMMs listen
    /// there too. Nil without one: then no VM can migrate here.
    var migrationListenHost: String?

    /// Daemon networks' host side (HostService+Networks.swift), by name.
    var networks: [String: NetworkRuntime] = [:]

    /// Live event subscribers (GET /v1/events?follow=true).
    let eventHub = EventHub()
    /// Images being created or imported (HostService+Images.swift).
    let imageJobs = ImageJobs()

    static let version = "0.1.0"
    static let maxQuickFailures = 5
    /// How long `stop` gives a guest to power off after the ACPI shutdown request.
    static let defaultShutdownTimeout = 30
    static let maxShutdownTimeout = 3600

    init(dataDir given: String, vmmBinary: String, pools: [String] = []) throws {
        self.vmmBinary = vmmBinary
        // VM files (console logs hold guest secrets, images hold guest data) are the daemon's
        // and root's alone: directories 0700, files 0600, for the VMMs it spawns too.
        umask(0o077)
        try Self.makeDirectory(given)
        // Canonical, so the paths recorded for store images and clones are the ones pools check.
        let dataDir = StoragePools.realPath(given) ?? given
        self.dataDir = dataDir
        try Self.makeDirectory(dataDir + "/vms")
        try Self.makeDirectory(dataDir + "/images")
        for d in [dataDir, dataDir + "/vms", dataDir + "/images"] { chmod(d, 0o700) }
        self.pools = try StoragePools(dataDir: dataDir, pools: pools)
        Self.removeStaleImageParts(dataDir + "/images")
        inventory = try Inventory(path: dataDir + "/inventory.db")
    }

    static func makeDirectory(_ path: String) throws {
        var parts: [Substring] = []
        for c in path.split(separator: "/") {
            parts.append(c)
            let p = (path.hasPrefix("/") ? "/" : "") + parts.joined(separator: "/")
            if mkdir(p, 0o700) != 0 && errno != EEXIST { throw VireoError.system("cannot create \(p)") }
        }
    }

    // MARK: Paths

    func vmDir(_ name: String) -> String { "\(dataDir)/vms/\(name)" }
    func consolePath(_ name: String) -> String { vmDir(name) + "/console.log" }
    func socketPath(_ name: String) -> String { vmDir(name) + "/api.sock" }
    func exitPath(_ name: String) -> String { vmDir(name) + "/exit" }
    /// The host end of the VM's vsock: connect and send `CONNECT PORT`; guest connections to
    /// PORT arrive on `vsock.sock_PORT` (Firecracker's convention).
    func vsockSocketPath(_ name: String) -> String { vmDir(name) + "/vsock.sock" }
    func vmmLogPath(_ name: String) -> String { vmDir(name) + "/vmm.log" }
    /// Held by the VM's VMM for its whole life (VMMLock.swift).
    func lockPath(_ name: String) -> String { vmDir(name) + "/vmm.lock" }
    /// The configuration the VMM runs (written at each start from the stored definition).
    func configPath(_ name: String) -> String { vmDir(name) + "/config.json" }
    /// hvc0's output, for a VM with a virtio console.
    func virtioConsolePath(_ name: String) -> String { vmDir(name) + "/hvc0.log" }

    func view(_ r: VMRecord) -> VM {
        VM(definition: r.definition, state: r.state, reason: r.reason, pid: r.state.hasProcess ? r.pid.map(Int.init) : nil,
           exitStatus: r.exitStatus, restartCount: r.restartCount, consoleLog: consolePath(r.name),
           apiSocket: socketPath(r.name), createdAt: r.createdAt, vsockSocket: vsockSocketPath(r.name))
    }

    // MARK: Per-VM lock

    func withVMLock<T: Sendable>(_ name: String, _ body: () async throws -> T) async throws -> T {
        while busy.contains(name) {
            await withCheckedContinuation { waiters[name, default: []].append($0) }
        }
        busy.insert(name)
        defer {
            busy.remove(name)
            if var w = waiters[name], !w.isEmpty {
                let next = w.removeFirst()
                waiters[name] = w.isEmpty ? nil : w
                next.resume()
            }
        }
        return try await body()
    }

    func record(_ name: String) throws -> VMRecord {
        guard VMLimits.isValidName(name), let r = try inventory.get(name) else { throw HTTPError.notFound(name) }
        return r
    }

    /// Records an event about `subject` (a VM unless `kind` says otherwise) and sends it to followers.
    func event(_ subject: String, kind: EventSubjectKind = .vm, _ type: String, _ message: String) {
        let time = WallClock.now()
        guard let seq = try? inventory.addEvent(kind: kind, subject: subject, type: type, message: message, time: time) else { return }
        eventHub.publish(Event(seq: seq, time: time, subjectKind: kind, subject: subject, type: type, message: message))
    }

    /// Progress (an image import at 40%): sent to followers only, never stored (seq 0), so the
    /// history keeps what happened, not how it went.
    func progressEvent(_ subject: String, kind: EventSubjectKind, _ type: String, _ message: String) {
        eventHub.publish(Event(seq: 0, time: WallClock.now(), subjectKind: kind, subject: subject, type: type, message: message))
    }

    // MARK: Read-only

    func list() throws -> [VM] { try inventory.all().map(view) }

    func show(_ name: String) throws -> VM { view(try record(name)) }

    func events(since: Int, filter: EventFilter, limit: Int) throws -> [Event] {
        try inventory.events(since: since, filter: filter, limit: limit)
    }

    /// The serial log from `offset`, at most `limit` bytes, and the offset after it.
    func console(_ name: String, offset: Int, limit: Int) throws -> (bytes: [UInt8], next: Int) {
        _ = try record(name)
        let fd = open(consolePath(name), O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return ([], offset) }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: limit)
        let n = buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(offset)) }
        guard n > 0 else { return ([], offset) }
        return (Array(buf[0..<n]), offset + n)
    }

    // MARK: Create, update, delete

    func create(_ c: VMCreate) throws -> VM {
        guard VMLimits.isValidName(c.name) else {
            throw HTTPError(400, "invalid-name", "'\(c.name.prefix(80))' is not a valid VM name: \(VMLimits.nameRule)")
        }
        if try inventory.get(c.name) != nil {
            throw HTTPError.conflict("a VM named '\(c.name)' already exists; pick another name or delete it first")
        }
        var c = c
        c.disks = try resolveImageDisks(c.disks)   // store images -> their files and formats (HostService+Images.swift)
        var def: VMDefinition
        if let template = c.template {
            def = try definition(from: c, template: template)
        } else {
            def = VMDefinition(config: c.config, template: nil, restartPolicy: c.restartPolicy ?? .never)
        }
        def.config.configVersion = VMConfig.currentVersion
        def.config.assignDeviceIDs()
        if def.config.generationID == nil { def.config.generationID = VMConfig.newGenerationID() }
        try assignNetworkTaps(&def.config)   // NICs on daemon networks get their TAP names (HostService+Networks.swift)
        if c.template != nil {
            // The clone is made first (validation checks that the disk files exist), removed on failure.
            try makeLinkedClone(vm: c.name, template: c.template ?? "")
        }
        do {
            try Validation.check(def, socketPath: consoleSocketPath(def.name), admission: admission)
            try checkReservationsFit(def.config)
            // Every file inside the storage pools, symlinks resolved (the canonical path is kept).
            try confineFiles(&def.config)
            // Every disk's format is recorded now, checked against the file's signature.
            let detected = try Self.recordDiskFormats(&def.config)
            if !detected.isEmpty { event(def.name, "disk-format-detected", detected.joined(separator: ", ")) }
        } catch {
            if c.template != nil { unlink(linkedClonePath(c.name)); rmdir(vmDir(c.name)) }
            throw error
        }
        let r = VMRecord(definition: def, state: .stopped, reason: nil, pid: nil, pidStartTime: nil, exitStatus: nil,
                         restartCount: 0, createdAt: WallClock.now())
        try inventory.insert(r)
        event(def.name, "created", "\(def.vcpus == 1 ? "1 vCPU" : "\(def.vcpus) vCPUs"), \(MemoryAdmission.mib(def.memoryMiB))")
        return view(r)
    }

    func update(_ name: String, _ u: VMUpdate) async throws -> VM {
        try await withVMLock(name) {
            var r = try record(name)
            // What the VMM was started with changes only at its next start; the restart policy
            // is the daemon's own and may change any time.
            var needsRestart: [String] = []
            if u.vcpus != nil { needsRestart.append("vCPUs") }
            if u.memoryMiB != nil { needsRestart.append("memory") }
            if u.cmdline != nil { needsRestart.append("the kernel command line") }
            if u.balloonMiB != nil { needsRestart.append("the balloon device") }
            if u.shareable != nil { needsRestart.append("page sharing (shareable)") }
            if isSuspended(name) && !needsRestart.isEmpty {
                throw HTTPError.conflict("VM '\(name)' is suspended to disk, and its saved state keeps \(needsRestart.joined(separator: ", ")): start it (`vireo vm start \(name)`) and stop it, then change it")
            }
            guard !r.state.hasProcess || needsRestart.isEmpty else {
                throw HTTPError.conflict("VM '\(name)' is \(r.state.rawValue), and its VMM keeps \(needsRestart.joined(separator: ", ")) until it restarts: stop it (`vireo vm stop \(name)`), change it, then start it again" + (u.balloonMiB != nil ? " (`vireo vm balloon \(name) SIZE` sets a running balloon's target)" : ""))
            }
            var d = r.definition
            if let v = u.vcpus { d.vcpus = v }
            if let v = u.memoryMiB { d.memoryMiB = v }
            if let v = u.cmdline { d.cmdline = v }
            if let v = u.balloonMiB { d.balloonMiB = v }
            if let v = u.restartPolicy { d.restartPolicy = v }
            Self.applyResourceUpdate(u, to: &d.config)
            try Validation.check(d, socketPath: consoleSocketPath(name), admission: admission)
            try checkReservationsFit(d.config)
            if r.state.hasProcess, d.config != r.definition.config {
                // A running VM: its reservations must still fit beside the others', and its
                // cgroup takes the new values before they are stored.
                try admitReservations(name, d.config)
                try applyLive(name, d.config)
            }
            var changed: [String] = []
            if d.vcpus != r.definition.vcpus { changed.append("vcpus \(r.definition.vcpus) -> \(d.vcpus)") }
            if d.memoryMiB != r.definition.memoryMiB { changed.append("memory \(r.definition.memoryMiB) -> \(d.memoryMiB) MiB") }
            if d.cmdline != r.definition.cmdline { changed.append("cmdline") }
            if d.balloonMiB != r.definition.balloonMiB { changed.append("balloon \(r.definition.balloonMiB.map { "\($0) MiB" } ?? "none") -> \(d.balloonMiB.map { "\($0) MiB" } ?? "none")") }
            if d.restartPolicy != r.definition.restartPolicy { changed.append("restart policy \(r.definition.restartPolicy.rawValue) -> \(d.restartPolicy.rawValue)") }
            changed += Self.resourceChanges(r.definition.config, d.config)
            r.definition = d
            try inventory.update(r)
            event(name, "updated", changed.isEmpty ? "nothing changed" : changed.joined(separator: ", "))
            return view(r)
        }
    }

    func delete(_ name: String) async throws {
        try await withVMLock(name) {
            let r = try record(name)
            guard !r.state.hasProcess else {
                throw HTTPError.conflict("VM '\(name)' is \(r.state.rawValue); stop it (`vireo vm stop \(name)`) before deleting it")
            }
            try removeVM(name)
            event(name, "deleted", "")
        }
    }

    /// Removes a VM's record and its files (the caller holds its lock; it has no VMM).
    /// `keepDisks` keeps the disk files made for it in its directory (a linked clone another
    /// host may still run on: a migration over shared storage).
    func removeVM(_ name: String, keepDisks: Bool = false) throws {
        try inventory.delete(name)
        for f in [consolePath(name), socketPath(name), consoleSocketPath(name), vsockSocketPath(name), exitPath(name), vmmLogPath(name),
                  configPath(name), virtioConsolePath(name), lockPath(name), migrationTokenPath(name)] { unlink(f) }
        if !keepDisks {
            unlink(linkedClonePath(name))
            for f in Self.directoryEntries(vmDir(name)) where f.hasPrefix("disk-") || f.hasPrefix("base-") { unlink(vmDir(name) + "/" + f) }
        }
        for snap in Self.directoryEntries(snapshotsDir(name)) { Self.removeTree(snapshotDir(name, snap)) }
        rmdir(snapshotsDir(name))
        Self.removeTree(suspendDir(name))
        rmdir(vmDir(name))
        lastStart[name] = nil; quickFailures[name] = nil
    }

    // MARK: Lifecycle

    func start(_ name: String) async throws -> VM {
        try await withVMLock(name) {
            var r = try record(name)
            guard !r.state.hasProcess else { throw HTTPError.conflict("VM '\(name)' is already \(r.state.rawValue)") }
            try Validation.checkFiles(r.definition)
            // Again at each start: files may have moved, and the pools may differ since create.
            var confined = r.definition.config
            try confineFiles(&confined)
            if r.definition.disks.contains(where: { $0.format == nil }) {
                let detected = try Self.recordDiskFormats(&r.definition.config)
                r.definition.config.configVersion = VMConfig.currentVersion
                try inventory.update(r)
                event(name, "disk-format-detected", detected.joined(separator: ", "))
            }
            quickFailures[name] = 0
            let resuming = isSuspended(name)
            do { try launch(&r, restoreFrom: resuming ? suspendDir(name) : nil) } catch is VMMAlreadyRunning {
                // Its VMM runs already (the record had lost it): adopt it, never start a second.
                if await adoptOrphan(&r) { return view(r) }
                throw HTTPError.conflict("VM '\(name)': a VMM held its lock a moment ago; try again")
            }
            let ready = try await awaitReady(&r)
            if resuming, ready.state.hasProcess {
                // The VMM maps the state it resumed from; the files can go (the mapping keeps them),
                // and so can the disks' snapshot the suspend made.
                if let tag = try? OwnedFD.readFile(suspendDir(name) + "/disk_snapshot", limit: 4096, what: "disk snapshot name") {
                    try? await forgetDiskSnapshot(ready, String(decoding: tag, as: UTF8.self))
                }
                Self.removeTree(suspendDir(name))
                event(name, "resumed-from-suspend", "")
            }
            return view(ready)
        }
    }

    /// Stops a VM. Unless `force`, a running guest first gets an ACPI shutdown request (its power
    /// button) and `timeoutSeconds` to power itself off; a guest without ACPI (the probe), a paused
    /// one, or one that lets the time pass is then stopped by its VMM at once.
    func stop(_ name: String, force: Bool = false, timeoutSeconds: Int = HostService.defaultShutdownTimeout) async throws -> VM {
        try await withVMLock(name) {
            var r = try record(name)
            guard r.state.hasProcess else { throw HTTPError.conflict("VM '\(name)' is not running (it is \(r.state.rawValue))") }
            var ignoredFor: Int?
            if !force && r.state == .running,
               let reply = VMMProcess.control(socketPath(name), "shutdown"), reply.contains(#""ok":true"#) {
                stopRequested[name] = "shut down by request"
                gracefulStops.insert(name)
                defer { gracefulStops.remove(name) }
                event(name, "shutdown-requested", "ACPI power button pressed; the guest has \(timeoutSeconds) s to power off")
                let deadline = WallClock.monotonicSeconds() + Double(timeoutSeconds)
                while WallClock.monotonicSeconds() < deadline {
                    if let status = exitStatusIfGone(r) {
                        recordExit(&r, status: status)
                        try inventory.update(r)
                        event(name, "stopped", r.reason ?? "")
                        return view(r)
                    }
                    try? await Task.sleep(for: .milliseconds(50))
                }
                ignoredFor = timeoutSeconds
            }
            try await stopProcess(&r, kill: false)
            if let ignoredFor {
                r.reason = "stopped by request: the guest did not power off within \(ignoredFor) s of the ACPI shutdown request"
                try inventory.update(r)
            }
            return view(r)
        }
    }

    func kill(_ name: String) async throws -> VM {
        // A graceful stop in progress holds the VM's lock while it waits for the guest; a kill
        // must not wait behind it: end the VMM now, and the waiting stop records the exit.
        var killedEarly = false
        if gracefulStops.contains(name), let r = try? record(name), let pid = r.pid,
           ProcFS.isAlive(pid: pid, startTime: r.pidStartTime) {
            stopRequested[name] = "killed by request"
            Glibc.kill(pid, SIGKILL)
            killedEarly = true
        }
        return try await withVMLock(name) {
            var r = try record(name)
            if killedEarly && !r.state.hasProcess { return view(r) }
            guard r.state.hasProcess else { throw HTTPError.conflict("VM '\(name)' is not running (it is \(r.state.rawValue))") }
            try await stopProcess(&r, kill: true)
            return view(r)
        }
    }

    func reboot(_ name: String) async throws -> VM {
        try await withVMLock(name) {
            var r = try record(name)
            guard r.state.hasProcess else { throw HTTPError.conflict("VM '\(name)' is not running (it is \(r.state.rawValue)); start it instead") }
            try await stopProcess(&r, kill: false)
            try launch(&r)
            event(name, "rebooted", "")
            return view(try await awaitReady(&r))
        }
    }

    func pause(_ name: String) async throws -> VM {
        try await withVMLock(name) {
            var r = try record(name)
            guard r.state == .running else { throw HTTPError.conflict("VM '\(name)' is \(r.state.rawValue); only a running VM can be paused") }
            guard let reply = VMMProcess.control(socketPath(name), "pause"), reply.contains(#""ok":true"#) else {
                throw HTTPError(500, "vmm-unresponsive", "VM '\(name)': its VMM did not confirm the pause; see \(vmmLogPath(name))")
            }
            r.state = .paused
            try inventory.update(r)
            event(name, "paused", "")
            return view(r)
        }
    }

    func resume(_ name: String) async throws -> VM {
        try await withVMLock(name) {
            var r = try record(name)
            guard r.state == .paused else { throw HTTPError.conflict("VM '\(name)' is \(r.state.rawValue); only a paused VM can be resumed") }
            guard let reply = VMMProcess.control(socketPath(name), "resume"), reply.contains(#""ok":true"#) else {
                throw HTTPError(500, "vmm-unresponsive", "VM '\(name)': its VMM did not confirm the resume; see \(vmmLogPath(name))")
            }
            r.state = .running
            try inventory.update(r)
            event(name, "resumed", "")
            return view(r)
        }
    }

    /// Spawns the VMM for `r` and records it as starting. With `restoreFrom`, the VMM restores
    /// that snapshot directory instead of booting the stored configuration.
    func launch(_ r: inout VMRecord, restoreFrom: String? = nil, incoming: VMMCommand.Incoming? = nil) throws {
        let name = r.name
        try checkHostCanBoot(r)
        try checkMemoryStateAllowsStart(name)
        try admitMemory(r)
        try admitReservations(name, r.definition.config)
        try Self.makeDirectory(vmDir(name))
        // One VMM per VM: its lock first. Held means a VMM of this VM already runs (the
        // caller adopts it: `VMMAlreadyRunning`).
        // A VMM this daemon just killed may hold it a moment longer: its main thread shows as a
        // zombie while its other threads (a vCPU leaving KVM_RUN) still exit, and the lock goes
        // with the last one. So a held lock is looked at again for up to half a second before it
        // means a live VMM.
        var held = try VMMLock.acquire(lockPath(name))
        var tries = 0
        while held == nil && tries < 25 {
            usleep(20_000)
            tries += 1
            held = try VMMLock.acquire(lockPath(name))
        }
        guard let lock = held else { throw VMMAlreadyRunning() }
        unlink(exitPath(name)); unlink(socketPath(name))
        if restoreFrom == nil && incoming == nil && r.definition.config.generationID == nil {
            // A VM defined before generation IDs gets one at its next boot (recorded, so the
            // stored and the running configuration agree).
            r.definition.config.generationID = VMConfig.newGenerationID()
            try inventory.update(r)
        }
        // The VMM gets the definition's configuration whole, as a file (never rebuilt as flags).
        do { try VMMCommand.writeConfig(r.definition.config, to: configPath(name)) } catch {
            r.state = .failed; r.reason = "\(error)"; r.pid = nil
            try inventory.update(r)
            event(name, "failed", "cannot write the VMM configuration: \(error)")
            throw HTTPError(500, "spawn-failed", "cannot write the VMM configuration for '\(name)': \(error)")
        }
        var argv = VMMCommand.arguments(vmmBinary: vmmBinary, configPath: configPath(name), restore: restoreFrom, console: consolePath(name),
                                        apiSocket: socketPath(name), exitFile: exitPath(name), consoleSocket: consoleSocketPath(name),
                                        vsockSocket: r.definition.vsockCID == nil ? nil : vsockSocketPath(name),
                                        virtioConsoleLog: r.definition.virtioConsole == true ? virtioConsolePath(name) : nil,
                                        incoming: incoming)
        if let w = activeMemoryWindow { argv += ["--active-memory-window", String(w)] }
        if let n = activeMemorySample { argv += ["--active-memory-sample", String(n)] }
        // The record says "starting" before the VMM exists: a daemon killed from here on comes
        // back to a starting VM, finds its lock held or free, and adopts it or records its end.
        r.state = .starting
        r.pid = nil
        r.pidStartTime = nil
        r.reason = nil
        r.exitStatus = nil
        try inventory.update(r)
        logStart[name] = ProcFS.fileSize(vmmLogPath(name))
        do { try attachNetworkTaps(r.definition.config) } catch {
            r.state = .failed; r.reason = "\((error as? HTTPError)?.message ?? "\(error)")"; r.pid = nil
            try inventory.update(r)
            event(name, "failed", r.reason ?? "")
            throw error
        }
        let pid: pid_t
        do { pid = try VMMProcess.spawn(argv, logPath: vmmLogPath(name), lockFD: lock.fd) } catch {
            detachNetworkTaps(r.definition.config)
            r.state = .failed; r.reason = "\(error)"; r.pid = nil
            try inventory.update(r)
            event(name, "failed", "cannot start the VMM: \(error)")
            throw HTTPError(500, "spawn-failed", "cannot start the VMM for '\(name)': \(error)")
        }
        withExtendedLifetime(lock) {}   // closed here: the VMM's copy keeps the lock
        children.insert(pid)
        do { try placeInCgroup(name, r.definition.config, pid: pid) } catch {
            // Controls it was promised cannot be applied: it does not run without them.
            Glibc.kill(pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            children.remove(pid)
            detachNetworkTaps(r.definition.config)
            removeCgroup(name)
            r.state = .failed; r.reason = "its resource controls cannot be applied: \(error)"; r.pid = nil
            try inventory.update(r)
            event(name, "failed", r.reason ?? "")
            throw HTTPError.invalid("cgroup-unavailable", "VM '\(name)' has resource controls (cpu_shares, limits, reservations), but its cgroup cannot be made: \(error). Remove them (`vireo vm set \(name) --cpu-limit 0 ...`) or give the daemon cgroups")
        }
        stopRequested[name] = nil
        lastStart[name] = WallClock.monotonicSeconds()
        r.pid = pid
        r.pidStartTime = ProcFS.startTime(pid: pid)
        try inventory.update(r)
        event(name, "starting", "VMM pid \(pid)")
    }

    /// A Linux kernel on a PVM host (nested, page-table based KVM: guest kernels run at CPL 3 and
    /// stock kernels are emulated instruction by instruction) would show "running" with an empty
    /// console forever: refused with the reason and the way out, unless the daemon opted in.
    func checkHostCanBoot(_ r: VMRecord) throws {
        guard kvmIsPVM, !allowEmulatedKernels, r.definition.kernel != nil else { return }
        throw HTTPError.invalid("kvm-cannot-boot-kernels",
            "VM '\(r.name)' boots a Linux kernel, but this host's KVM is the PVM backend (nested, page-table based; `vireo host check` says so): it runs guest kernels at CPL 3 and emulates stock kernels instruction by instruction, so the guest would never boot usefully. Run Linux guests in the nested testbed (scripts/testbed.sh -- COMMAND) or on a host with hardware virtualization (VT-x/AMD-V); probe VMs run here. To start it anyway, start the daemon with --allow-emulated-kernels")
    }

    /// The memory admission at start: `r`'s memory plus what every other VM with a VMM holds
    /// must fit the host's capacity (Admission.swift). Throws 422 with the numbers.
    func admitMemory(_ r: VMRecord) throws {
        let holders = try inventory.all().filter { $0.state.hasProcess && $0.name != r.name }
        var held = 0
        for h in holders {
            let (sum, overflow) = held.addingReportingOverflow(h.definition.memoryMiB)
            held = overflow ? Int.max : sum   // saturates: past any capacity
        }
        try admission.checkStart(name: r.name, memoryMiB: r.definition.memoryMiB, heldMiB: held, holders: holders.count)
    }

    /// A VMM of this VM holds its lock, though the record does not know its pid (a daemon
    /// killed while starting it, or an inventory restored from a backup): find its pid through
    /// its control socket and adopt it. False when no VMM holds the lock.
    func adoptOrphan(_ r: inout VMRecord) async -> Bool {
        let name = r.name
        guard VMMLock.isHeld(lockPath(name)) else { return false }
        for _ in 0..<100 {   // it may still be building its machine
            if let reply = VMMProcess.control(socketPath(name), "status", timeoutSeconds: 1), let pid = Self.pid(inStatus: reply) {
                r.pid = pid
                r.pidStartTime = ProcFS.startTime(pid: pid)
                r.state = reply.contains(#""state":"paused""#) ? .paused : .running
                r.reason = nil
                try? inventory.update(r)
                lastStart[name] = WallClock.monotonicSeconds() - 60
                event(name, "adopted", "VMM pid \(pid), found by the VM's lock (the inventory did not know it)")
                return true
            }
            if !VMMLock.isHeld(lockPath(name)) { return false }
            try? await Task.sleep(for: .milliseconds(50))
        }
        r.state = .running
        r.reason = "a VMM holds the VM's lock (\(lockPath(name))) but its control socket does not answer; `vireo vm kill \(name)` cannot reach it: find it with fuser \(lockPath(name))"
        try? inventory.update(r)
        event(name, "adopt-failed", r.reason ?? "")
        return true
    }

    static func pid(inStatus reply: String) -> Int32? {
        guard let range = reply.firstRange(of: #""pid":"#) else { return nil }
        return Int32(reply[range.upperBound...].prefix(while: { $0.isNumber }))
    }

    /// Waits (up to 10 s) for a starting VMM's control socket to answer, or for it to exit.
    func awaitReady(_ r: inout VMRecord) async throws -> VMRecord {
        let name = r.name
        for _ in 0..<200 {
            if let status = exitStatusIfGone(r) {
                recordExit(&r, status: status)
                try inventory.update(r)
                if r.state == .failed {
                    event(name, "failed", r.reason ?? "the VMM exited")
                    throw HTTPError.invalid("start-failed", "VM '\(name)' failed to start: \(r.reason ?? "the VMM exited"); `vireo vm logs \(name)` shows its console")
                }
                return r
            }
            if VMMProcess.control(socketPath(name), "status", timeoutSeconds: 1) != nil {
                r.state = .running
                try inventory.update(r)
                event(name, "running", "VMM pid \(r.pid ?? 0)")
                return r
            }
            try? await Task.sleep(for: .milliseconds(50))
        }
        // Alive but silent: leave it running and say so; the supervisor keeps watching it.
        r.state = .running
        r.reason = "the VMM's control socket did not answer within 10 s"
        try inventory.update(r)
        return r
    }

    /// Asks the VMM to stop (or SIGKILLs it), waits for it to end, records the exit.
    func stopProcess(_ r: inout VMRecord, kill hard: Bool) async throws {
        let name = r.name
        stopRequested[name] = hard ? "killed by request" : "stopped by request"
        guard let pid = r.pid, ProcFS.isAlive(pid: pid, startTime: r.pidStartTime) || children.contains(pid) else {
            recordExit(&r, status: exitStatusIfGone(r) ?? 0)
            try inventory.update(r)
            return
        }
        if hard {
            Glibc.kill(pid, SIGKILL)
        } else if VMMProcess.control(socketPath(name), "stop") == nil {
            Glibc.kill(pid, SIGTERM)
        }
        var waitedMs = 0
        while true {
            if let status = exitStatusIfGone(r) {
                recordExit(&r, status: status)
                break
            }
            if waitedMs == 10_000 { Glibc.kill(pid, SIGKILL) }   // a stop the VMM ignored
            if waitedMs > 20_000 {
                throw HTTPError(500, "vmm-unresponsive", "VM '\(name)': VMM pid \(pid) did not exit after SIGKILL")
            }
            try? await Task.sleep(for: .milliseconds(20))
            waitedMs += 20
        }
        event(name, hard ? "killed" : "stopped", r.reason ?? "")
        try inventory.update(r)
        // A killed VMM's group leader shows as ended while its other threads still close its
        // files, the VM's lock among them: a launch right after (reboot, revert) would find the
        // lock held and take it for another VMM. Wait (up to 2 s) for the lock to go.
        for _ in 0..<100 where VMMLock.isHeld(lockPath(name)) { try? await Task.sleep(for: .milliseconds(20)) }
    }

    /// If the VMM of `r` has ended: its exit status (from waitpid, else its exit file, else -1).
    func exitStatusIfGone(_ r: VMRecord) -> Int32? {
        guard let pid = r.pid else { return -1 }
        if children.contains(pid) {
            if let s = VMMProcess.reap(pid) { children.remove(pid); return s }
            if ProcFS.isAlive(pid: pid, startTime: r.pidStartTime) { return nil }
            // Not reapable and not alive: someone else reaped it.
            children.remove(pid)
        } else if ProcFS.isAlive(pid: pid, startTime: r.pidStartTime) {
            return nil
        }
        return readExitFile(r.name)?.status ?? -1
    }

    func readExitFile(_ name: String) -> (status: Int32, reason: String)? {
        guard let text = ProcFS.read(exitPath(name)) else { return nil }
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        guard lines.count >= 2, let s = Int32(lines[0]) else { return nil }
        return (s, String(lines[1]))
    }

    /// Marks `r` stopped or failed after its VMM ended with `status`.
    func recordExit(_ r: inout VMRecord, status: Int32) {
        let name = r.name
        let requested = stopRequested[name]
        let file = readExitFile(name)
        var reason: String
        if let file { reason = file.reason }
        else if status > 128 { reason = "the VMM was killed by signal \(status - 128)" }
        else if status < 0 {
            // Not our child (it ended while this daemon was down, or after a restart re-adopted
            // it): neither its status nor its words are known. vmm.log's last line may be any
            // output of any run (a probe's "probe_pass=1"), so it is not a reason.
            reason = "how the VMM ended is unknown: it left no exit file (\(exitPath(name))), and this daemon, which did not start it (it was down, or has restarted since), cannot get its exit status; its output is in \(vmmLogPath(name))"
        } else if let said = lastErrorLine(name) { reason = said }
        else { reason = "the VMM exited with status \(status) without saying why; its output is in \(vmmLogPath(name))" }
        if let requested { reason = requested + (file == nil ? "" : " (\(file?.reason ?? ""))") }
        r.exitStatus = status >= 0 ? Int(status) : nil
        r.state = (requested != nil || status == 0) ? .stopped : .failed
        r.reason = reason
        r.pid = nil
        r.pidStartTime = nil
        logStart[name] = nil
        unlink(socketPath(name))
        detachNetworkTaps(r.definition.config)
        removeCgroup(name)
    }

    /// The last error line (`vireo: WHY`, how `vireo run` reports an error before its machine
    /// runs, when no exit file exists yet) that the VMM this daemon started wrote to vmm.log.
    func lastErrorLine(_ name: String) -> String? {
        guard let start = logStart[name], let text = ProcFS.read(vmmLogPath(name), from: start) else { return nil }
        guard let line = text.split(separator: "\n").last(where: { $0.hasPrefix("vireo: ") }) else { return nil }
        return String(line.dropFirst(7).prefix(500))
    }

    // MARK: Supervision

    /// One pass over every VM with a VMM: notices exits, records them, restarts per policy.
    func superviseTick() async {
        guard let records = try? inventory.all() else { return }
        for var r in records where r.state.hasProcess && !busy.contains(r.name) {
            guard let status = exitStatusIfGone(r) else { continue }
            recordExit(&r, status: status)
            try? inventory.update(r)
            event(r.name, r.state == .failed ? "failed" : "exited", r.reason ?? "")
            await restartIfPolicySays(&r)
        }
        // Reap children no VM claims any more (cannot normally happen; keeps zombies away).
        for pid in children where VMMProcess.reap(pid) != nil { children.remove(pid) }
        superviseNetworks()
    }

    private func restartIfPolicySays(_ r: inout VMRecord) async {
        let name = r.name
        guard stopRequested[name] == nil else { return }
        let policy = r.definition.restartPolicy
        guard policy == .always || (policy == .onFailure && r.state == .failed) else { return }
        let ranFor = WallClock.monotonicSeconds() - (lastStart[name] ?? 0)
        let quick = ranFor < 10 ? (quickFailures[name] ?? 0) + 1 : 0
        quickFailures[name] = quick
        if quick >= Self.maxQuickFailures {
            r.state = .failed
            r.reason = "restart policy \(policy.rawValue) gave up after \(quick) exits within 10 s of starting; last: \(r.reason ?? "?")"
            try? inventory.update(r)
            event(name, "restart-abandoned", r.reason ?? "")
            return
        }
        let previous = r.reason ?? ""
        do {
            _ = try await withVMLock(name) {
                var fresh = try record(name)
                guard !fresh.state.hasProcess else { return true }
                fresh.restartCount += 1
                try launch(&fresh)
                event(name, "restarted", "by policy \(policy.rawValue) after: \(previous)")
                _ = try? await awaitReady(&fresh)
                return true
            }
        } catch {
            event(name, "restart-failed", "\(error)")
        }
    }

    /// At daemon start: every VM recorded with a VMM is re-adopted if that process (same pid,
    /// same start time) still lives; otherwise its exit is recorded and its policy applied.
    func adoptAll() async {
        guard let records = try? inventory.all() else { return }
        for var r in records where r.state.hasProcess {
            if let pid = r.pid, ProcFS.isAlive(pid: pid, startTime: r.pidStartTime) {
                if let reply = VMMProcess.control(socketPath(r.name), "status") {
                    let state: VMState = reply.contains(#""state":"paused""#) ? .paused : .running
                    if state != r.state { r.state = state; try? inventory.update(r) }
                }
                lastStart[r.name] = WallClock.monotonicSeconds() - 60
                event(r.name, "adopted", "VMM pid \(pid) still running")
                continue
            }
            if await adoptOrphan(&r) { continue }
            if r.pid == nil && r.state == .starting && readExitFile(r.name) == nil {
                // The daemon stopped between recording the start and spawning the VMM.
                stopRequested[r.name] = nil
                r.state = .stopped
                r.reason = "the daemon stopped while starting it; no VMM was started"
                try? inventory.update(r)
                event(r.name, "exited", r.reason ?? "")
                continue
            }
            recordExit(&r, status: readExitFile(r.name)?.status ?? -1)
            try? inventory.update(r)
            event(r.name, r.state == .failed ? "failed" : "exited", "while the daemon was down: \(r.reason ?? "")")
            await restartIfPolicySays(&r)
        }
    }

    // MARK: Host facts and metrics

    func hostInfo() -> HostInfo {
        let records = (try? inventory.all()) ?? []
        let live = records.filter { $0.state.hasProcess }
        let pcpus = ProcFS.onlineCPUs
        let vcpus = live.reduce(0) { $0 + $1.definition.vcpus }
        let mem = live.reduce(UInt64(0)) { $0 + UInt64($1.definition.memoryMiB) << 20 }
        var info = HostInfo(hostname: ProcFS.hostname, version: Self.version, kvm: access("/dev/kvm", R_OK | W_OK) == 0,
                        pcpus: pcpus, memoryPhysicalBytes: ProcFS.physicalMemory, memoryProvisionedBytes: mem,
                        vcpusProvisioned: vcpus, vcpuOvercommitRatio: Double(vcpus) / Double(pcpus),
                        vmsTotal: records.count, vmsRunning: live.count, dataDir: dataDir)
        let ladder = ladderView()
        info.memoryState = ladder.state
        info.memoryLadder = ladder
        return info
    }

    /// What /metrics needs from the actor; the rendering (which reads /proc and asks each VMM's
    /// control socket) runs outside it, so a slow VMM never holds up other requests.
    func metricsSnapshot() -> (HostInfo, [Metrics.VMSample]) {
        let records = (try? inventory.all()) ?? []
        return (hostInfo(), records.map { r in
            Metrics.VMSample(name: r.name, state: r.state, vcpus: r.definition.vcpus, memoryBytes: UInt64(r.definition.memoryMiB) << 20,
                             pid: r.state.hasProcess ? r.pid : nil, socket: socketPath(r.name))
        })
    }
}
