import CLinux
import DiskImage
import KVM
import Synchronization
import VireoConfig
import VireoSupport
import Virtio
#if canImport(Glibc)
import Glibc
#endif

/// Pausing a running machine: vCPU threads park outside KVM_RUN until resumed.
///
/// Protocol (no lost kicks): `pause()` sets `paused`, then sets every vCPU's `immediate_exit`
/// and sends SIGUSR1 to the threads already inside KVM_RUN. A vCPU thread clears its
/// `immediate_exit` *before* it re-checks `paused` at the top of its loop, so a pause that
/// lands after the check still finds `immediate_exit` set when KVM_RUN is entered.
public final class PauseGate: @unchecked Sendable {
    private let paused = Atomic<Bool>(false)
    private let parkedCount = Atomic<Int>(0)
    private let threads = Mutex<[Int: (thread: pthread_t, tid: Int32)]>([:])
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let cond: UnsafeMutablePointer<pthread_cond_t>

    public init() {
        mutex = .allocate(capacity: 1)
        cond = .allocate(capacity: 1)
        // SAFETY: freshly allocated, initialised once here and destroyed once in deinit.
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(cond, nil)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        cond.deallocate()
    }

    @inline(__always)
    public var isPaused: Bool { paused.load(ordering: .sequentiallyConsistent) }
    public var parked: Int { parkedCount.load(ordering: .sequentiallyConsistent) }

    /// Called by vCPU thread `index` when it starts: records its pthread and kernel tid.
    func register(index: Int) {
        let me = pthread_self()
        let tid = Self.currentThreadID()
        threads.withLock { $0[index] = (me, tid) }
    }

    /// The calling thread's kernel tid, from /proc/thread-self ("PID/task/TID"); 0 if unknown.
    static func currentThreadID() -> Int32 {
        var buf = [CChar](repeating: 0, count: 64)
        let n = readlink("/proc/thread-self", &buf, buf.count - 1)
        guard n > 0 else { return 0 }
        let s = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return s.split(separator: "/").last.flatMap { Int32($0) } ?? 0
    }

    /// Kernel thread ids of the vCPU threads, by vCPU index.
    public var threadIDs: [Int: Int32] { threads.withLock { $0.mapValues(\.tid) } }

    /// Stops every vCPU outside KVM_RUN; returns once all `vcpus.count` are parked or after `timeoutMs`.
    public func pause(vcpus: [VCPU], stop: StopSignal, timeoutMs: Int = 2000) -> Bool {
        paused.store(true, ordering: .sequentiallyConsistent)
        let known = threads.withLock { $0 }
        for (i, vcpu) in vcpus.enumerated() {
            vcpu.setImmediateExit(true)
            if let t = known[i] { _ = pthread_kill(t.thread, SIGUSR1) }
        }
        var waited = 0
        while parked < vcpus.count && !stop.isStopping && waited < timeoutMs {
            usleep(1000); waited += 1
            // A vCPU thread that was still starting (not yet registered, or about to clear its
            // immediate-exit flag) missed the first kick: kick again every 10 ms.
            if waited % 10 == 0 {
                let now = threads.withLock { $0 }
                for (i, vcpu) in vcpus.enumerated() {
                    vcpu.setImmediateExit(true)
                    if let t = now[i] { _ = pthread_kill(t.thread, SIGUSR1) }
                }
            }
        }
        return parked >= vcpus.count
    }

    /// Marks the gate paused before any vCPU thread runs: each parks before its first KVM_RUN
    /// and waits for `resume()` (`vireo run --paused`).
    public func startPaused() {
        paused.store(true, ordering: .sequentiallyConsistent)
    }

    public func resume() {
        pthread_mutex_lock(mutex)
        paused.store(false, ordering: .sequentiallyConsistent)
        pthread_cond_broadcast(cond)
        pthread_mutex_unlock(mutex)
    }

