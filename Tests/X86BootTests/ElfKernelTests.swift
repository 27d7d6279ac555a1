import Testing
import VireoSupport
import X86Boot

@Suite struct ElfKernelTests {
    @Test func parsesSegmentsEntryAndPVHNote() throws {
        guard case .elf(let k) = try KernelImage.parse(bytes: Fixtures.vmlinux()) else { Issue.record("not ELF"); return }
        #expect(k.segments == [
            KernelSegment(guestAddress: 0x100_0000, fileOffset: 0x1000, fileSize: 0x3000, memorySize: 0x3000),
            KernelSegment(guestAddress: 0x120_0000, fileOffset: 0x4000, fileSize: 0x1000, memorySize: 0x10_0000),
        ])
        #expect(k.entry64 == 0x100_0000)
        #expect(k.pvhEntry == 0x100_0850)
        #expect(k.memoryEnd == 0x130_0000)
    }

    @Test func fourBytePVHNote() throws {
        guard case .elf(let k) = try KernelImage.parse(bytes: Fixtures.vmlinux(pvhDescSize: 4)) else { Issue.record("not ELF"); return }
        #expect(k.pvhEntry == 0x100_0850)
    }

    @Test func noPVHNote() throws {
        guard case .elf(let k) = try KernelImage.parse(bytes: Fixtures.vmlinux(pvhEntry: nil)) else { Issue.record("not ELF"); return }
        #expect(k.pvhEntry == nil)
    }

    @Test func virtualEntryIsTranslated() throws {
        guard case .elf(let k) = try KernelImage.parse(bytes: Fixtures.vmlinux(entry: 0xFFFF_FFFF_8100_0040)) else { Issue.record("not ELF"); return }
        #expect(k.entry64 == 0x100_0040)
    }

    @Test func rejectsEntryOutsideSegments() {
        let e = Fixtures.error { _ = try KernelImage.parse(bytes: Fixtures.vmlinux(entry: 0x5000_0000)) }
        #expect(e?.code == .corrupt)
    }

    @Test func rejectsBadMagicClassAndMachine() {
        var bad = Fixtures.vmlinux()
        bad[1] = 0x46
        // Not ELF, and not a bzImage either.
        #expect(Fixtures.error { _ = try KernelImage.parse(bytes: bad) }?.code == .invalidArgument)
        #expect(Fixtures.error { _ = try KernelImage.parse(bytes: Fixtures.vmlinux(elfClass: 1)) }?.code == .unsupported)
        #expect(Fixtures.error { _ = try KernelImage.parse(bytes: Fixtures.vmlinux(machine: 3)) }?.code == .unsupported)
    }

    @Test func rejectsTruncation() {
        let full = Fixtures.vmlinux()
        for cut in [10, 63, 100, 0x2000, full.count - 1] {
            let e = Fixtures.error { _ = try KernelImage.parse(bytes: Array(full.prefix(cut))) }
            #expect(e?.code == .corrupt, "cut at \(cut)")
        }
    }

    @Test func rejectsHugeAndOverflowingSegments() {
        let huge = Fixtures.Segment(offset: 0x1000, vaddr: 0, paddr: 0x200_0000, filesz: UInt64.max - 0x10, memsz: UInt64.max)
        #expect(Fixtures.error { _ = try KernelImage.parse(bytes: Fixtures.vmlinux(extraSegments: [huge])) }?.code == .corrupt)
        let wrap = Fixtures.Segment(offset: 0x1000, vaddr: 0, paddr: UInt64.max - 0x100, filesz: 0x10, memsz: 0x1000)
        #expect(Fixtures.error { _ = try KernelImage.parse(bytes: Fixtures.vmlinux(extraSegments: [wrap])) }?.code == .corrupt)
        let fileBigger = Fixtures.Segment(offset: 0x1000, vaddr: 0, paddr: 0x200_0000, filesz: 0x2000, memsz: 0x1000)
        #expect(Fixtures.error { _ = try KernelImage.parse(bytes: Fixtures.vmlinux(extraSegments: [fileBigger])) }?.code == .corrupt)
        #expect(Fixtures.error { _ = try KernelImage.parse(bytes: Fixtures.vmlinux(phnumOverride: 0xFFFF)) }?.code == .corrupt)
    }

    @Test func rejectsSegmentsOutsideRAM() throws {
        let high = Fixtures.Segment(offset: 0x1000, vaddr: 0, paddr: 0x4000_0000, filesz: 0x1000, memsz: 0x1000)
        let k = try KernelImage.parse(bytes: Fixtures.vmlinux(extraSegments: [high]), name: "/v")
        let e = Fixtures.error { _ = try LinuxBoot.plan(kernel: k, config: BootConfig(memorySize: 512 * Fixtures.MiB, cpuCount: 1, cmdline: "")) }
        #expect(e?.code == .outOfRange)
        #expect(e?.message.contains("outside the 512 MiB of guest RAM") == true)
        #expect(e?.hint == "give --memory 2G or more")

        let inHole = Fixtures.Segment(offset: 0x1000, vaddr: 0, paddr: 0xD000_0000, filesz: 0x1000, memsz: 0x1000)
        let k2 = try KernelImage.parse(bytes: Fixtures.vmlinux(extraSegments: [inHole]))
        #expect(Fixtures.error { _ = try LinuxBoot.plan(kernel: k2, config: BootConfig(memorySize: 8 * Fixtures.GiB, cpuCount: 1, cmdline: "")) }?.code == .outOfRange)

        let low = Fixtures.Segment(offset: 0x1000, vaddr: 0, paddr: 0x7000, filesz: 0x1000, memsz: 0x1000)
        let k3 = try KernelImage.parse(bytes: Fixtures.vmlinux(extraSegments: [low]))
        #expect(Fixtures.error { _ = try LinuxBoot.plan(kernel: k3, config: BootConfig(memorySize: 512 * Fixtures.MiB, cpuCount: 1, cmdline: "")) }?.code == .unsupported)
    }

    @Test func rejectsMalformedNotes() {
        var f = Fixtures.vmlinux()
        // The first note's namesz (at the note segment's start, 0x5000) claims 4 GiB.
        f.put(UInt32.max, 0x5000)
        #expect(Fixtures.error { _ = try KernelImage.parse(bytes: f) }?.code == .corrupt)
        // A PVH note with a 64-bit address above 4 GiB.
        #expect(Fixtures.error { _ = try KernelImage.parse(bytes: Fixtures.vmlinux(pvhEntry: 0x1_0000_0000)) }?.code == .corrupt)
    }
}
