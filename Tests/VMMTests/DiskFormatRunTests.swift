import Testing
import VireoSupport
import VireoTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// `vireo run`: a disk's format is declared or detected, never guessed silently; a declared
/// format the file's signature contradicts is refused before the guest runs; `--config` runs a
/// VM configuration file and refuses a bad one with the reason. These run the real binary with
/// the probe guest (which leaves its disks alone).
@Suite(.enabled(if: VireoBinary.path != nil && VireoBinary.hasKVM))
struct DiskFormatRunTests {
    let dir: String

    init() {
        dir = "/tmp/vireo-dfr-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(dir, 0o755)
    }

    func file(_ name: String, _ bytes: [UInt8], size: Int? = 1 << 20) -> String {
        let p = dir + "/" + name
        let fd = open(p, O_CREAT | O_WRONLY | O_TRUNC, 0o644)
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        if let size { _ = ftruncate(fd, off_t(size)) }
        close(fd)
        return p
    }

    /// A qcow2 header by `vireo disk create` (the library's own writer).
    func qcow2(_ name: String) throws -> String {
        let p = dir + "/" + name
        let (status, _, err) = try VireoBinary.run(["disk", "create", "-f", "qcow2", p, "1M"])
        #expect(status == 0, "\(err)")
        return p
    }

    func run(_ args: [String]) throws -> (Int32, String, String) {
        try VireoBinary.run(["run", "--probe", "pio:1000", "--memory", "16M", "--serial", "none", "--active-memory-window", "0"] + args)
    }

    @Test func withoutAFormatTheSignatureDecidesAndVireoSaysWhich() throws {
        defer { _ = system("rm -rf \(dir)") }
        let q = try qcow2("a.qcow2")
        let (s1, _, e1) = try run(["--disk", "path=\(q)"])
        #expect(s1 == 0 && e1.contains("detected qcow2 by its signature"), "\(e1)")
        let r = file("b.raw", [])
        let (s2, _, e2) = try run(["--disk", "path=\(r)"])
        #expect(s2 == 0 && e2.contains("no image signature, opened as raw"), "\(e2)")
        let (s3, _, e3) = try run(["--disk", "path=\(r),format=raw"])
        #expect(s3 == 0 && !e3.contains("opened as raw"), "\(e3)")
    }

    @Test func aDeclaredFormatTheFileContradictsIsRefused() throws {
        defer { _ = system("rm -rf \(dir)") }
        let q = try qcow2("a.qcow2")
        let (s1, _, e1) = try run(["--disk", "path=\(q),format=raw"])
        #expect(s1 == 1 && e1.contains("declared raw but starts with a qcow2 signature"), "\(e1)")
        let r = file("b.raw", [])
        let (s2, _, e2) = try run(["--disk", "path=\(r),format=qcow2"])
        #expect(s2 == 1 && e2.contains("declared qcow2 but has no qcow2 signature"), "\(e2)")
        // A VHD (footer at the end) is neither raw nor qcow2: refused by name either way.
        var footer = [UInt8](repeating: 0, count: 512)
        footer.replaceSubrange(0..<8, with: Array("conectix".utf8))
        let vhd = file("c.vhd", [])
        let fd = open(vhd, O_WRONLY)
        _ = footer.withUnsafeBytes { pwrite(fd, $0.baseAddress, 512, off_t((1 << 20) - 512)) }
        close(fd)
        let (s3, _, e3) = try run(["--disk", "path=\(vhd)"])
        #expect(s3 == 1 && e3.contains("is a vhd image"), "\(e3)")
        let (s4, _, e4) = try run(["--disk", "path=\(vhd),format=raw"])
        #expect(s4 == 1 && e4.contains("declared raw but starts with a vhd signature"), "\(e4)")
        for e in [e1, e2, e3, e4] { #expect(!e.contains("Fatal error") && e.split(separator: "\n").count <= 2, "\(e)") }
        // A guest that encrypted its whole raw disk wrote a LUKS header at sector 0: declared raw,
        // it runs (LUKS names no other file); undeclared, it is not guessed.
        let luks = file("enc.raw", [0x4C, 0x55, 0x4B, 0x53, 0xBA, 0xBE, 0x00, 0x01])
        let (s5, _, e5) = try run(["--disk", "path=\(luks),format=raw"])
        #expect(s5 == 0, "\(e5)")
        let (s6, _, e6) = try run(["--disk", "path=\(luks)"])
        #expect(s6 == 1 && e6.contains("LUKS"), "\(e6)")
    }

    @Test func runsAConfigurationFileAndRefusesABadOne() throws {
        defer { _ = system("rm -rf \(dir)") }
        let q = try qcow2("a.qcow2")
        let good = file("vm.json", Array(#"{"config_version":1,"name":"f","vcpus":1,"memory_mib":16,"probe":"pio:1000","disks":[{"path":"\#(q)","format":"qcow2","id":"root"}],"nics":[]}"#.utf8), size: nil)
        let api = dir + "/api.sock"
        let (s1, _, e1) = try VireoBinary.run(["run", "--config", good, "--serial", "none", "--active-memory-window", "0", "--api-socket", api])
        #expect(s1 == 0, "\(e1)")
        let newer = file("new.json", Array(#"{"config_version":7,"name":"f","vcpus":1,"memory_mib":16,"probe":"pio:1"}"#.utf8), size: nil)
        let (s2, _, e2) = try VireoBinary.run(["run", "--config", newer])
        #expect(s2 == 1 && e2.contains("newer than this vireo reads"), "\(e2)")
        let mixed = try VireoBinary.run(["run", "--config", good, "--cpus", "2"])
        #expect(mixed.0 != 0 && mixed.2.contains("leave out --cpus"), "\(mixed.2)")
        let broken = file("broken.json", Array("{\"name\":".utf8), size: nil)
        let (s3, _, e3) = try VireoBinary.run(["run", "--config", broken])
        #expect(s3 == 1 && e3.contains("is not a VM configuration"), "\(e3)")
        let badDisk = file("bad.json", Array(#"{"name":"f","probe":"pio:1","disks":[{"path":"\#(q)","format":"raw"}]}"#.utf8), size: nil)
        let (s4, _, e4) = try VireoBinary.run(["run", "--config", badDisk, "--serial", "none"])
        #expect(s4 == 1 && e4.contains("declared raw"), "\(e4)")
    }
}
