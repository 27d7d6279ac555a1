import CLinux
import DiskImage
import GuestMemory
import KVM
import Synchronization
import Virtio
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// What a live migration is doing, for `migrate-status` (any thread).
public final class MigrationStatus: Sendable {
    public struct State: Sendable, Equatable {
        /// none, setup, precopy, stop-and-copy, completed, failed, cancelled, unknown
        public var phase = "none"
        public var destination = ""
        public var round = 0
        public var bytesSent: UInt64 = 0
        public var pagesSent: UInt64 = 0
        public var zeroPages: UInt64 = 0
        /// Storage migration: whether the disks go too, and the disk bytes sent so far.
        public var storageCopy = false
        public var diskBytesSent: UInt64 = 0
        /// Disk bytes written by the guest and not sent yet (end of the last round).
        public var dirtyDiskBytes: UInt64 = 0
        /// Pages dirty at the end of the last round (what the next round must send).
        public var dirtyPages: UInt64 = 0
        public var dirtyBytesPerSecond: UInt64 = 0
        public var bandwidthBytesPerSecond: UInt64 = 0
        /// What sending the dirty pages would take now, in ms (switch-over when under the target).
        public var expectedDowntimeMs: UInt64 = 0
        public var downtimeTargetMs: UInt64 = 0
        /// The guest's pause, measured (stop-and-copy until the destination runs).
        public var downtimeMs: UInt64?
        public var totalMs: UInt64 = 0
        public var error: String?
    }

    let state = Mutex(State())
    let cancelRequested = Atomic<Bool>(false)
    public var snapshot: State { state.withLock { $0 } }
    var isActive: Bool { ["setup", "precopy", "stop-and-copy"].contains(snapshot.phase) }
    func update(_ body: (inout State) -> Void) { state.withLock { body(&$0) } }
}

extension Machine {
    /// How many pre-copy rounds before a migration that does not converge is given up.
    static let maxMigrationRounds = 30

    /// Starts a live migration to `address` on a thread of its own and returns at once;
    /// `migrate-status` follows it. Pre-copy: all of RAM while the guest runs, then rounds of
    /// the pages dirtied meanwhile (KVM's dirty log, and the pages the VMM's devices wrote),
    /// until sending what is left fits `downtimeMs`; then the vCPUs stop, the last pages and the
    /// machine's state go over, the disks' write locks are handed over, and once the destination
    /// has restored the machine it is told to run, and this VMM ends (`.migrated`).
    /// Any failure before that hand-over leaves this VM running as it was.
    /// With `storageCopy` the disks' contents go too (docs/migration.md, storage migration);
    /// `token` is what the destination was told to expect (`--incoming-token-file`).
    public func startMigration(to address: MigrationAddress, downtimeMs: UInt64, maxBandwidth: UInt64 = 0,
                               storageCopy: Bool = false, token: [UInt8] = []) throws {
        guard !migration.isActive else { throw VireoError(.conflict, "a migration is already running; migrate-status follows it, migrate-cancel stops it") }
        _ = try snapshotBoot()
        guard token.count <= Int(MigrationWire.maxToken) else { throw VireoError(.invalidArgument, "the migration token is longer than \(MigrationWire.maxToken) bytes") }
        guard openDisks.count <= Int(MigrationWire.maxDisks) else { throw VireoError(.unsupported, "more than \(MigrationWire.maxDisks) disks to migrate") }
        // Released pages come back first (pre-copy reads RAM with mincore); no reclaim runs
        // while the migration is active (the control command refuses).
        try reclaimer.restoreAll()
        migration.cancelRequested.store(false, ordering: .releasing)
        migration.update {
            $0 = MigrationStatus.State(); $0.phase = "setup"; $0.destination = address.description; $0.downtimeTargetMs = downtimeMs
            $0.storageCopy = storageCopy
        }
        let started = monotonicNanos()
        let thread = try HostThread(name: "migrate") { [self] in
            do {
                try runMigration(to: address, downtimeNanos: downtimeMs &* 1_000_000, maxBandwidth: maxBandwidth,
                                 storageCopy: storageCopy, token: token, started: started)
            } catch {
                let cancelled = migration.cancelRequested.load(ordering: .acquiring)
                migration.update {
                    if $0.phase != "unknown" { $0.phase = cancelled ? "cancelled" : "failed" }
                    $0.error = "\(error)"
                    $0.totalMs = (monotonicNanos() - started) / 1_000_000
                }
                DebugLog.log("migration to \(address) ended: \(error)")
            }
        }
        resources.append(thread)
    }

