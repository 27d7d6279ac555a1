import GuestMemory
import KVM
import Synchronization
import Testing
import VMM
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// KVM dirty-page logging on this host's real KVM with the probe guest: the log sees exactly
/// the pages the guest wrote, re-arms at every fetch, and sees nothing while the guest writes nothing.
@Suite(.serialized, .enabled(if: KVMAvailability.available))
struct DirtyLogTests {
    static let memory: UInt64 = 16 << 20
    /// The probe's dirty workload writes one word in every page from 2 MiB to the end of RAM.
    static let passPages = Int((memory - ProbeGuest.dirtyStart) / DirtyLog.pageSize)
    /// Pages the probe itself dirties besides its workload, all in the first window: the
    /// accessed/dirty bits set in its page tables (PML4 0x5000, PDPT 0x6000, first PD 0x7000),
    /// its code page 0x10000 (written while KVM emulates its few CPL 0 instructions on this PVM
    /// host) and its CPL 0 stack 0x1e000 (the iretq frame). Later windows find none of them.
    static let probeOwnAddresses: Set<UInt64> = [0x5000, 0x6000, 0x7000, 0x10000, 0x1E000]
    static var probeOwnPages: Int { probeOwnAddresses.count }

    /// Passes dirty(3): after each pass (the vCPU is in the VMM for the pass marker) the test
    /// fetches the log. Each window holds every page of the region; the counts are exact.
    @Test func eachWindowCountsExactlyThePagesThePassWrote() throws {
        var config = MachineConfig(boot: .probe(.dirty(passes: 3)), cpus: 1, memorySize: Self.memory, serial: .none)
        config.trackDirtyPages = true
        let logRef = Mutex<DirtyLog?>(nil)
        let windows = Mutex<[Result<DirtyLog.Bitmap, VireoError>]>([])
        let machine = try Machine(config: config, onProbePass: { _ in
            guard let log = logRef.withLock({ $0 }) else { return }
            let r: Result<DirtyLog.Bitmap, VireoError>
            do { r = .success(try log.fetch()) } catch { r = .failure(error as? VireoError ?? VireoError(.io, "\(error)")) }
            windows.withLock { $0.append(r) }
        })
        let log = try #require(machine.dirtyLog, "KVM refused dirty logging: \(machine.dirtyLogUnavailable ?? "no reason")")
        logRef.withLock { $0 = log }
        #expect(machine.run() == .probeDone)
        let results = windows.withLock { $0 }
        #expect(results.count == 3)
        for (i, r) in results.enumerated() {
            let bitmap = try r.get()
            let inRegion = bitmap.slots.flatMap(\.dirtyAddresses).filter { $0 >= ProbeGuest.dirtyStart }
            let outside = bitmap.slots.flatMap(\.dirtyAddresses).filter { $0 < ProbeGuest.dirtyStart }
            print("dirty log window \(i + 1): \(bitmap.dirtyPages) pages; \(inRegion.count) in the workload's region, outside it: \(outside.map { hex($0) })")
            // Every page of the region, each exactly once (a page is a bit), and nothing else above 2 MiB.
            #expect(inRegion.count == Self.passPages)
            #expect(inRegion.first == ProbeGuest.dirtyStart && inRegion.last == Self.memory - DirtyLog.pageSize)
            // Outside the region: only the probe's own few pages, and after the first window none.
            #expect(outside.count <= (i == 0 ? Self.probeOwnPages : 0), "window \(i + 1) saw pages the workload does not write: \(outside.map { hex($0) })")
            #expect(outside.allSatisfy(Self.probeOwnAddresses.contains), "dirty pages outside the probe's tables, code and stack: \(outside.map { hex($0) })")
        }
        // After the last pass the guest only wrote its done port: an empty window.
        #expect(try log.fetch().dirtyPages == 0)
    }

