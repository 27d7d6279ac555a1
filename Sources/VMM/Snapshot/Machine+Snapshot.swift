import CLinux
import Devices
import DiskImage
import Virtio
import GuestMemory
import KVM
import VireoConfig
import VireoSupport
import X86Boot
#if canImport(Glibc)
import Glibc
#endif

/// What a machine restores from: the parsed state and its memory file.
public struct RestoreSource: Sendable {
    public var snapshot: MachineSnapshot
    public var memoryPath: String
    /// Guest RAM already filled (an incoming live migration): used instead of `memoryPath`.
    public var receivedMemory: GuestMemory? = nil
    /// Whether read-write disks go back to the internal snapshot the machine snapshot made of
    /// them (a restore), or are taken as they are (a migration: the source's disks, handed over).
    public var revertsDisks = true
    /// Disks (by id) taken as they are although the machine restores: a clone's, which its
    /// maker filled from the snapshot's internal disk snapshot (`adoptConfig(_:for: .clone)`).
    public var disksTakenAsGiven: Set<String> = []
    /// The VM configuration the snapshot was taken with, when another one was adopted.
    public var originalConfig: VMConfig? = nil
    /// The generation ID the snapshot's guest saw (nil: a snapshot from before the device).
    public var savedGenerationID: String? { (originalConfig ?? snapshot.config)?.generationID }

    /// Reads `dir/state.vsnap` (checked: magic, version, length, CRC, layout) and finds
    /// `dir/memory.bin`. Nothing is mapped or run yet.
    public static func load(_ dir: String) throws -> RestoreSource {
        let statePath = dir + "/" + SnapshotFile.stateName
        let bytes = try OwnedFD.readFile(statePath, limit: UInt64(SnapshotFile.maxBody + SnapshotFile.headerSize), what: "snapshot state")
        let snapshot = try SnapshotFile.decode(bytes, source: statePath)
        let memoryPath = dir + "/" + SnapshotFile.memoryName
        guard access(memoryPath, R_OK) == 0 else {
            throw VireoError.system("snapshot \(dir) has no readable \(SnapshotFile.memoryName)", hint: "the snapshot is incomplete; take it again")
        }
        return RestoreSource(snapshot: snapshot, memoryPath: memoryPath)
    }

    /// The machine configuration with only a serial wired (benchmarks, tests).
    public func machineConfig(serial: MachineConfig.Serial) throws -> MachineConfig {
        var w = MachineConfig.Wiring()
        w.serial = serial
        return try machineConfig(wiring: w)
    }

    /// The machine configuration to restore with: the snapshot's, with this run's wiring (its
    /// serial, console and vsock sockets, virtio console log).
    public func machineConfig(wiring: MachineConfig.Wiring) throws -> MachineConfig {
        let size = snapshot.memory.reduce(UInt64(0)) { $0 &+ $1.size }
        if snapshot.boot == "linux", let vm = snapshot.config {
            // The devices come from the VM configuration the snapshot carries, as at boot.
            var c = try MachineConfig(vm: vm, wiring: wiring)
            guard c.memorySize == size, c.cpus == snapshot.cpus else {
                throw VireoError(.corrupt, "snapshot: its configuration (\(c.cpus) vCPUs, \(ByteSize.format(c.memorySize))) does not match its state (\(snapshot.cpus) vCPUs, \(ByteSize.format(size)))",
                                 hint: "take the snapshot again")
            }
            c.memoryOptions.hugepages = false   // RAM maps the memory file
            return c
        }
        let serial = wiring.serial
        let boot: MachineConfig.Boot
        if snapshot.boot.hasPrefix("probe:") {
            boot = .probe(try ProbeWorkload.parse(String(snapshot.boot.dropFirst(6))))
        } else if snapshot.boot == "linux" {
            // Nothing is loaded from these files on restore (RAM holds the running kernel); they
            // are kept so the machine describes itself as it did.
            let k = snapshot.config?.kernel ?? ""
            boot = .linux(kernel: k, initrd: snapshot.config?.initrd, cmdline: snapshot.config?.cmdline ?? MachineConfig.defaultCmdline)
        } else {
            throw VireoError(.unsupported, "snapshot boots '\(snapshot.boot.prefix(40))', which this release cannot restore")
        }
        var c = MachineConfig(boot: boot, cpus: snapshot.cpus, memorySize: size, serial: serial)
        c.vm = snapshot.config
        return c
    }
}