    private func runMigration(to address: MigrationAddress, downtimeNanos: UInt64, maxBandwidth: UInt64,
                              storageCopy: Bool, token: [UInt8], started: UInt64) throws {
        let boot = try snapshotBoot()
        let channel = try address.connect()
        channel.bytesPerSecondLimit = maxBandwidth
        let hello = MigrationWire.Hello(storageCopy: storageCopy, token: token,
                                        regions: memory.regions.map { .init(base: $0.guestBase, size: $0.size) },
                                        diskSizes: storageCopy ? openDisks.map { $0.backend.size } : [])
        try channel.send(hello.encode())

        // Dirty tracking: KVM's log for the guest's writes, the memory's own log for the VMM's.
        let log: DirtyLog
        do {
            try Machine.setDirtyLogging(memory, in: vm, true)
            log = dirtyLog ?? DirtyLog(vm: vm, slots: memory.regions.enumerated().map {
                DirtyLog.Slot(slot: UInt32($0.offset), guestBase: $0.element.guestBase, size: $0.element.size)
            })
            activeMemory?.suspended.store(true, ordering: .releasing)
            memory.startVMMWriteLog()
            _ = try log.fetch()
            if log.manualProtect { try log.rearm(Self.allPages(log)) }
        } catch {
            throw VireoError(.unsupported, "live migration needs KVM's dirty-page log, which failed: \(error)")
        }
        defer {
            stopDiskTracking()
            memory.stopVMMWriteLog()
            activeMemory?.suspended.store(false, ordering: .releasing)
            if dirtyLog == nil { try? Machine.setDirtyLogging(memory, in: vm, false) }
        }
        migration.update { $0.phase = "precopy" }

        // Round 0: the disks whole (storage copy), then every page the guest has (never-touched
        // pages are zero on both sides).
        var t = monotonicNanos()
        var sentBefore = channel.bytesSent
        if storageCopy {
            startDiskTracking()
            try sendDisksWhole(channel)
        }
        try sendResident(channel)
        var bandwidth = Self.rate(bytes: channel.bytesSent - sentBefore, since: t)
        var pending = try fetchDirty(log)
        var pendingDisk = storageCopy ? takeDiskDirty() : []
        var round = 1
        var history: [UInt64] = []
        while true {
            let dirty = Self.count(pending)
            let diskBytes = Self.dirtyDiskBytes(pendingDisk)
            let dirtyRate = Self.rate(bytes: dirty &* MigrationWire.pageSize &+ diskBytes, since: t)
            let expected = (dirty &* MigrationWire.pageSize &+ diskBytes) &* 1_000_000_000 / max(bandwidth, 1)
            migration.update {
                $0.round = round; $0.dirtyPages = dirty; $0.dirtyDiskBytes = diskBytes; $0.bandwidthBytesPerSecond = bandwidth
                $0.dirtyBytesPerSecond = dirtyRate; $0.expectedDowntimeMs = expected / 1_000_000; $0.bytesSent = channel.bytesSent
            }
            if expected <= downtimeNanos { break }
            if migration.cancelRequested.load(ordering: .acquiring) { throw VireoError(.conflict, "migration cancelled; the VM runs on here") }
            // No progress over the last three rounds: the guest dirties memory as fast as the link
            // carries it, and more rounds will not change that.
            let left = dirty &* MigrationWire.pageSize &+ diskBytes
            let stuck = history.count >= 4 && left >= (history.suffix(3).min() ?? 0)
            history.append(left)
            guard round < Self.maxMigrationRounds, !stuck else {
                throw VireoError(.unsupported, "the migration did not converge in \(round) rounds: the guest dirties \(ByteSize.format(dirtyRate))/s and the link carries \(ByteSize.format(bandwidth))/s, so the last pages would take \(expected / 1_000_000) ms, more than the \(downtimeNanos / 1_000_000) ms allowed; the VM runs on here",
                                 hint: "allow a longer pause (migrate ADDRESS downtime-ms=N), a faster link (max-bandwidth-mib=N), or migrate when the guest is quieter")
            }
            t = monotonicNanos()
            sentBefore = channel.bytesSent
            if storageCopy { try sendDirtyDisks(pendingDisk, channel) }
            try sendPages(pending, channel)
            bandwidth = (bandwidth + Self.rate(bytes: channel.bytesSent - sentBefore, since: t)) / 2
            pending = try fetchDirty(log)
            if storageCopy { pendingDisk = takeDiskDirty() }
            round += 1
        }

        // Stop and copy.
        migration.update { $0.phase = "stop-and-copy" }
        let pauseStart = monotonicNanos()
        let wasPaused = pauseGate.isPaused
        guard wasPaused || pauseGate.pause(vcpus: vcpus, stop: stop) else {
            pauseGate.resume()
            throw VireoError(.internalError, "the vCPUs did not stop within 2 s; the VM runs on here")
        }
        var handedOver = false
        defer { if !handedOver && !wasPaused { pauseGate.resume() } }
        try whileVirtioQuiesced {
            var last = try fetchDirty(log)
            for (i, words) in pending.enumerated() where i < last.count {
                for w in words.indices where w < last[i].count { last[i][w] |= words[w] }
            }
            for slot in virtioWiring?.slots ?? [] {
                for range in slot.transport.activeRingRanges() { Self.mark(&last, range.address, range.length, in: memory) }
            }
            try sendPages(last, channel, cancellable: false)
            for d in openDisks { try d.backend.flush() }
            if storageCopy {
                // The guest's last writes: what the rounds left, and what came since.
                var disk = takeDiskDirty()
                for (i, words) in pendingDisk.enumerated() where i < disk.count {
                    for w in words.indices where w < disk[i].count { disk[i][w] |= words[w] }
                }
                try sendDirtyDisks(disk, channel)
            }
            let snapshot = try captureState(boot: boot, disks: [])
            let bytes = try SnapshotFile.encode(snapshot)
            try channel.send([MigrationWire.Kind.state.rawValue] + MigrationChannel.le32(UInt32(bytes.count)))
            try channel.send(bytes)
            try setDiskWriteLocks(held: false)
            do {
                channel.setReceiveTimeout(seconds: 120)
                guard try channel.receiveU8() == MigrationWire.Kind.ready.rawValue else {
                    throw VireoError(.corrupt, "the destination answered out of turn")
                }
                let n = try channel.receiveU32()
                guard n <= MigrationWire.maxReadyText else { throw VireoError(.corrupt, "the destination's answer is too long") }
                let text = String(decoding: try channel.receive(Int(n)), as: UTF8.self)
                guard text.isEmpty else { throw VireoError(.conflict, "the destination could not restore the machine: \(text)") }
                try channel.send([MigrationWire.Kind.go.rawValue])
            } catch {
                try? setDiskWriteLocks(held: true)
                throw error
            }
            // From here the destination may run the guest: this VMM must never resume it.
            handedOver = true
            channel.setReceiveTimeout(seconds: 30)
            let confirmed = (try? channel.receiveU8()) == MigrationWire.Kind.running.rawValue
            let now = monotonicNanos()
            migration.update {
                $0.bytesSent = channel.bytesSent
                $0.downtimeMs = (now - pauseStart) / 1_000_000
                $0.totalMs = (now - started) / 1_000_000
                $0.phase = confirmed ? "completed" : "unknown"
                if !confirmed {
                    $0.error = "the destination was told to run the VM but did not confirm it; this VMM stays paused and will not resume it (check the destination)"
                }
            }
            if confirmed { stop.request(.migrated(address.description)) }
        }
    }

