import Testing
import VMM
import VireoSupport
import VireoTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// virtio-blk counters against a real guest driver: the ring-3 probe image of
/// bench/probe-virtio/blk.c (built here with the C compiler) reads a known number of 4 KiB
/// blocks from a raw disk through Vireo's virtio-blk on this host's KVM.
@Suite(.serialized)
struct DiskCountersTests {
    static let reads = 200

    /// Builds blk.c as MODE 0 (4 KiB reads), QD 1, OPS `reads`; nil (with the reason printed) when it cannot.
    static func buildProbe(into dir: String) -> String? {
        if access("/dev/kvm", R_OK | W_OK) != 0 { print("SKIPPED (disk counters): /dev/kvm is not usable here"); return nil }
        for tool in ["cc", "ld", "objcopy"] where system("command -v \(tool) >/dev/null 2>&1") != 0 {
            print("SKIPPED (disk counters): no \(tool) to build bench/probe-virtio/blk.c (apt-get install gcc binutils)")
            return nil
        }
        let out = dir + "/blk-read.bin"
        let rc = system("sh \(VireoBinary.packageRoot)/bench/probe-virtio/build.sh \(out) 0 1 \(reads) >\(dir)/build.log 2>&1")
        guard rc == 0 else {
            print("SKIPPED (disk counters): building the probe failed; see \(dir)/build.log")
            return nil
        }
        return out
    }

    @Test func countersMatchTheRequestsTheGuestMade() throws {
        let dir = "/tmp/vireo-diskctr-\(getpid())"
        _ = system("rm -rf \(dir) && mkdir -p \(dir)")
        defer { _ = system("rm -rf \(dir)") }
        guard let probe = Self.buildProbe(into: dir) else { return }
        let disk = dir + "/disk.raw"
        let fd = open(disk, O_CREAT | O_WRONLY, 0o644)
        #expect(fd >= 0 && ftruncate(fd, 1 << 20) == 0)
        close(fd)

        var config = MachineConfig(boot: .probe(.image(path: probe)), cpus: 1, memorySize: 64 << 20, serial: .none)
        var d = VirtioConfig.Disk(path: disk)
        d.id = "data"
        config.virtio.disks = [d]
        let machine = try Machine(config: config)
        let before = machine.metrics()
        #expect(before.disks.count == 1 && before.disks.first?.counters.readRequests == 0)
        let exit = machine.run()
        #expect(exit == .probeDone, "the probe did not finish: \(exit)")

        let m = machine.metrics()
        let c = try #require(m.disks.first).counters
        print("disk counters after \(Self.reads) probe reads: \(c)")
        #expect(m.disks.first?.name == "data" && m.disks.first?.path == disk)
        #expect(c.readRequests == UInt64(Self.reads))
        #expect(c.readBytes == UInt64(Self.reads) * 4096)
        #expect(c.writeRequests == 0 && c.writeBytes == 0 && c.flushRequests == 0 && c.otherRequests == 0)
        #expect(c.errors == 0)
    }
}
