import Testing
import VireoSupport
import X86Boot

@Suite struct MemoryLayoutTests {
    let GiB = Fixtures.GiB

    @Test func ramRegions() {
        #expect(X86MemoryLayout.ramRegions(memorySize: 512 << 20).map { [$0.base, $0.size] } == [[0, 512 << 20]])
        #expect(X86MemoryLayout.ramRegions(memorySize: 3 * GiB).map { [$0.base, $0.size] } == [[0, 3 * GiB]])
        #expect(X86MemoryLayout.ramRegions(memorySize: 8 * GiB).map { [$0.base, $0.size] } == [[0, 3 * GiB], [4 * GiB, 5 * GiB]])
        #expect(X86MemoryLayout.ramRegions(memorySize: 0).isEmpty)
    }

    @Test func kvmPagesAreInTheHoleNotRAM() {
        for a in [X86MemoryLayout.identityMapAddress, X86MemoryLayout.tssAddress, X86MemoryLayout.ioapicAddress, X86MemoryLayout.lapicAddress] {
            #expect(a >= X86MemoryLayout.mmioHoleStart && a < X86MemoryLayout.mmioHoleEnd)
            #expect(!X86MemoryLayout.isRAM(address: a, size: 1, memorySize: 64 * GiB))
        }
        #expect(X86MemoryLayout.tssAddress + 3 * 4096 <= X86MemoryLayout.ioapicAddress || X86MemoryLayout.tssAddress > X86MemoryLayout.lapicAddress)
        #expect(X86MemoryLayout.identityMapAddress + 4096 == X86MemoryLayout.tssAddress)
    }

    @Test func validate() {
        #expect(Fixtures.error { try X86MemoryLayout.validate(memorySize: 512 << 20) } == nil)
        #expect(Fixtures.error { try X86MemoryLayout.validate(memorySize: 4095) }?.hint == "give --memory 128M or more")
        #expect(Fixtures.error { try X86MemoryLayout.validate(memorySize: (1 << 30) + 100) }?.code == .invalidArgument)
        #expect(Fixtures.error { try X86MemoryLayout.validate(memorySize: 1 << 50) }?.code == .outOfRange)
    }
}

@Suite struct E820Tests {
    @Test func smallGuest() {
        #expect(E820.map(memorySize: 512 << 20) == [
            E820Entry(address: 0, size: 0x9FC00, kind: .ram),
            E820Entry(address: 0x9FC00, size: 0x60400, kind: .reserved),
            E820Entry(address: 0x10_0000, size: (512 << 20) - 0x10_0000, kind: .ram),
        ])
    }

    @Test func largeGuestSplitsAroundTheHole() {
        let m = E820.map(memorySize: 6 << 30)
        #expect(m.count == 4)
        #expect(m[2] == E820Entry(address: 0x10_0000, size: 0xC000_0000 - 0x10_0000, kind: .ram))
        #expect(m[3] == E820Entry(address: 0x1_0000_0000, size: 3 << 30, kind: .ram))
        let ram = m.filter { $0.kind == .ram }.reduce(UInt64(0)) { $0 + $1.size }
        #expect(ram == (6 << 30) - 0x60400)
        // Nothing in the MMIO hole.
        #expect(!m.contains { $0.address < 0x1_0000_0000 && $0.end > 0xC000_0000 })
    }

    @Test func zeroPageTableForLargeGuest() throws {
        let k = try KernelImage.parse(bytes: Fixtures.bzImage())
        let p = try LinuxBoot.plan(kernel: k, config: BootConfig(memorySize: 6 << 30, cpuCount: 1, cmdline: ""))
        let zp = try #require(p.blobs.first { $0.label == "zero page" }?.bytes)
        #expect(zp.u8(0x1E8) == 4)
        #expect(zp.u64(0x2D0 + 3 * 20) == 0x1_0000_0000)
        #expect(zp.u64(0x2D0 + 3 * 20 + 8) == 3 << 30)
        #expect(zp.u32(0x2D0 + 3 * 20 + 16) == 1)
        #expect(p.e820 == E820.map(memorySize: 6 << 30))
    }
}

