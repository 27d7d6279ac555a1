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
