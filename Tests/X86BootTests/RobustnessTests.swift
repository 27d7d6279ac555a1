import Foundation
import Testing
import VireoTestSupport
import VireoSupport
import X86Boot

/// Untrusted kernel images: corrupted at random, they must be refused with a VireoError or
/// planned consistently, never trap.
@Suite struct RobustnessTests {
    func mutate(_ base: [UInt8], hot: Range<Int>, rng: inout SplitMix) -> [UInt8] {
        var b = base
        for _ in 0..<(1 + rng.below(6)) {
            let i = rng.below(4) == 0 ? rng.below(b.count) : hot.lowerBound + rng.below(hot.count)
            switch rng.below(4) {
            case 0: b[i] = 0xFF
            case 1: b[i] = 0
            default: b[i] = UInt8(truncatingIfNeeded: rng.next())
            }
        }
        if rng.below(8) == 0 { b = Array(b.prefix(rng.below(b.count))) }
        return b
    }

    func exercise(_ bytes: [UInt8]) {
        do {
            let k = try KernelImage.parse(bytes: bytes, name: "fuzz")
            for memory: UInt64 in [64 << 20, 512 << 20, 5 << 30] {
                let plan = try? LinuxBoot.plan(kernel: k, config: BootConfig(memorySize: memory, cpuCount: 2, cmdline: "console=ttyS0", initrdSize: 1 << 20))
                if let plan {
                    for s in plan.kernelSegments {
                        #expect(X86MemoryLayout.isRAM(address: s.guestAddress, size: s.memorySize, memorySize: memory))
                        #expect(s.fileOffset + s.fileSize <= UInt64(bytes.count))
                    }
                }
            }
        } catch is VireoError {
        } catch {
            Issue.record("non-Vireo error \(error)")
        }
    }

    @Test func corruptedBzImages() {
        var rng = SplitMix(seed: 1)
        let base = Fixtures.bzImage(payload: 512)
        for _ in 0..<1500 { exercise(mutate(base, hot: 0x1F1..<0x270, rng: &rng)) }
    }

    @Test func corruptedVmlinux() {
        var rng = SplitMix(seed: 2)
        let base = Fixtures.vmlinux()
        for _ in 0..<1500 { exercise(mutate(base, hot: 0..<(64 + 3 * 56), rng: &rng)) }
        for _ in 0..<500 { exercise(mutate(base, hot: 0x5000..<base.count, rng: &rng)) }   // the notes
    }
}

@Suite struct KernelFileTests {
    func temporary(_ bytes: [UInt8]) throws -> String {
        let path = NSTemporaryDirectory() + "vireo-x86boot-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    @Test func plansFromAFileOnDisk() throws {
        for bytes in [Fixtures.bzImage(payload: 100_000), Fixtures.vmlinux()] {
            let path = try temporary(bytes)
            defer { unlink(path) }
            let fromDisk = try LinuxBoot.plan(kernelPath: path, config: BootConfig(memorySize: 256 << 20, cpuCount: 1, cmdline: ""))
            let fromMemory = try LinuxBoot.plan(kernel: KernelImage.parse(bytes: bytes, name: path),
                                                config: BootConfig(memorySize: 256 << 20, cpuCount: 1, cmdline: ""))
            #expect(fromDisk == fromMemory)
        }
    }

    @Test func missingAndNonRegularFiles() {
        #expect(Fixtures.error { _ = try KernelImage.load(path: "/nonexistent/vmlinuz") }?.code == .notFound)
        #expect(Fixtures.error { _ = try KernelImage.load(path: NSTemporaryDirectory()) }?.code == .invalidArgument)
    }

    @Test func readBeyondEndIsCorrupt() throws {
        let f = KernelFile(bytes: [1, 2, 3], name: "tiny")
        #expect(try f.read(offset: 1, count: 2, what: "x") == [2, 3])
        #expect(Fixtures.error { _ = try f.read(offset: 2, count: 2, what: "x") }?.code == .corrupt)
        #expect(Fixtures.error { _ = try f.read(offset: UInt64.max, count: 2, what: "x") }?.code == .corrupt)
    }
}