    /// "linux" or "probe:WORKLOAD", as snapshots record it; throws for machines that cannot be
    /// saved or moved.
    func snapshotBoot() throws -> String {
        switch config.boot {
        case let .probe(workload):
            guard let text = workload.configText else {
                throw VireoError(.unsupported, "this probe workload cannot be saved or moved (a probe image or a test workload)")
            }
            guard config.virtio.isEmpty else {
                throw VireoError(.unsupported, "a probe machine with virtio devices (disks, NICs, ...) cannot be saved or moved: probe images drive them in poll mode, whose state is not saved",
                                 hint: "snapshots and migration cover Linux guests with virtio devices and probe machines without them (docs/snapshots.md)")
            }
            return "probe:" + text
        case .linux:
            return "linux"
        }
    }

    /// The machine's state (vCPUs paused, back ends quiesced by the caller): what a snapshot
    /// writes and a migration sends.
    func captureState(boot: String, disks: [MachineSnapshot.Disk]) throws -> MachineSnapshot {
        let linux = legacy != nil
        let msrs = try kvm.msrIndexList()
        let states = try vcpus.map { try $0.captureState(msrIndices: msrs, withLAPIC: linux) }
        let chips = linux ? try vm.captureChipState() : nil
        return MachineSnapshot(format: MachineSnapshot.currentFormat, writer: "vireo " + VireoVersion.string, config: vmConfig,
                               cpus: vcpus.count, boot: boot,
                               memory: memory.regions.map { .init(guestBase: $0.guestBase, size: $0.size) },
                               vcpus: states, chips: chips, devices: saveDevices(), disks: disks.isEmpty ? nil : disks,
                               cpuFeatures: offeredCPUFeatures.isEmpty ? nil : offeredCPUFeatures)
    }