extension Machine {
    /// The compared CPU features of `entries` (vCPU 0's CPUID on this host). When restoring,
    /// refuses a snapshot whose guest was offered features that this host's KVM cannot offer:
    /// the guest would fault on its next use of one (a migration destination refuses the same
    /// way, before the source hands the VM over).
    static func cpuFeatures(_ entries: [CPUIDEntry], restoring: RestoreSource?) throws -> [String: UInt32] {
        let offered = CPUFeatures.of(entries)
        guard let saved = restoring?.snapshot.cpuFeatures else { return offered }
        let missing = CPUFeatures.missing(saved: saved, offered: offered)
        guard missing.isEmpty else {
            let shown = missing.prefix(16).joined(separator: ", ") + (missing.count > 16 ? " and \(missing.count - 16) more" : "")
            throw VireoError(.unsupported, "the saved guest was running on a CPU with features this host's KVM does not offer (\(shown)); it would fault on its next use of one",
                             hint: "restore or migrate it to a host with the same CPU model or a newer one")
        }
        return offered
    }
}

/// Sizes of a snapshot just written.
public struct SnapshotStats: Sendable {
    public var stateBytes: Int
    /// Guest pages written to the memory file (the rest are holes: never touched, or zero).
    public var pagesWritten: UInt64
    public var memoryBytes: UInt64
    /// The internal snapshot made in the read-write disks (nil without such disks).
    public var diskSnapshot: String? = nil
}

extension Machine {
    /// Saves the machine into `dir` (created, or empty). The vCPUs must be parked (paused):
    /// their state and RAM do not change while it is written. Files are written under
    /// temporary names and renamed last, so an interrupted save leaves no snapshot that looks
    /// whole.
    public func writeSnapshot(to dir: String) throws -> SnapshotStats {
        let boot = try snapshotBoot()
        guard pauseGate.isPaused, pauseGate.parked >= vcpus.count else {
            throw VireoError(.conflict, "the machine must be paused while a snapshot is written")
        }
        // Released pages come back first: the RAM writer takes a non-resident page for a hole.
        try reclaimer.restoreAll()
        // A raw disk cannot hold its own snapshot; refuse before anything is written.
        if let raw = openDisks.first(where: { !$0.readOnly && $0.format != .qcow2 }) {
            throw VireoError(.unsupported, "disk \(raw.id) (\(raw.path)) is \(raw.format) and read-write: its contents at the snapshot could not be kept",
                             hint: "convert it to qcow2 (vireo disk convert -O qcow2 \(raw.path) NEW.qcow2) or attach it read-only")
        }
        if mkdir(dir, 0o700) != 0 && errno != EEXIST { throw VireoError.system("cannot create the snapshot directory \(dir)") }
        let memTmp = dir + "/." + SnapshotFile.memoryName + ".tmp"
        let stateTmp = dir + "/." + SnapshotFile.stateName + ".tmp"
        defer { unlink(memTmp); unlink(stateTmp) }

        // The virtio back ends stop (the event loop waits) while their state, the disks and RAM
        // are saved, so the saved ring positions, the disk snapshots and RAM agree.
        var captured: MachineSnapshot?
        var pages: UInt64 = 0
        var disks: [MachineSnapshot.Disk] = []
        let tag = Self.diskSnapshotTag(dir: dir)
        try whileVirtioQuiesced {
            disks = try snapshotDisks(tag: tag)
            do {
                captured = try captureState(boot: boot, disks: disks)
                pages = try writeMemory(to: memTmp)
            } catch {
                forgetDiskSnapshot(tag)
                throw error
            }
        }
        guard let snapshot = captured else { throw VireoError(.internalError, "the machine state was not captured") }
        do {
            let bytes = try SnapshotFile.encode(snapshot)
            try Self.writeAll(bytes, to: stateTmp)
            guard rename(memTmp, dir + "/" + SnapshotFile.memoryName) == 0, rename(stateTmp, dir + "/" + SnapshotFile.stateName) == 0 else {
                throw VireoError.system("cannot put the snapshot in place in \(dir)")
            }
            return SnapshotStats(stateBytes: bytes.count, pagesWritten: pages, memoryBytes: memory.totalSize,
                                 diskSnapshot: disks.contains { $0.diskSnapshot != nil } ? tag : nil)
        } catch {
            forgetDiskSnapshot(tag)
            throw error
        }
    }

