import Testing
import VireoSupport
import X86Boot

/// The plan for a bzImage, checked byte by byte against the boot protocol's documented offsets.
@Suite struct LinuxBootBzImageTests {
    let MiB = Fixtures.MiB
    let image = Fixtures.bzImage(setupSects: 4, payload: 8192)

    func plan(memory: UInt64 = 512 << 20, cpus: Int = 2, cmdline: String = "console=ttyS0 quiet",
              initrd: UInt64? = nil) throws -> BootPlan {
        try LinuxBoot.plan(kernel: KernelImage.parse(bytes: image, name: "/k"),
                           config: BootConfig(memorySize: memory, cpuCount: cpus, cmdline: cmdline, initrdSize: initrd))
    }

    func blob(_ plan: BootPlan, at address: UInt64) -> [UInt8]? {
        plan.blobs.first { $0.address == address }?.bytes
    }

    @Test func zeroPageFields() throws {
        let p = try plan(initrd: 3 << 20)
        let zp = try #require(blob(p, at: 0x7000))
        #expect(zp.count == 4096)
        // Setup header copied from the image at 0x1F1..0x26C.
        #expect(zp.u8(0x1F1) == 4)                       // setup_sects
        #expect(zp.u16(0x1FE) == 0xAA55)                 // boot_flag
        #expect(zp.u32(0x202) == 0x5372_6448)            // "HdrS"
        #expect(zp.u16(0x206) == 0x020F)                 // version
        #expect(zp.u32(0x214) == 0x10_0000)              // code32_start
        #expect(zp.u32(0x22C) == 0x7FFF_FFFF)            // initrd_addr_max
        #expect(zp.u16(0x236) == 0x7F)                   // xloadflags
        #expect(zp.u32(0x238) == 0x7FF)                  // cmdline_size
        // Loader-written fields.
        #expect(zp.u8(0x210) == 0xFF)                    // type_of_loader
        #expect(zp.u8(0x211) & 0x80 == 0x80)             // loadflags CAN_USE_HEAP
        #expect(zp.u8(0x211) & 0x01 == 0x01)             // LOADED_HIGH
        #expect(zp.u16(0x224) == 0xFE00)                 // heap_end_ptr
        #expect(zp.u32(0x228) == 0x2_0000)               // cmd_line_ptr
        let initrd = try #require(p.initrdAddress)
        #expect(zp.u32(0x218) == UInt32(initrd))         // ramdisk_image
        #expect(zp.u32(0x21C) == 3 << 20)                // ramdisk_size
        // e820 at 0x1E8 / 0x2D0.
        #expect(zp.u8(0x1E8) == 3)
        let expected: [(UInt64, UInt64, UInt32)] = [(0, 0x9FC00, 1), (0x9FC00, 0x100000 - 0x9FC00, 2), (0x100000, (512 << 20) - 0x100000, 1)]
        for (i, e) in expected.enumerated() {
            let o = 0x2D0 + i * 20
            #expect(zp.u64(o) == e.0); #expect(zp.u64(o + 8) == e.1); #expect(zp.u32(o + 16) == e.2)
        }
        #expect(zp.u64(0x2D0 + 3 * 20) == 0)             // nothing past the entries
        // Outside the header, the e820 table and acpi_rsdp_addr the page stays zero (no stray bytes).
        #expect(zp.u64(0x070) == 0xE_0000)               // acpi_rsdp_addr: the RSDP
        #expect(zp[0..<0x070].allSatisfy { $0 == 0 })
        #expect(zp[0x078..<0x1E8].allSatisfy { $0 == 0 })
        #expect(zp[(0x2D0 + 3 * 20)...].allSatisfy { $0 == 0 })
    }

    @Test func commandLineBlob() throws {
        let p = try plan(cmdline: "console=ttyS0 quiet")
        let c = try #require(blob(p, at: 0x2_0000))
        #expect(c == Array("console=ttyS0 quiet".utf8) + [0])
    }

    @Test func commandLineLimitComesFromHeader() throws {
        let small = Fixtures.bzImage(cmdlineSize: 16)
        let k = try KernelImage.parse(bytes: small)
        _ = try LinuxBoot.plan(kernel: k, config: BootConfig(memorySize: 256 * MiB, cpuCount: 1, cmdline: String(repeating: "a", count: 16)))
        let e = Fixtures.error { _ = try LinuxBoot.plan(kernel: k, config: BootConfig(memorySize: 256 * MiB, cpuCount: 1, cmdline: String(repeating: "a", count: 17))) }
        #expect(e?.code == .invalidArgument)
        #expect(e?.message == "kernel command line is 17 bytes; this kernel accepts at most 16")
    }

