import Foundation
import GuestMemory
import KVM
import Synchronization
import Testing
import VMM
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// Snapshots of running machines (probe guest, this host's KVM): a machine paused mid-run,
/// saved and restored continues exactly where it was (its registers: it finishes after the
/// remaining passes; its RAM: every page counter ends at the total); bad snapshot files are
/// refused before anything runs.
@Suite(.serialized, .enabled(if: KVMAvailability.available))
struct SnapshotTests {
    static let memory: UInt64 = 16 << 20
    static let total: UInt64 = 40

    func tempDir() -> String {
        let d = "/tmp/vireo-snap-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(d, 0o700)
        return d
    }

    /// Runs dirty(total) until `atLeast` passes, pauses, snapshots into `dir`, stops. `total`
    /// leaves the pause time to land before the guest finishes (a pass of 16 MiB takes a few
    /// ms; two vCPUs count two passes per round).
    func snapshotMidway(_ dir: String, atLeast: UInt64, cpus: Int = 1, total: UInt64 = SnapshotTests.total) throws -> (passes: UInt64, stats: SnapshotStats) {
        let passes = Atomic<UInt64>(0)
        let machine = try Machine(config: MachineConfig(boot: .probe(.dirty(passes: total)), cpus: cpus, memorySize: Self.memory, serial: .none),
                                  onProbePass: { n in passes.store(n, ordering: .relaxed) })
        let done = Mutex<MachineExit?>(nil)
        let thread = Thread { done.withLock { $0 = machine.run() } }
        thread.start()
        while passes.load(ordering: .relaxed) < atLeast { usleep(100) }
        #expect(machine.pauseGate.pause(vcpus: machine.vcpus, stop: machine.stop))
        let at = passes.load(ordering: .relaxed)
        let stats = try machine.writeSnapshot(to: dir)
        machine.stop.request(.signal(SIGTERM))
        machine.pauseGate.resume()
        while done.withLock({ $0 }) == nil { usleep(1000) }
        return (at, stats)
    }

    @Test func aRestoredMachineContinuesWhereItWasSaved() throws {
        let dir = tempDir()
        defer { _ = system("rm -rf \(dir)") }
        let (at, stats) = try snapshotMidway(dir, atLeast: 5)
        #expect(at >= 5 && at < Self.total, "the snapshot was taken at pass \(at)")
        print("snapshot at pass \(at): \(stats.stateBytes) bytes of state, \(stats.pagesWritten) of \(stats.memoryBytes / 4096) pages written")
        // The dirtied region (2 MiB to the end) is in the file; most of the first 2 MiB is holes.
        #expect(stats.pagesWritten >= (Self.memory - ProbeGuest.dirtyStart) / 4096)
        #expect(stats.pagesWritten < Self.memory / 4096)

        let source = try RestoreSource.load(dir)
        let passes = Mutex<[UInt64]>([])
        let restored = try Machine(config: try source.machineConfig(serial: .none), onProbePass: { n in passes.withLock { $0.append(n) } },
                                   restoring: source)
        #expect(restored.run() == .probeDone)
        let seen = passes.withLock { $0 }
        // The pass counter continues from the snapshot's, and the guest ran exactly the passes it had left.
        #expect(seen.first == at + 1 && seen.last == Self.total, "passes after restore: \(seen.prefix(3))...\(seen.suffix(2))")
        // Every page of the region was incremented once per pass, before and after the snapshot.
        for gpa in stride(from: ProbeGuest.dirtyStart, to: Self.memory, by: 4096 * 97) {
            #expect(try restored.memory.read(UInt64.self, at: gpa) == Self.total, "page \(hex(gpa))")
        }
    }

    @Test func twoVCPUsAndTwoRestoresFromOneSnapshot() throws {
        let dir = tempDir()
        defer { _ = system("rm -rf \(dir)") }
        // 400 passes: the 40 of the other tests were sometimes all done before the pause landed
        // on a loaded host (two vCPUs, a few ms a pass).
        _ = try snapshotMidway(dir, atLeast: 3, cpus: 2, total: 400)
        let source = try RestoreSource.load(dir)
        #expect(source.snapshot.vcpus.count == 2 && source.snapshot.cpus == 2)
        // Two machines from the same files at once: copy-on-write, neither sees the other's writes.
        let a = try Machine(config: try source.machineConfig(serial: .none), restoring: source)
        let b = try Machine(config: try source.machineConfig(serial: .none), restoring: source)
        #expect(a.run() == .probeDone)
        #expect(b.run() == .probeDone)
        let va = try a.memory.read(UInt64.self, at: ProbeGuest.dirtyStart)
        let vb = try b.memory.read(UInt64.self, at: ProbeGuest.dirtyStart)
        // Both vCPUs increment every page each pass (racing: updates may be lost, so no exact count).
        #expect(va >= 3 && vb >= 3)
    }

    @Test func badSnapshotsAreRefusedBeforeAnythingRuns() throws {
        let dir = tempDir()
        defer { _ = system("rm -rf \(dir)") }
        _ = try snapshotMidway(dir, atLeast: 2)
        let statePath = dir + "/state.vsnap"
        let good = try OwnedFD.readFile(statePath, limit: 1 << 26, what: "state")
        func expectRefused(_ bytes: [UInt8], _ words: String) throws {
            _ = try? FileManager.default.removeItem(atPath: statePath)
            FileManager.default.createFile(atPath: statePath, contents: Data(bytes))
            #expect { _ = try RestoreSource.load(dir) } throws: { e in
                "\(e)".contains(words)
            }
        }
        try expectRefused(Array(good.prefix(10)), "truncated")
        try expectRefused(Array(good.dropLast(1)), "truncated")
        var flipped = good
        flipped[good.count / 2] ^= 0x40
        try expectRefused(flipped, "CRC-32")
        var newer = good
        newer[8] = 99
        try expectRefused(newer, "format 99")
        var notOurs = good
        notOurs[0] = UInt8(ascii: "X")
        try expectRefused(notOurs, "not a Vireo snapshot")
        // A memory file shorter than the machine's RAM is refused when mapping, not run.
        FileManager.default.createFile(atPath: statePath, contents: Data(good))
        #expect(truncate(dir + "/memory.bin", 4096) == 0)
        let source = try RestoreSource.load(dir)
        #expect { _ = try Machine(config: try source.machineConfig(serial: .none), restoring: source) } throws: { e in
            "\(e)".contains("shorter")
        }
    }

    @Test func kvmBlobsRoundTripAndRefuseOtherSizes() throws {
        let b = KVMBlob(bytes: (0..<255).map { UInt8($0) })
        let json = try JSONEncoder().encode(b)
        #expect(try JSONDecoder().decode(KVMBlob.self, from: json) == b)
        for n in 0..<8 { #expect(Base64.decode(Base64.encode(Array(repeating: 0xA5, count: n))) == Array(repeating: 0xA5, count: n)) }
        #expect(Base64.decode("a===") == nil && Base64.decode("abc") == nil && Base64.decode("ab=c") == nil)
        #expect(throws: VireoError.self) { _ = try KVMBlob(bytes: [1, 2, 3]).load(as: UInt64.self, initial: 0, what: "x") }
    }
}
