import Testing
import VireoSupport
import X86Boot

@Suite struct BzImageTests {
    @Test func parsesAValidHeader() throws {
        let bytes = Fixtures.bzImage(setupSects: 4, payload: 10000)
        guard case .bzImage(let b) = try KernelImage.parse(bytes: bytes, name: "/k") else {
            Issue.record("not detected as a bzImage"); return
        }
        #expect(b.version == 0x020F)
        #expect(b.versionString == "2.15")
        #expect(b.setupSects == 4)
        #expect(b.kernelOffset == 5 * 512)
        #expect(b.kernelSize == 10000)
        #expect(b.supports64BitEntry)
        #expect(b.relocatable)
        #expect(b.cmdlineSize == 0x7FF)
        #expect(b.initrdAddrMax == 0x7FFF_FFFF)
        #expect(b.initSize == 0x40_0000)
        #expect(b.setupHeader.count == 0x26C - 0x1F1)
        #expect(b.setupHeader[0] == 4)   // byte 0x1F1
    }

    @Test func zeroSetupSectsMeansFour() throws {
        let bytes = Fixtures.bzImage(setupSects: 0)
        guard case .bzImage(let b) = try KernelImage.parse(bytes: bytes) else { Issue.record("not a bzImage"); return }
        #expect(b.setupSects == 4)
        #expect(b.kernelOffset == 2560)
    }

    @Test func rejectsMissingHdrS() {
        let e = Fixtures.error { _ = try KernelImage.parse(bytes: Fixtures.bzImage(magic: 0x1234_5678), name: "/x") }
        #expect(e?.code == .invalidArgument)
        #expect(e?.message == "kernel /x is not an ELF vmlinux or a bzImage (no 'HdrS' signature at 0x202)")
    }

    @Test func rejectsBadBootFlag() {
        let e = Fixtures.error { _ = try KernelImage.parse(bytes: Fixtures.bzImage(bootFlag: 0)) }
        #expect(e?.code == .corrupt)
    }

    @Test func rejectsOldProtocols() {
        let e = Fixtures.error { _ = try KernelImage.parse(bytes: Fixtures.bzImage(version: 0x0204), name: "/old") }
        #expect(e?.code == .unsupported)
        #expect(e?.message.contains("2.04") == true)
        #expect(e?.message.contains("2.06") == true)
    }

    @Test func rejectsZImage() {
        let e = Fixtures.error { _ = try KernelImage.parse(bytes: Fixtures.bzImage(loadflags: 0)) }
        #expect(e?.code == .unsupported)
    }

    @Test func rejectsTruncatedFiles() {
        let full = Fixtures.bzImage(setupSects: 30, payload: 100)
        // Cut inside the setup sectors: header is intact but the protected-mode kernel is missing.
        let e1 = Fixtures.error { _ = try KernelImage.parse(bytes: Array(full.prefix(4000))) }
        #expect(e1?.code == .corrupt)
        // Cut inside the header itself.
        let e2 = Fixtures.error { _ = try KernelImage.parse(bytes: Array(full.prefix(0x230))) }
        #expect(e2?.code == .corrupt)
        // Tiny and empty files.
        #expect(Fixtures.error { _ = try KernelImage.parse(bytes: [0x7F]) }?.code == .invalidArgument)
        #expect(Fixtures.error { _ = try KernelImage.parse(bytes: []) }?.code == .invalidArgument)
        #expect(Fixtures.error { _ = try KernelImage.parse(bytes: [UInt8](repeating: 0, count: 0x100)) } != nil)
    }

    @Test func olderProtocolHasNo64BitEntry() throws {
        // 2.10 has no xloadflags: the 32-bit protocol is used.
        let bytes = Fixtures.bzImage(version: 0x020A, xloadflags: 0x7F)
        guard case .bzImage(let b) = try KernelImage.parse(bytes: bytes) else { Issue.record("not a bzImage"); return }
        #expect(!b.supports64BitEntry)
        let plan = try LinuxBoot.plan(kernel: .bzImage(b), config: BootConfig(memorySize: 256 * Fixtures.MiB, cpuCount: 1, cmdline: ""))
        #expect(plan.entry == .linux32(eip: 0x10_0000))
        #expect(plan.bsp.cr0 & ControlBits.cr0PG == 0)
        #expect(plan.bsp.efer == 0)
        #expect(plan.bsp.rsi == X86MemoryLayout.zeroPageAddress)
        #expect(plan.bsp.rbp == 0 && plan.bsp.rbx == 0)
        #expect(plan.bsp.cs.selector == 0x10 && plan.bsp.ds.selector == 0x18)
        #expect(plan.bsp.cs.db && !plan.bsp.cs.l)
    }

    @Test func memoryEndUsesPrefAddressAndInitSize() throws {
        guard case .bzImage(let b) = try KernelImage.parse(bytes: Fixtures.bzImage(prefAddress: 0x100_0000, initSize: 0x300_0000)) else {
            Issue.record("not a bzImage"); return
        }
        #expect(b.memoryEnd(loadAddress: 0x10_0000) == 0x400_0000)
    }

    @Test func refusesKernelLargerThanRAM() throws {
        let k = try KernelImage.parse(bytes: Fixtures.bzImage(initSize: 0x1000_0000), name: "/big")
        let e = Fixtures.error { _ = try LinuxBoot.plan(kernel: k, config: BootConfig(memorySize: 128 * Fixtures.MiB, cpuCount: 1, cmdline: "")) }
        #expect(e?.code == .outOfRange)
        #expect(e?.hint?.contains("--memory 512M") == true)
    }
}