    @Test func kernelSegmentAndEntry() throws {
        let p = try plan()
        #expect(p.kernelSegments == [KernelSegment(guestAddress: 0x10_0000, fileOffset: 2560, fileSize: 8192, memorySize: 8192)])
        #expect(p.entry == .linux64(rip: 0x10_0200))
    }

    @Test func longModeRegisters() throws {
        let s = try plan().bsp
        #expect(s.rip == 0x10_0200)
        #expect(s.rsi == 0x7000)
        #expect(s.rflags == 0x2)
        #expect(s.cr0 & 0x8000_0001 == 0x8000_0001)      // PG | PE
        #expect(s.cr4 & 0x20 == 0x20)                    // PAE
        #expect(s.efer & 0x500 == 0x500)                 // LME | LMA
        #expect(s.cr3 == 0x9000)
        // boot.rst: CS = __BOOT_CS (0x10), DS/ES/SS = __BOOT_DS (0x18), flat 4 GiB.
        #expect(s.cs.selector == 0x10 && s.cs.l && !s.cs.db && s.cs.present && s.cs.s && s.cs.type == 0xB)
        for d in [s.ds, s.es, s.ss] {
            #expect(d.selector == 0x18 && d.base == 0 && d.limit == 0xFFFF_FFFF && d.type == 0x3 && d.present && d.s)
        }
        #expect(s.tr.selector == 0x20 && s.tr.type == 0xB && s.tr.present && !s.tr.s)
        #expect(s.ldt.unusable)
        #expect(s.gdt.base == 0x500)
        #expect(s.gdt.limit == 47)
        #expect(s.rsp == 0x8FF0)
    }

    @Test func pageTablesAndGDTBlobs() throws {
        let p = try plan()
        let pt = try #require(blob(p, at: 0x9000))
        #expect(PageTables.translate(0x10_0200, tables: pt) == 0x10_0200)
        let gdt = try #require(blob(p, at: 0x500))
        #expect(gdt.u64(0x10) == BootGDT.code64Descriptor)
        #expect(gdt.u64(0x18) == BootGDT.dataDescriptor)
    }

    @Test func initrdAtTopOfLowMemoryBelowAddrMax() throws {
        // 512 MiB RAM, addr max 2 GiB: the initrd ends at the end of RAM, page aligned.
        let p = try plan(memory: 512 * MiB, initrd: 1_000_000)
        let a = try #require(p.initrdAddress)
        #expect(a % 4096 == 0)
        #expect(a + 1_000_000 <= 512 * MiB)
        #expect(512 * MiB - (a + 1_000_000) < 4096)
        // 8 GiB RAM: capped by initrd_addr_max (0x7FFFFFFF) rather than the 3 GiB low-memory end.
        let big = try plan(memory: 8 << 30, initrd: 16 * MiB)
        #expect(big.initrdAddress == 0x8000_0000 - 16 * MiB)
    }

    @Test func initrdThatDoesNotFit() throws {
        let e = Fixtures.error { _ = try plan(memory: 512 * MiB, initrd: 900 * MiB) }
        #expect(e?.code == .outOfRange)
        #expect(e?.message.contains("initrd of 900 MiB does not fit") == true)
        #expect(e?.hint == "give --memory 1G or more")
        #expect(Fixtures.error { _ = try plan(initrd: 0) }?.code == .invalidArgument)
        #expect(Fixtures.error { _ = try plan(memory: 8 << 30, initrd: 3 << 30) }?.hint?.contains("smaller initrd") == true)
    }

    @Test func blobsDoNotOverlapAndLieInRAM() throws {
        for cpus in [1, 2, 64, 254] {
            let p = try plan(cpus: cpus, initrd: 1 << 20)
            var ranges = p.blobs.map { ($0.address, $0.end) }
            ranges += p.kernelSegments.map { ($0.guestAddress, $0.guestEnd) }
            ranges.append((p.initrdAddress ?? 0, (p.initrdAddress ?? 0) + (1 << 20)))
            ranges.sort { $0.0 < $1.0 }
            for (a, b) in zip(ranges, ranges.dropFirst()) { #expect(a.1 <= b.0) }
        }
    }

    @Test func rejectsBadConfig() {
        #expect(Fixtures.error { _ = try plan(cpus: 0) }?.code == .invalidArgument)
        #expect(Fixtures.error { _ = try plan(cpus: 255) }?.code == .invalidArgument)
        #expect(Fixtures.error { _ = try plan(memory: 1 << 20) }?.code == .invalidArgument)
        #expect(Fixtures.error { _ = try plan(memory: (512 << 20) + 1) }?.code == .invalidArgument)
        #expect(Fixtures.error { _ = try plan(memory: UInt64.max) } != nil)
        #expect(Fixtures.error { _ = try plan(cmdline: "root=/dev/vda\u{0}x") }?.code == .invalidArgument)
    }
}

/// The plan for an ELF vmlinux: PVH by default, startup_64 with a synthesised zero page otherwise.
@Suite struct LinuxBootElfTests {
    let MiB = Fixtures.MiB