    /// Parks the calling vCPU thread while paused (waking every 100 ms to notice a stop).
    func park(vcpu: VCPU, stop: StopSignal) {
        pthread_mutex_lock(mutex)
        parkedCount.add(1, ordering: .sequentiallyConsistent)
        while isPaused && !stop.isStopping {
            var ts = timespec()
            clock_gettime(CLOCK_REALTIME, &ts)
            ts.tv_nsec += 100_000_000
            if ts.tv_nsec >= 1_000_000_000 { ts.tv_sec += 1; ts.tv_nsec -= 1_000_000_000 }
            _ = pthread_cond_timedwait(cond, mutex, &ts)
        }
        parkedCount.subtract(1, ordering: .sequentiallyConsistent)
        pthread_mutex_unlock(mutex)
        vcpu.setImmediateExit(false)
    }
}

/// The VMM's own control socket (`vireo run --api-socket PATH`): one line in, one JSON line out.
///
/// Commands: `config` (the VM configuration it runs, as JSON), `status` (state, per-vCPU exit counts and thread ids, memory (provisioned, active
/// estimate, guest-reported), per-disk and per-NIC counters), `pause`, `resume`,
/// `shutdown` (press the ACPI power button; the guest powers itself off), `stop` (end now),
/// `balloon [MIB]` (the balloon's target and actual size; with MIB, a new target),
/// `reclaim BYTES` (compress or swap cold guest pages; a line of key=value pairs, MemoryReclaim/).
/// One connection at a time, on its own host thread; the daemon is the only client.
public final class ControlServer: @unchecked Sendable {
    public let path: String
    private let listenFD: OwnedFD
    private var thread: HostThread?

