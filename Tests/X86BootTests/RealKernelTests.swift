import Foundation
import Testing
import VireoSupport
import X86Boot

/// Parses Debian's linux-image-cloud-amd64 (6.1) when scripts/guest-assets.sh has put it in
/// out/guest (or $VIREO_GUEST_DIR); skipped with a message otherwise.
@Suite struct RealKernelTests {
    @Test func debianBzImage() throws {
        guard let path = Fixtures.realKernel("vmlinuz") else { return }
        guard case .bzImage(let b) = try KernelImage.load(path: path) else { Issue.record("\(path) is not a bzImage"); return }
        #expect(b.version >= 0x020F)
        #expect(b.supports64BitEntry)
        #expect(b.relocatable)
        #expect(b.cmdlineSize >= 2047)
        #expect(b.initSize > 0)
        let plan = try LinuxBoot.plan(kernelPath: path, config: BootConfig(
            memorySize: 512 << 20, cpuCount: 2, cmdline: "console=ttyS0 reboot=k panic=1", initrdSize: 20 << 20))
        #expect(plan.entry == .linux64(rip: 0x10_0200))
        let seg = try #require(plan.kernelSegments.first)
        #expect(seg.fileOffset == UInt64(b.setupSects + 1) * 512)
        #expect(seg.fileOffset + seg.fileSize == UInt64(try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int ?? 0))
        let initrd = try #require(plan.initrdAddress)
        #expect(initrd >= b.memoryEnd(loadAddress: 0x10_0000) ?? .max)
        #expect(initrd + (20 << 20) <= 512 << 20)
        print("vmlinuz: protocol \(b.versionString), \(b.setupSects) setup sectors, init_size \(ByteSize.format(UInt64(b.initSize))), initrd at \(String(initrd, radix: 16))")
    }

    @Test func debianVmlinux() throws {
        guard let path = Fixtures.realKernel("vmlinux") else { return }
        guard case .elf(let k) = try KernelImage.load(path: path) else { Issue.record("\(path) is not ELF"); return }
        #expect(k.entry64 == 0x100_0000)                        // startup_64, physical
        let pvh = try #require(k.pvhEntry)
        #expect(pvh > 0x100_0000 && pvh < 0x200_0000)           // pvh_start_xen in .text
        #expect(k.segments.allSatisfy { $0.guestAddress >= 0x100_0000 })
        let plan = try LinuxBoot.plan(kernelPath: path, config: BootConfig(
            memorySize: 512 << 20, cpuCount: 2, cmdline: "console=ttyS0", initrdSize: 20 << 20))
        #expect(plan.entry == .pvh(eip: UInt64(pvh)))
        #expect(plan.kernelSegments.count == k.segments.count)
        print("vmlinux: \(k.segments.count) segments ending at \(ByteSize.format(k.memoryEnd)), PVH entry 0x\(String(pvh, radix: 16))")
    }
}