    @Test func pvhPlan() throws {
        let k = try KernelImage.parse(bytes: Fixtures.vmlinux())
        let p = try LinuxBoot.plan(kernel: k, config: BootConfig(memorySize: 256 * MiB, cpuCount: 2, cmdline: "console=ttyS0", initrdSize: 4096))
        #expect(p.entry == .pvh(eip: 0x100_0850))
        let s = p.bsp
        #expect(s.rip == 0x100_0850)
        #expect(s.rbx == 0x6000)
        #expect(s.cr0 & 1 == 1 && s.cr0 & (1 << 31) == 0)   // PE, no paging
        #expect(s.cr4 == 0 && s.efer == 0)
        #expect(s.rflags == 0x2)
        #expect(s.cs.db && !s.cs.l && s.cs.base == 0 && s.cs.limit == 0xFFFF_FFFF && s.cs.type == 0xB)
        #expect(s.ds.db && s.ds.limit == 0xFFFF_FFFF && s.ds.type == 0x3)
        #expect(s.tr.limit == 0x67 && s.tr.type == 0xB)
        #expect(!p.blobs.contains { $0.address == 0x9000 })  // no page tables in PVH
        #expect(!p.blobs.contains { $0.address == 0x7000 })  // no zero page either
        let gdt = try #require(p.blobs.first { $0.address == 0x500 }?.bytes)
        #expect(gdt.u64(0x10) == BootGDT.code32Descriptor)

        let si = try #require(p.blobs.first { $0.address == 0x6000 }?.bytes)
        #expect(si.u32(0) == 0x336E_C578)
        #expect(si.u32(4) == 1)
        #expect(si.u32(12) == 1)                          // nr_modules
        #expect(si.u64(24) == 0x2_0000)                   // cmdline_paddr
        #expect(si.u64(32) == 0xE_0000)                   // rsdp_paddr: the RSDP
        let modlist = Int(si.u64(16) - 0x6000)
        #expect(si.u64(modlist) == p.initrdAddress)
        #expect(si.u64(modlist + 8) == 4096)
        let memmap = Int(si.u64(40) - 0x6000)
        #expect(si.u32(48) == 3)
        #expect(si.u64(memmap) == 0 && si.u64(memmap + 8) == 0x9FC00 && si.u32(memmap + 16) == 1)
        #expect(si.u64(memmap + 24) == 0x9FC00 && si.u32(memmap + 40) == 2)
        #expect(si.u64(memmap + 48) == 0x10_0000 && si.u64(memmap + 56) == 255 * MiB && si.u32(memmap + 64) == 1)
        #expect(p.initrdAddress == 256 * MiB - 4096)
    }

    @Test func sixtyFourBitEntryWhenNoNoteOrNotPreferred() throws {
        for (bytes, prefer) in [(Fixtures.vmlinux(pvhEntry: nil), true), (Fixtures.vmlinux(), false)] {
            let k = try KernelImage.parse(bytes: bytes)
            let p = try LinuxBoot.plan(kernel: k, config: BootConfig(memorySize: 256 * MiB, cpuCount: 1, cmdline: "x", preferPVH: prefer))
            #expect(p.entry == .linux64(rip: 0x100_0000))
            #expect(p.bsp.rsi == 0x7000)
            #expect(p.bsp.efer & 0x500 == 0x500)
            let zp = try #require(p.blobs.first { $0.address == 0x7000 }?.bytes)
            #expect(zp.u16(0x1FE) == 0xAA55)
            #expect(zp.u32(0x202) == 0x5372_6448)
            #expect(zp.u8(0x210) == 0xFF)
            #expect(zp.u32(0x228) == 0x2_0000)
            #expect(zp.u8(0x1E8) == 3)
            #expect(p.kernelSegments.count == 2)
            #expect(p.blobs.contains { $0.address == 0x9000 })
        }
    }

    @Test func pvhEntryOutsideSegmentsIsRefused() throws {
        let k = try KernelImage.parse(bytes: Fixtures.vmlinux(pvhEntry: 0x5000_0000))
        let e = Fixtures.error { _ = try LinuxBoot.plan(kernel: k, config: BootConfig(memorySize: 256 * MiB, cpuCount: 1, cmdline: "")) }
        #expect(e?.code == .corrupt)
    }
}
