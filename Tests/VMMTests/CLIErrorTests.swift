import Testing
import VireoSupport
import VireoTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Bad input to `vireo run` gets one line naming the problem and the fix, a non-zero status,
/// and never a Swift runtime trap or stack dump. These run the real binary.
@Suite(.enabled(if: VireoBinary.path != nil))
struct CLIErrorTests {
    static let garbage: String = {
        let p = "/tmp/vireo-test-garbage-\(getpid())"
        var bytes = [UInt8](repeating: 0, count: 8192)
        for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: i &* 2654435761 >> 7) }
        let fd = open(p, O_CREAT | O_WRONLY | O_TRUNC, 0o644)
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        return p
    }()

    static let hugeInitrd: String = {
        let p = "/tmp/vireo-test-initrd-\(getpid())"
        let fd = open(p, O_CREAT | O_WRONLY | O_TRUNC, 0o644)
        _ = ftruncate(fd, 600 << 20)   // sparse: costs no disk
        close(fd)
        return p
    }()

    static let cases: [(args: [String], expect: String)] = [
        (["run"], "missing --kernel"),
        (["run", "--kernel", "/nonexistent/vmlinuz"], "cannot read kernel /nonexistent/vmlinuz"),
        (["run", "--kernel", garbage], "is not an ELF vmlinux or a bzImage"),
        (["run", "--kernel", garbage, "--memory", "0"], "--memory must be larger than 0"),
        (["run", "--kernel", garbage, "--memory", "7P"], "more than this host can back"),
        (["run", "--kernel", garbage, "--memory", "lots"], "is not a size"),
        (["run", "--kernel", garbage, "--cpus", "0"], "--cpus 0 is out of range"),
        (["run", "--kernel", garbage, "--cpus", "100000"], "--cpus 100000 is out of range"),
        (["run", "--kernel", garbage, "--serial", "carrier-pigeon"], "--serial 'carrier-pigeon' is not one of"),
        (["run", "--kernel", garbage, "--initrd", "/nonexistent/initrd"], "cannot read initrd /nonexistent/initrd"),
    ]

    @Test(arguments: 0..<cases.count)
    func badInputGetsOneClearLine(index: Int) throws {
        let c = Self.cases[index]
        let (status, _, err) = try VireoBinary.run(c.args)
        #expect(status != 0, "vireo \(c.args) succeeded")
        #expect(status < 128, "vireo \(c.args) died of a signal (\(status))")
        let lines = err.split(separator: "\n")
        #expect(lines.count == 1, "expected one line, got: \(err)")
        #expect(err.contains(c.expect), "\(err)")
        #expect(!err.contains("Fatal error") && !err.contains("Stack dump"))
    }

    @Test func initrdLargerThanRAMIsRefused() throws {
        // Needs a real kernel to place the initrd against.
        let kernel = VireoBinary.packageRoot + "/out/guest/vmlinuz"
        guard access(kernel, R_OK) == 0 else {
            print("SKIPPED (initrd size test): \(kernel) missing; run scripts/guest-assets.sh")
            return
        }
        let (status, _, err) = try VireoBinary.run(["run", "--kernel", kernel, "--initrd", Self.hugeInitrd, "--memory", "256M"])
        #expect(status == 1)
        #expect(err.contains("does not fit") && err.contains("--memory"), "\(err)")
    }

    @Test func truncatedKernelIsRefused() throws {
        let kernel = VireoBinary.packageRoot + "/out/guest/vmlinuz"
        guard access(kernel, R_OK) == 0 else {
            print("SKIPPED (truncated kernel test): \(kernel) missing; run scripts/guest-assets.sh")
            return
        }
        let truncated = "/tmp/vireo-test-trunc-\(getpid())"
        let bytes = try OwnedFD.readFile(kernel, limit: 64 << 20)
        let fd = open(truncated, O_CREAT | O_WRONLY | O_TRUNC, 0o644)
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, 100_000) }
        close(fd)
        let (status, _, err) = try VireoBinary.run(["run", "--kernel", truncated])
        #expect(status == 1)
        #expect(err.contains("truncated"), "\(err)")
    }

    @Test func hostCheckReportsEveryItem() throws {
        let (status, out, _) = try VireoBinary.run(["host", "check"])
        for item in ["kvm device", "virtualization", "kvm capabilities", "tun", "ksm", "transparent hugepages", "cgroups"] {
            #expect(out.contains(item), "host check lacks '\(item)'")
        }
        // One verdict per line, and the exit status follows the FAIL lines.
        let fails = out.split(separator: "\n").filter { $0.hasPrefix("FAIL") }.count
        #expect((status == 0) == (fails == 0))
        let (badStatus, badOut, _) = try VireoBinary.run(["host", "check", "--kvm-path", "/nonexistent/kvm"])
        #expect(badStatus == 1)
        #expect(badOut.contains("FAIL  kvm device"))
    }
}