    /// A guest that runs but stores nothing (the PIO loop: `out` in a loop) dirties nothing.
    @Test func aWindowWithoutWritesCountsZero() throws {
        var config = MachineConfig(boot: .probe(.pioLoop(iterations: 1 << 40)), cpus: 1, memorySize: Self.memory, serial: .none)
        config.trackDirtyPages = true
        let machine = try Machine(config: config)
        let log = try #require(machine.dirtyLog, "KVM refused dirty logging: \(machine.dirtyLogUnavailable ?? "no reason")")
        let counts = Mutex<[Int]>([])
        let exits = Mutex<UInt64>(0)
        let stop = machine.stop
        let stats = machine.stats[0]
        let watcher = try HostThread(name: "test-dirty") {
            usleep(300_000)
            let first = (try? log.fetchDirtyPages()) ?? -1
            let e0 = stats.pioExits.load(ordering: .relaxed)
            usleep(500_000)
            let second = (try? log.fetchDirtyPages()) ?? -1
            exits.withLock { $0 = stats.pioExits.load(ordering: .relaxed) - e0 }
            counts.withLock { $0 = [first, second] }
            stop.request(.signal(SIGTERM))
        }
        let exit = machine.run()
        watcher.join()
        #expect(exit == .signal(SIGTERM))
        let c = counts.withLock { $0 }
        print("dirty log, PIO loop: first window \(c.first ?? -1) pages (setup), second \(c.last ?? -1) pages over \(exits.withLock { $0 }) guest exits")
        #expect(c.count == 2)
        #expect(exits.withLock { $0 } > 100, "the guest did not run during the second window")
        #expect((0...Self.probeOwnPages).contains(c.first ?? -1))
        #expect(c.last == 0)
    }

    /// The VMM's sampler: with the guest writing its region over and over, the active-memory
    /// estimate is the region's size (plus at most the probe's own pages) once a window ended.
    @Test func activeMemoryEstimateIsTheWrittenWorkingSet() throws {
        var config = MachineConfig(boot: .probe(.dirty(passes: 0)), cpus: 1, memorySize: Self.memory, serial: .none)
        config.activeMemoryWindowSeconds = 1
        let machine = try Machine(config: config)
        #expect(machine.metrics().memory.activeStatus == "sampling")
        let seen = Mutex<MachineMetrics.Memory?>(nil)
        let stop = machine.stop
        let watcher = try HostThread(name: "test-active") {
            for _ in 0..<60 {
                usleep(100_000)
                let m = machine.metrics().memory
                if m.activeBytes != nil { seen.withLock { $0 = m }; break }
            }
            stop.request(.signal(SIGTERM))
        }
        _ = machine.run()
        watcher.join()
        let m = try #require(seen.withLock { $0 }, "no estimate within 6 s: \(machine.metrics().memory.activeStatus)")
        print("active memory estimate: \(m.activeBytes ?? 0) bytes, status \(m.activeStatus)")
        #expect(m.activeStatus == "ok")
        let pages = Int((m.activeBytes ?? 0) / DirtyLog.pageSize)
        #expect(pages >= Self.passPages && pages <= Self.passPages + Self.probeOwnPages)
        #expect(m.provisionedBytes == Self.memory)
    }

    @Test func offUnlessAskedFor() throws {
        let machine = try Machine(config: MachineConfig(boot: .probe(.pioLoop(iterations: 1)), cpus: 1, memorySize: Self.memory, serial: .none))
        #expect(machine.dirtyLog == nil)
        #expect(machine.metrics().memory.activeStatus == "off")
    }
}

/// A fetch KVM refuses (here: a slot mapped without KVM_MEM_LOG_DIRTY_PAGES, what a host that
/// refused the flag leaves behind) throws an error naming the call and the slot; the VMM turns
/// it into `active_status: "unavailable: ..."` instead of failing the VM.
@Suite(.enabled(if: KVMAvailability.available))
struct DirtyLogRefusalTests {
    @Test func fetchOnASlotWithoutLoggingNamesTheFailure() throws {
        let vm = try KVMSystem().createVM()
        let memory = try GuestMemory(layout: [(base: 0, size: 2 << 20)], options: GuestMemory.Options())
        let region = try #require(memory.regions.first)
        try vm.setMemoryRegion(slot: 0, guestAddress: 0, size: region.size, host: region.host)
        let log = DirtyLog(vm: vm, slots: [DirtyLog.Slot(slot: 0, guestBase: 0, size: region.size)])
        do {
            _ = try log.fetch()
            Issue.record("KVM_GET_DIRTY_LOG succeeded on a slot without dirty logging")
        } catch {
            print("refused fetch: \(error)")
            #expect("\(error)".contains("KVM_GET_DIRTY_LOG failed for slot 0"))
        }
    }
}

/// Manual dirty-log protection (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2): fetches only read, and
/// `rearm` clears exactly the pages it is given; the sampled active-memory estimate built on it.
@Suite(.serialized, .enabled(if: KVMAvailability.available))
struct ManualDirtyLogTests {
    static let memory = DirtyLogTests.memory
    static let passPages = DirtyLogTests.passPages
    static let own = DirtyLogTests.probeOwnPages