@Suite struct PageTablesTests {
    @Test func identityMapsFirstFourGiB() {
        let t = PageTables.build()
        #expect(t.count == 6 * 4096)
        #expect(t.u64(0) == 0xA000 | 3)                  // PML4[0] -> PDPT
        for i in 0..<4 { #expect(t.u64(0x1000 + i * 8) == UInt64(0xB000 + i * 0x1000) | 3) }
        #expect(t.u64(0x1000 + 4 * 8) == 0)              // nothing above 4 GiB
        #expect(t.u64(0x2000) == 0x83)                   // PD[0][0]: 2 MiB page at 0, P|RW|PS
        #expect(t.u64(0x2000 + 511 * 8) == (511 << 21) | 0x83)
        for a: UInt64 in [0, 0x7000, 0x10_0200, 0x100_0000, 0x1234_5678, 0xBFFF_FFFF, 0xFEC0_0000, 0xFFFF_FFFF] {
            #expect(PageTables.translate(a, tables: t) == a)
        }
        #expect(PageTables.translate(0x1_0000_0000, tables: t) == nil)
        #expect(PageTables.translate(0xFFFF_FFFF_8100_0000, tables: t) == nil)
    }
}

@Suite struct GDTTests {
    @Test func descriptorsDecodeToTheSegmentRegisters() {
        let g64 = BootGDT.bytes(longMode: true)
        #expect(g64.count == 48)
        #expect(g64.u64(0) == 0 && g64.u64(8) == 0)
        #expect(g64.u64(0x10) == 0x00AF_9B00_0000_FFFF)
        #expect(g64.u64(0x18) == 0x00CF_9300_0000_FFFF)
        #expect(g64.u64(0x20) == 0x0000_8B00_0000_0067)
        #expect(g64.u64(0x28) == 0)                      // upper half of the 16-byte TSS descriptor
        let s = BootGDT.segments(longMode: true)
        #expect(s.code == SegmentRegister(base: 0, limit: 0xFFFF_FFFF, selector: 0x10, type: 0xB, present: true,
                                           dpl: 0, db: false, s: true, l: true, g: true))
        #expect(s.data == SegmentRegister(base: 0, limit: 0xFFFF_FFFF, selector: 0x18, type: 0x3, present: true,
                                           dpl: 0, db: true, s: true, l: false, g: true))
        #expect(s.tss == SegmentRegister(base: 0, limit: 0x67, selector: 0x20, type: 0xB, present: true,
                                          dpl: 0, db: false, s: false, l: false, g: false))
        let s32 = BootGDT.segments(longMode: false)
        #expect(s32.code.db && !s32.code.l && s32.code.limit == 0xFFFF_FFFF)
        #expect(BootGDT.bytes(longMode: false).u64(0x10) == 0x00CF_9B00_0000_FFFF)
        // Each selector indexes the descriptor it names.
        for (sel, d) in [(s.code.selector, BootGDT.code64Descriptor), (s.data.selector, BootGDT.dataDescriptor), (s.tss.selector, BootGDT.tssDescriptor)] {
            #expect(g64.u64(Int(sel)) == d)
        }
    }
}

@Suite struct CommandLineTests {
    @Test func acceptsPrintableASCII() throws {
        #expect(try KernelCommandLine.encode("console=ttyS0 root=/dev/vda rw", maxLength: 100) == Array("console=ttyS0 root=/dev/vda rw".utf8) + [0])
        #expect(try KernelCommandLine.encode("", maxLength: 0) == [0])
    }

    @Test func rejectsBadBytes() {
        for (s, what) in [("a\u{0}b", "NUL"), ("a\nb", "control"), ("a\tb", "control"), ("caf\u{e9}", "non-ASCII")] {
            let e = Fixtures.error { try KernelCommandLine.validate(s) }
            #expect(e?.code == .invalidArgument)
            #expect(e?.message.contains(what) == true, "\(s)")
        }
        let e = Fixtures.error { try KernelCommandLine.validate(String(repeating: "x", count: 2048)) }
        #expect(e?.message == "kernel command line is 2048 bytes; this kernel accepts at most 2047")
        #expect(e?.hint == "shorten --cmdline")
    }
}