    /// The internal disk-snapshot name a machine snapshot in `dir` uses: unique per snapshot
    /// taken (the directory's name and the time), so snapshots of one VM never collide.
    static func diskSnapshotTag(dir: String) -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let base = dir.split(separator: "/").last.map(String.init) ?? "snapshot"
        return "vireo-\(base.prefix(64))-\(ts.tv_sec)\(String(ts.tv_nsec / 1000).leftPadded(6))"
    }

    /// Runs `body` with every virtio back end quiesced (nested: each device's back-end lock).
    func whileVirtioQuiesced(_ body: () throws -> Void) throws {
        let slots = virtioWiring?.slots ?? []
        func nest(_ i: Int) throws {
            guard i < slots.count else { try body(); return }
            try slots[i].transport.whileQuiesced { try nest(i + 1) }
        }
        try nest(0)
    }

    /// Flushes every disk and keeps each read-write one's contents as an internal snapshot
    /// named `tag`. On failure the snapshots already made are removed again.
    func snapshotDisks(tag: String) throws -> [MachineSnapshot.Disk] {
        var out: [MachineSnapshot.Disk] = []
        do {
            for d in openDisks {
                try d.backend.flush()
                var name: String? = nil
                if !d.readOnly {
                    guard let image = (d.backend as? DiskImageBlockBackend)?.image as? Qcow2Image else {
                        throw VireoError(.unsupported, "disk \(d.id) cannot hold a snapshot")
                    }
                    try image.createSnapshot(name: tag)
                    name = tag
                }
                out.append(.init(id: d.id, path: d.path, format: d.format.rawValue, readOnly: d.readOnly, virtualSize: d.backend.size, diskSnapshot: name))
            }
        } catch {
            forgetDiskSnapshot(tag)
            throw error
        }
        return out
    }

    /// Deletes the internal disk snapshot `tag` from every read-write qcow2 disk that has it
    /// (a snapshot that failed half-way, or one deleted while the VM runs). Returns how many
    /// disks had it.
    @discardableResult
    func forgetDiskSnapshot(_ tag: String) -> Int {
        var n = 0
        for d in openDisks where !d.readOnly {
            guard let image = (d.backend as? DiskImageBlockBackend)?.image as? Qcow2Image else { continue }
            if (try? image.deleteSnapshot(name: tag)) != nil { n += 1 }
        }
        return n
    }

    /// Every device's state under its stable id.
    func saveDevices() -> [String: MachineSnapshot.DeviceState] {
        var out: [String: MachineSnapshot.DeviceState] = [:]
        if let probe = devices as? ProbeDevices { out["probe"] = probe.snapshotState }
        if let legacy {
            out["com1"] = .serial(legacy.serial.save())
            out["i8042"] = .i8042(legacy.i8042.save())
            out["rtc"] = .rtc(legacy.rtc.save())
        }
        if let pciBus { out["pci0"] = .pciBus(pciBus.save()) }
        for slot in virtioWiring?.slots ?? [] { out["virtio:" + slot.id] = .virtio(slot.transport.savedWhileQuiesced()) }
        return out
    }

    /// Puts every device's saved state back; a device the machine has but the snapshot lacks
    /// (or the other way round) refuses the snapshot.
    func restoreDevices(_ saved: [String: MachineSnapshot.DeviceState]) throws {
        var expected: Set<String> = []
        try whileVirtioQuiesced { expected = Set(saveDevices().keys) }
        guard Set(saved.keys) == expected else {
            throw VireoError(.corrupt, "snapshot: its devices (\(saved.keys.sorted().joined(separator: ", "))) are not this machine's (\(expected.sorted().joined(separator: ", ")))",
                             hint: "restore with the configuration the snapshot was taken with")
        }
        do {
            for (id, state) in saved {
                switch (state, legacy) {
                case let (.serial(v), l?) where id == "com1": try l.serial.restore(v)
                case let (.i8042(v), l?) where id == "i8042": try l.i8042.restore(v)
                case let (.rtc(v), l?) where id == "rtc": try l.rtc.restore(v)
                case let (.pciBus(v), _) where id == "pci0": pciBus?.restore(v)
                case (.probe, _) where id == "probe": break   // ProbeDevices restores its own
                case let (.virtio(v), _) where id.hasPrefix("virtio:"):
                    guard let slot = virtioWiring?.slots.first(where: { "virtio:" + $0.id == id }) else {
                        throw VireoError(.corrupt, "snapshot: this machine has no device \(id)")
                    }
                    do { try slot.transport.restore(v) } catch let e as VirtioStateError {
                        throw VireoError(.corrupt, "snapshot: device \(id): \(e)", hint: "restore with the configuration the snapshot was taken with")
                    }
                default: throw VireoError(.corrupt, "snapshot: device \(id) has state of another kind")
                }
            }
        } catch let e as DeviceStateError {
            throw VireoError(.corrupt, "snapshot: \(e)")
        }
        // The BARs go where the guest had put them (re-binding the doorbells), and every queue
        // is looked at once when the loop starts (work the guest posted, a pending event).
        if let wiring = virtioWiring {
            for slot in wiring.slots {
                wiring.pci.updateMappings(slot: Int(slot.address.device))
                for bell in slot.doorbells { bell.signal() }
            }
        }
    }

    /// Guest RAM into a sparse file: pages never touched (mincore) or all zero stay holes.
    private func writeMemory(to path: String) throws -> UInt64 {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw VireoError.system("cannot create \(path)") }
        defer { close(fd) }
        guard ftruncate(fd, off_t(memory.totalSize)) == 0 else { throw VireoError.system("cannot size \(path)") }
        let page = 4096
        var written: UInt64 = 0
        var fileOffset: UInt64 = 0
        for region in memory.regions {
            let count = Int(region.size) / page
            var resident = [UInt8](repeating: 1, count: count)
            // SAFETY: region.host maps region.size bytes; `resident` has one byte per page.
            _ = resident.withUnsafeMutableBufferPointer { mincore(region.host, Int(region.size), $0.baseAddress) }
            var i = 0
            while i < count {
                guard resident[i] & 1 != 0, !Self.isZeroPage(region.host + i * page) else { i += 1; continue }
                // A run of resident, non-zero pages goes in one write.
                var j = i + 1
                while j < count, resident[j] & 1 != 0, !Self.isZeroPage(region.host + j * page) { j += 1 }
                let length = (j - i) * page
                var done = 0
                while done < length {
                    // SAFETY: the range [i*page, j*page) lies inside the region's mapping.
                    let n = pwrite(fd, region.host + i * page + done, length - done, off_t(fileOffset) + off_t(i * page + done))
                    if n < 0 { if errno == EINTR { continue }; throw VireoError.system("cannot write guest memory to \(path)") }
                    done += n
                }
                written += UInt64(j - i)
                i = j
            }
            fileOffset += region.size
        }
        guard fsync(fd) == 0 else { throw VireoError.system("cannot sync \(path)") }
        return written
    }

    static func isZeroPage(_ p: UnsafeMutableRawPointer) -> Bool {
        // SAFETY: p points at a whole mapped 4 KiB page.
        let words = p.assumingMemoryBound(to: UInt64.self)
        for k in 0..<512 where words[k] != 0 { return false }
        return true
    }

    static func writeAll(_ bytes: [UInt8], to path: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw VireoError.system("cannot create \(path)") }
        defer { close(fd) }
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 { if errno == EINTR { continue }; throw VireoError.system("cannot write \(path)") }
            off += n
        }
        guard fsync(fd) == 0 else { throw VireoError.system("cannot sync \(path)") }
    }
}