    /// Takes or gives up the write locks of the read-write disks (the hand-over to the destination).
    func setDiskWriteLocks(held: Bool) throws {
        for d in openDisks where !d.readOnly { try d.backend.setWriteLocksHeld(held) }
    }

    // MARK: Pages

    /// KVM's dirty pages since the last fetch (re-armed) with the pages the VMM wrote, per region.
    private func fetchDirty(_ log: DirtyLog) throws -> [[UInt64]] {
        let bitmap = try log.fetch()
        if log.manualProtect { try log.rearm(bitmap) }
        var out = memory.regions.map { [UInt64](repeating: 0, count: Int(($0.size / MigrationWire.pageSize + 63) / 64)) }
        for s in bitmap.slots where Int(s.slot.slot) < out.count {
            let i = Int(s.slot.slot)
            for w in s.words.indices where w < out[i].count { out[i][w] |= s.words[w] }
        }
        let vmm = memory.takeVMMWriteLog()
        for (i, words) in vmm.enumerated() where i < out.count {
            for w in words.indices where w < out[i].count { out[i][w] |= words[w] }
        }
        return out
    }

    private static func allPages(_ log: DirtyLog) -> DirtyLog.Bitmap {
        DirtyLog.Bitmap(slots: log.slots.map { slot in
            let pages = Int(slot.size / DirtyLog.pageSize)
            var words = [UInt64](repeating: .max, count: slot.words)
            if pages % 64 != 0, let lastIndex = words.indices.last { words[lastIndex] = (UInt64(1) << UInt64(pages % 64)) &- 1 }
            return DirtyLog.SlotBitmap(slot: slot, words: words)
        })
    }

    private static func mark(_ bits: inout [[UInt64]], _ address: UInt64, _ length: UInt64, in memory: GuestMemory) {
        guard length > 0 else { return }
        for (i, r) in memory.regions.enumerated() where i < bits.count {
            let start = max(address, r.guestBase)
            let (end, o) = address.addingReportingOverflow(length)
            let stop = min(o ? UInt64.max : end, r.guestEnd)
            guard start < stop else { continue }
            var page = (start - r.guestBase) / MigrationWire.pageSize
            let lastPage = (stop - 1 - r.guestBase) / MigrationWire.pageSize
            while page <= lastPage {
                bits[i][Int(page / 64)] |= UInt64(1) << (page % 64)
                page += 1
            }
        }
    }

