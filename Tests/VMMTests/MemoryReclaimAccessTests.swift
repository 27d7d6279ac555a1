import Foundation
import Synchronization
import Testing
import VMM
import VireoSupport
import VireoTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Released guest pages come back for every kind of access, not only the guest's own (which
/// MemoryReclaimRunTests checks): a VMM thread reading guest RAM the way a device model reads a
/// virtqueue, and the kernel copying out of guest RAM in a system call (write(2) from a guest
/// buffer, as a disk back end does). All of them fault through userfaultfd.
@Suite(.serialized, .enabled(if: VireoBinary.hasKVM))
struct MemoryReclaimAccessTests {
    @Test func vmmThreadsAndTheKernelReadReleasedPagesIntact() throws {
        // No active-memory sampler: every resident page is a candidate (address order).
        let config = MachineConfig(boot: .probe(.pattern(mode: .compressible, hotBytes: 0)), cpus: 1, memorySize: 32 << 20, serial: .none)
        let machine = try Machine(config: config)
        let done = Mutex<Bool>(false)
        let thread = Thread { _ = machine.run(); done.withLock { $0 = true } }
        thread.start()
        defer {
            machine.stop.request(.signal(SIGTERM))
            machine.pauseGate.resume()
            while !done.withLock({ $0 }) { usleep(1000) }
        }
        for _ in 0..<600 where !machine.probePatternFilled { usleep(50_000) }
        try #require(machine.probePatternFilled)
        let start: UInt64 = 0x20_0000, length: UInt64 = 16 << 20

        // A VMM thread reads every word of 16 MiB of released RAM.
        #expect(try machine.reclaim(bytes: 30 << 20) >= 24 << 20)
        let before = machine.reclaimFaultins
        var wrong = 0
        for gpa in stride(from: start, to: start + length, by: 8) where try machine.memory.read(UInt64.self, at: gpa) != gpa { wrong += 1 }
        #expect(wrong == 0)
        // The handler counts a fault-in just after the page is mapped (and the reader woken).
        for _ in 0..<100 where machine.reclaimFaultins - before < length / 4096 { usleep(10_000) }
        #expect(machine.reclaimFaultins - before >= length / 4096)

        // The kernel reads released RAM inside write(2).
        #expect(try machine.reclaim(bytes: 30 << 20) >= 16 << 20)
        let path = "/tmp/vireo-reclaim-access-\(getpid())"
        defer { unlink(path) }
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        try #require(fd >= 0)
        defer { close(fd) }
        let view = try machine.memory.buffer(at: start, count: length)
        let faults = machine.reclaimFaultins
        var off = 0
        while off < view.count {
            let n = write(fd, view.baseAddress.map { $0 + off }, view.count - off)
            try #require(n > 0)
            off += n
        }
        for _ in 0..<100 where machine.reclaimFaultins - faults < length / 4096 { usleep(10_000) }
        #expect(machine.reclaimFaultins - faults >= length / 4096)
        let bytes = try OwnedFD.readFile(path, limit: length + 1, what: "the copy")
        #expect(bytes.count == Int(length))
        var bad = 0
        bytes.withUnsafeBytes { b in
            for i in stride(from: 0, to: b.count, by: 8) where b.loadUnaligned(fromByteOffset: i, as: UInt64.self) != start + UInt64(i) { bad += 1 }
        }
        #expect(bad == 0)
    }
}