    @Test func fetchOnlyReadsAndRearmClearsExactlyTheGivenPages() throws {
        var config = MachineConfig(boot: .probe(.dirty(passes: 3)), cpus: 1, memorySize: Self.memory, serial: .none)
        config.trackDirtyPages = true
        config.activeMemorySampleOneIn = 2          // asks for manual protection (no sampler: no window)
        let logRef = Mutex<DirtyLog?>(nil)
        let counts = Mutex<[Int]>([])
        let failures = Mutex<[String]>([])
        let machine = try Machine(config: config, onProbePass: { pass in
            guard let log = logRef.withLock({ $0 }) else { return }
            do {
                let b = try log.fetch()
                counts.withLock { $0.append(b.dirtyPages) }
                if pass == 1 {
                    // Re-arm only the workload's region: the probe's own pages stay dirty.
                    try log.rearm(DirtyLog.Bitmap(slots: b.slots.map { s in
                        var region = s
                        for a in s.dirtyAddresses where a < ProbeGuest.dirtyStart {
                            let page = Int((a - s.slot.guestBase) / DirtyLog.pageSize)
                            region.words[page / 64] &= ~(UInt64(1) << UInt64(page % 64))
                        }
                        return region
                    }))
                } else if pass == 2 {
                    try log.rearm(b)                // everything that is dirty
                }
            } catch { failures.withLock { $0.append("\(error)") } }
        })
        let log = try #require(machine.dirtyLog, "KVM refused dirty logging: \(machine.dirtyLogUnavailable ?? "no reason")")
        #expect(log.manualProtect, "manual dirty-log protection was not enabled")
        logRef.withLock { $0 = log }
        #expect(machine.run() == .probeDone)
        #expect(failures.withLock { $0 }.isEmpty, "\(failures.withLock { $0 })")
        let c = counts.withLock { $0 }
        print("manual dirty log: after passes 1-3 \(c)")
        let n = Self.passPages, own = Self.own
        // Pass 1: region + the probe's pages. Pass 2: the probe's pages were not re-armed, so still
        // set. Pass 3: all were re-armed; only the region was written again.
        #expect(c.count == 3)
        #expect(c.first.map { $0 >= n && $0 <= n + own } == true)
        #expect(c.count == 3 && c[1] == c[0] && c[2] == n)
        // A fetch does not clear in manual mode: the same pages are still reported.
        #expect(try log.fetch().dirtyPages == n)
    }

    /// The sampler tracking a random 1/8 of the pages: the guest writes 3584 of the 4096 pages,
    /// so the scaled estimate lands near 3584 pages (the sample is random: +-10% allowed; the
    /// standard error here is about 1.5%). A guest that stores nothing reads 0.
    @Test func sampledEstimateScalesTheSampleToAllOfRAM() throws {
        for (workload, expected) in [(ProbeWorkload.dirty(passes: 0), Self.passPages), (.pioLoop(iterations: 1 << 40), 0)] {
            var config = MachineConfig(boot: .probe(workload), cpus: 1, memorySize: Self.memory, serial: .none)
            config.activeMemoryWindowSeconds = 1
            config.activeMemorySampleOneIn = 8
            let machine = try Machine(config: config)
            #expect(machine.dirtyLog?.manualProtect == true)
            #expect(machine.activeMemory?.sampleOneIn == 8)
            let seen = Mutex<MachineMetrics.Memory?>(nil)
            let stop = machine.stop
            let watcher = try HostThread(name: "test-sampled") {
                // The second window: the first may hold the probe's own start-up writes.
                for _ in 0..<80 {
                    usleep(100_000)
                    if (machine.activeMemory?.snapshot.windowsCompleted ?? 0) >= 2 { seen.withLock { $0 = machine.metrics().memory }; break }
                }
                stop.request(.signal(SIGTERM))
            }
            _ = machine.run()
            watcher.join()
            let m = try #require(seen.withLock { $0 }, "no second window within 8 s: \(machine.metrics().memory.activeStatus)")
            let pages = Int((m.activeBytes ?? UInt64.max) / DirtyLog.pageSize)
            print("sampled 1/8 estimate, \(workload): \(pages) pages (exact: \(expected)), status \(m.activeStatus)")
            #expect(m.activeStatus == "ok" && m.activeSampleOneIn == 8)
            #expect(abs(pages - expected) <= expected / 10)
        }
    }
}