    private static func count(_ bits: [[UInt64]]) -> UInt64 {
        bits.reduce(0) { $0 + $1.reduce(0) { $0 + UInt64($1.nonzeroBitCount) } }
    }

    private static func rate(bytes: UInt64, since t: UInt64) -> UInt64 {
        let ns = max(monotonicNanos() - t, 1)
        return bytes.multipliedReportingOverflow(by: 1_000_000_000).overflow ? bytes / ns * 1_000_000_000 : bytes * 1_000_000_000 / ns
    }

    /// Round 0: every resident, non-zero page (the destination's fresh RAM is zero).
    private func sendResident(_ channel: MigrationChannel) throws {
        for (i, region) in memory.regions.enumerated() {
            let pages = Int(region.size / MigrationWire.pageSize)
            var resident = [UInt8](repeating: 1, count: pages)
            // SAFETY: region.host maps region.size bytes; `resident` has one byte per page.
            _ = resident.withUnsafeMutableBufferPointer { mincore(region.host, Int(region.size), $0.baseAddress) }
            var words = [UInt64](repeating: 0, count: (pages + 63) / 64)
            for p in 0..<pages where resident[p] & 1 != 0 { words[p / 64] |= UInt64(1) << UInt64(p % 64) }
            var bits = memory.regions.map { _ in [UInt64]() }
            bits[i] = words
            try sendPages(bits, channel, zeroMarkers: false)
            if migration.cancelRequested.load(ordering: .acquiring) { throw VireoError(.conflict, "migration cancelled; the VM runs on here") }
        }
    }

    /// Sends every page whose bit is set: runs of non-zero pages as data, runs of zero pages as
    /// markers (or not at all when `zeroMarkers` is false: the destination holds zeroes there).
    /// `cancellable`: a cancel stops it between messages (pre-copy; never in stop-and-copy).
    private func sendPages(_ bits: [[UInt64]], _ channel: MigrationChannel, zeroMarkers: Bool = true, cancellable: Bool = true) throws {
        for (i, region) in memory.regions.enumerated() where i < bits.count && !bits[i].isEmpty {
            let pages = Int(region.size / MigrationWire.pageSize)
            var p = 0
            while p < pages {
                guard bits[i][p / 64] & (UInt64(1) << UInt64(p % 64)) != 0 else {
                    // Skip whole empty words quickly.
                    if p % 64 == 0 && bits[i][p / 64] == 0 { p += 64 } else { p += 1 }
                    continue
                }
                let zero = Self.isZeroPage(region.host + p * Int(MigrationWire.pageSize))
                var q = p + 1
                while q < pages, q - p < Int(MigrationWire.maxPagesPerMessage), bits[i][q / 64] & (UInt64(1) << UInt64(q % 64)) != 0,
                      Self.isZeroPage(region.host + q * Int(MigrationWire.pageSize)) == zero {
                    q += 1
                }
                let n = q - p
                let address = region.guestBase + UInt64(p) * MigrationWire.pageSize
                if zero {
                    if zeroMarkers {
                        try channel.send([MigrationWire.Kind.zeros.rawValue] + MigrationChannel.le64(address) + MigrationChannel.le32(UInt32(n)))
                    }
                    migration.update { $0.zeroPages &+= UInt64(n) }
                } else {
                    try channel.send([MigrationWire.Kind.pages.rawValue] + MigrationChannel.le64(address) + MigrationChannel.le32(UInt32(n)))
                    // SAFETY: pages [p, q) lie inside the region's mapping.
                    try channel.send(UnsafeRawBufferPointer(start: region.host + p * Int(MigrationWire.pageSize), count: n * Int(MigrationWire.pageSize)))
                    migration.update { $0.pagesSent &+= UInt64(n); $0.bytesSent = channel.bytesSent }
                    if cancellable && migration.cancelRequested.load(ordering: .acquiring) {
                        throw VireoError(.conflict, "migration cancelled; the VM runs on here")
                    }
                }
                p = q
            }
        }
    }
}