extension ProbeWorkload {
    /// The workload as `--probe` text (what `parse` reads), for the snapshotable ones.
    var configText: String? {
        switch self {
        case let .pioLoop(n): return "pio:\(n)"
        case let .mmioLoop(n, address) where address == Self.defaultMMIOAddress: return "mmio:\(n)"
        case let .dirty(p): return "dirty:\(p)"
        case let .dirtyRate(r): return "dirty-rate:\(r)"
        case let .compute(n): return "compute:\(n)"
        case .echo: return "echo"
        case let .pattern(mode, hot): return "pattern:\(mode.name):\(hot >> 20)"
        default: return nil
        }
    }
}

extension ProbeDevices {
    var snapshotState: MachineSnapshot.DeviceState { .probe(passes: passes.load(ordering: .relaxed)) }

    func restore(_ devices: [String: MachineSnapshot.DeviceState]) throws {
        guard case let .probe(n)? = devices["probe"] else { throw VireoError(.corrupt, "snapshot: no state for the probe device") }
        passes.store(n, ordering: .relaxed)
        // The first instruction ran before the snapshot: nothing to timestamp.
    }
}

/// The version string snapshots record as their writer.
public enum VireoVersion {
    public static let string = "0.1.0"
}

/// A disk a virtio-blk device runs on.
struct OpenDisk {
    let id: String
    let path: String
    let format: DiskImageFormat
    let readOnly: Bool
    let backend: any BlockBackend
    /// The write tracker in front of a read-write disk (the device writes through it; a storage
    /// migration reads what it recorded).
    var tracker: DirtyTrackingBlockBackend? = nil
}

extension String {
    func leftPadded(_ n: Int) -> String { count >= n ? self : String(repeating: "0", count: n - count) + self }
}