    public init(path: String, machine: Machine) throws {
        self.path = path
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw VireoError.system("cannot create the control socket") }
        listenFD = OwnedFD(taking: fd)
        guard UnixSocketAddress.fits(path) else {
            throw VireoError(.invalidArgument, "--api-socket \(path) is longer than a unix socket path may be (107 bytes)")
        }
        unlink(path)
        let rc = UnixSocketAddress.with(path) { bind(fd, $0, $1) }
        guard rc == 0 else { throw VireoError.system("cannot bind the control socket \(path)") }
        chmod(path, 0o600)
        guard listen(fd, 8) == 0 else { throw VireoError.system("cannot listen on \(path)") }
        let listenRaw = fd
        thread = try HostThread(name: "control") { [machine] in
            ControlServer.serve(listenFD: listenRaw, machine: machine)
        }
    }

    /// Removes the socket file (the thread ends with the process).
    public func remove() { unlink(path) }

    private static func serve(listenFD: Int32, machine: Machine) {
        while !machine.stop.isStopping {
            let c = accept(listenFD, nil, nil)
            if c < 0 { if errno == EINTR || errno == ECONNABORTED { continue }; return }
            _ = fcntl(c, F_SETFD, FD_CLOEXEC)
            var tv = timeval(tv_sec: 5, tv_usec: 0)
            _ = setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            var line: [UInt8] = []
            var byte: UInt8 = 0
            var complete = false
            while line.count < 4096, read(c, &byte, 1) == 1 {
                if byte == 10 { complete = true; break }
                line.append(byte)
            }
            let command = String(decoding: line, as: UTF8.self).trimmingSpaces
            // A line cut short is refused, never acted on (a truncated path names another place).
            let reply = (complete || line.count < 4096 ? handle(command, machine: machine)
                         : #"{"ok":false,"error":"the command is longer than 4096 bytes"}"#) + "\n"
            // A reply (a whole configuration) may take more than one send.
            let bytes = Array(reply.utf8)
            var off = 0
            while off < bytes.count {
                let n = bytes[off...].withUnsafeBytes { send(c, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if n < 0, errno == EINTR { continue }
                if n <= 0 { break }
                off += n
            }
            close(c)
        }
    }

    static func handle(_ command: String, machine: Machine) -> String {
        let words = command.split(separator: " ")
        if words.first == "reclaim" { return reclaim(words.dropFirst().map(String.init), machine: machine) }
        if words.first == "balloon" { return balloon(words.dropFirst().map(String.init), machine: machine) }
        if words.first == "snapshot" { return snapshot(words.dropFirst().map(String.init), machine: machine) }
        if words.first == "migrate" { return migrate(words.dropFirst().map(String.init), machine: machine) }
        if words.first == "forget-disk-snapshot" { return forgetDiskSnapshot(words.dropFirst().map(String.init), machine: machine) }
        if words.first == "export-disk-snapshot" { return exportDiskSnapshot(words.dropFirst().map(String.init), machine: machine) }
        switch command {
        case "config":
            // The configuration this VMM runs, whole (the daemon compares it with what it stored).
            guard let vm = machine.vmConfig else {
                return #"{"ok":false,"error":"this machine was built without a VM configuration"}"#
            }
            return #"{"ok":true,"config":"# + String(decoding: vm.jsonBytes(), as: UTF8.self) + "}"
        case "status", "metrics":
            return status(machine)
        case "pause":
            let ok = machine.pauseGate.pause(vcpus: machine.vcpus, stop: machine.stop)
            return ok ? #"{"ok":true,"state":"paused"}"# : #"{"ok":false,"error":"the vCPUs did not stop within 2 s"}"#
        case "resume":
            machine.pauseGate.resume()
            return #"{"ok":true,"state":"running"}"#
        case "shutdown":
            // An ACPI shutdown request: the guest decides (and may take its time, or ignore it).
            guard let button = machine.powerButton else {
                return #"{"ok":false,"error":"this guest has no ACPI power button (the probe guest); use stop"}"#
            }
            guard !machine.pauseGate.isPaused else {
                return #"{"ok":false,"error":"the VM is paused, so its guest cannot act on a shutdown request; resume it first or use stop"}"#
            }
            button.press()
            return #"{"ok":true,"state":"shutting-down","presses":\#(button.pressCount)}"#
        case "probe-verify":
            return probeVerify(machine: machine)
        case "migrate-status":
            return migrationStatus(machine)
        case "migrate-cancel":
            guard machine.migration.isActive else { return #"{"ok":false,"error":"no migration is running"}"# }
            machine.migration.cancelRequested.store(true, ordering: .releasing)
            return #"{"ok":true,"state":"cancelling"}"#
        case "stop":
            machine.stop.request(.signal(SIGTERM))
            machine.pauseGate.resume()
            return #"{"ok":true,"state":"stopping"}"#
        default:
            return #"{"ok":false,"error":"unknown command; one of status, config, pause, resume, shutdown, stop, balloon [MIB], reclaim BYTES, snapshot DIR, forget-disk-snapshot TAG, export-disk-snapshot TAG DISK-ID PATH, migrate ADDRESS [downtime-ms=N] [storage=copy] [token=T], migrate-status, migrate-cancel"}"#
        }
    }

    /// `balloon` reports the balloon's target and actual size; `balloon MIB` sets a new target
    /// (the guest driver inflates or deflates towards it on its own time).
    static func balloon(_ args: [String], machine: Machine) -> String {
        guard let balloon = machine.balloon else {
            return #"{"ok":false,"error":"this VM has no balloon device; define it with a balloon (vireo run --balloon size=MIB)"}"#
        }
        let guestMiB = machine.memory.totalSize >> 20
        if let arg = args.first {
            guard args.count == 1, let mib = UInt64(arg), mib <= guestMiB else {
                return #"{"ok":false,"error":"balloon takes one size in MiB from 0 to \#(guestMiB) (the guest's memory)"}"#
            }
            balloon.setTarget(pages: UInt32(mib * 256))
        }
        return #"{"ok":true,"target_mib":\#(balloon.targetPages / 256),"actual_mib":\#(balloon.actualPages / 256)}"#
    }

    /// `snapshot DIR`: pauses the vCPUs (if running), writes the machine's state and RAM into
    /// DIR, and resumes them if they were running. The guest sees a pause of the write's length.
    static func snapshot(_ args: [String], machine: Machine) -> String {
        guard args.count == 1, let dir = args.first, dir.hasPrefix("/") else {
            return #"{"ok":false,"error":"snapshot takes one absolute directory path"}"#
        }
        let wasPaused = machine.pauseGate.isPaused
        if !wasPaused {
            guard machine.pauseGate.pause(vcpus: machine.vcpus, stop: machine.stop) else {
                machine.pauseGate.resume()
                return #"{"ok":false,"error":"the vCPUs did not stop within 2 s"}"#
            }
        }
        defer { if !wasPaused { machine.pauseGate.resume() } }
        let t0 = monotonicNanos()
        do {
            let s = try machine.writeSnapshot(to: dir)
            let ms = (monotonicNanos() - t0) / 1_000_000
            let disk = s.diskSnapshot.map { ",\"disk_snapshot\":\"" + jsonEscaped($0) + "\"" } ?? ""
            return #"{"ok":true,"dir":"\#(jsonEscaped(dir))","state_bytes":\#(s.stateBytes),"pages_written":\#(s.pagesWritten),"memory_bytes":\#(s.memoryBytes),"ms":\#(ms)\#(disk)}"#
        } catch {
            return #"{"ok":false,"error":"\#(jsonEscaped("\(error)"))"}"#
        }
    }

    /// `migrate tcp:HOST:PORT|unix:PATH [downtime-ms=N]`: starts a live migration to a VMM
    /// waiting with `vireo run --incoming`; answers at once, `migrate-status` follows it.
    static func migrate(_ args: [String], machine: Machine) -> String {
        guard let target = args.first, args.count <= 5 else {
            return #"{"ok":false,"error":"migrate takes a destination (tcp:HOST:PORT or unix:PATH), then optionally downtime-ms=N, max-bandwidth-mib=N, storage=copy|shared, token=T"}"#
        }
        var downtime: UInt64 = 50
        var bandwidth: UInt64 = 0
        var storageCopy = false
        var token: [UInt8] = []
        for arg in args.dropFirst() {
            if arg == "storage=copy" || arg == "storage=shared" { storageCopy = arg == "storage=copy"; continue }
            if arg.hasPrefix("token=") { token = Array(arg.utf8.dropFirst(6)); continue }
            if arg.hasPrefix("downtime-ms=") {
                guard let ms = UInt64(arg.dropFirst(12)), ms >= 1, ms <= 600_000 else {
                    return #"{"ok":false,"error":"downtime-ms wants a number of milliseconds from 1 to 600000"}"#
                }
                downtime = ms
            } else if arg.hasPrefix("max-bandwidth-mib=") {
                guard let mib = UInt64(arg.dropFirst(18)), mib >= 1, mib <= 1 << 20 else {
                    return #"{"ok":false,"error":"max-bandwidth-mib wants MiB per second from 1 to 1048576"}"#
                }
                bandwidth = mib << 20
            } else {
                return #"{"ok":false,"error":"migrate: unknown option '\#(jsonEscaped(String(arg.prefix(40))))' (downtime-ms=N, max-bandwidth-mib=N, storage=copy|shared, token=T)"}"#
            }
        }
        do {
            let address = try MigrationAddress.parse(target)
            try machine.startMigration(to: address, downtimeMs: downtime, maxBandwidth: bandwidth, storageCopy: storageCopy, token: token)
            return #"{"ok":true,"state":"migrating","destination":"\#(jsonEscaped(address.description))","downtime_target_ms":\#(downtime)}"#
        } catch {
            return #"{"ok":false,"error":"\#(jsonEscaped("\(error)"))"}"#
        }
    }

    static func migrationStatus(_ machine: Machine) -> String {
        let s = machine.migration.snapshot
        var out = #"{"ok":true,"phase":"\#(s.phase)","destination":"\#(jsonEscaped(s.destination))","round":\#(s.round),"#
        out += #""bytes_sent":\#(s.bytesSent),"pages_sent":\#(s.pagesSent),"zero_pages":\#(s.zeroPages),"dirty_pages":\#(s.dirtyPages),"#
        out += #""dirty_bytes_per_s":\#(s.dirtyBytesPerSecond),"bandwidth_bytes_per_s":\#(s.bandwidthBytesPerSecond),"#
        out += #""expected_downtime_ms":\#(s.expectedDowntimeMs),"downtime_target_ms":\#(s.downtimeTargetMs),"total_ms":\#(s.totalMs),"#
        out += #""storage_copy":\#(s.storageCopy),"disk_bytes_sent":\#(s.diskBytesSent),"dirty_disk_bytes":\#(s.dirtyDiskBytes)"#
        if let d = s.downtimeMs { out += #","downtime_ms":\#(d)"# }
        if let e = s.error { out += #","error":"\#(jsonEscaped(e))""# }
        return out + "}"
    }

    /// `forget-disk-snapshot TAG`: deletes the internal snapshot TAG that a machine snapshot
    /// made in this VM's read-write disks (the daemon deletes a machine snapshot while the VM
    /// runs, so the disks' space comes back). Disks without it are left alone.
    static func forgetDiskSnapshot(_ args: [String], machine: Machine) -> String {
        guard args.count == 1, let tag = args.first, tag.hasPrefix("vireo-") else {
            return #"{"ok":false,"error":"forget-disk-snapshot takes one disk snapshot name (vireo-...)"}"#
        }
        var n = 0
        do { try machine.whileVirtioQuiesced { n = machine.forgetDiskSnapshot(tag) } } catch {
            return #"{"ok":false,"error":"\#(jsonEscaped("\(error)"))"}"#
        }
        return #"{"ok":true,"disks":\#(n)}"#
    }

    /// `export-disk-snapshot TAG DISK-ID PATH`: writes read-write disk DISK-ID as it was at its
    /// internal snapshot TAG (a machine snapshot's) into a new qcow2 image at PATH, with the
    /// disk's backing file under it. The daemon makes a clone's base this way while the VM runs
    /// on (the VMM holds the disk; the guest's I/O goes on between the steps).
    static func exportDiskSnapshot(_ args: [String], machine: Machine) -> String {
        guard args.count >= 3, args[0].hasPrefix("vireo-") else {
            return #"{"ok":false,"error":"export-disk-snapshot takes a disk snapshot name (vireo-...), a disk id and a path"}"#
        }
        let path = args[2...].joined(separator: " ")
        guard path.hasPrefix("/") else { return #"{"ok":false,"error":"export-disk-snapshot: give an absolute path"}"# }
        guard let disk = machine.openDisks.first(where: { $0.id == args[1] }) else {
            return #"{"ok":false,"error":"this VM has no disk \#(jsonEscaped(args[1]))"}"#
        }
        guard let image = (disk.backend as? DiskImageBlockBackend)?.image as? Qcow2Image else {
            return #"{"ok":false,"error":"disk \#(jsonEscaped(args[1])) is not a qcow2 image, so it holds no internal snapshots"}"#
        }
        let t0 = monotonicNanos()
        do { try image.exportSnapshot(args[0], to: path) } catch {
            return #"{"ok":false,"error":"\#(jsonEscaped("\(error)"))"}"#
        }
        return #"{"ok":true,"path":"\#(jsonEscaped(path))","ms":\#((monotonicNanos() - t0) / 1_000_000)}"#
    }

    static func jsonEscaped(_ s: String) -> String {
        var out = ""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case _ where u.value < 0x20: out += "\\u" + String(repeating: "0", count: 4 - String(u.value, radix: 16).count) + String(u.value, radix: 16)
            default: out.unicodeScalars.append(u)
            }
        }
        return out
    }

    static func status(_ machine: Machine) -> String {
        let state = machine.stop.isStopping ? "stopping" : machine.pauseGate.isPaused ? "paused" : "running"
        let tids = machine.pauseGate.threadIDs
        let vcpus = machine.stats.enumerated().map { i, s in
            #"{"index":\#(i),"tid":\#(tids[i] ?? 0),"pio_exits":\#(s.pioExits.load(ordering: .relaxed)),"mmio_exits":\#(s.mmioExits.load(ordering: .relaxed)),"other_exits":\#(s.otherExits.load(ordering: .relaxed))}"#
        }
        return #"{"ok":true,"state":"\#(state)","pid":\#(getpid()),"vcpus":[\#(vcpus.joined(separator: ","))],\#(machine.metrics().jsonFields)\#(probeFields(machine))}"#
    }
}

extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\r" || f == "\t" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\r" || l == "\t" { s.removeLast() }
        return String(s)
    }
}
