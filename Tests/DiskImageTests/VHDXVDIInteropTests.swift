import DiskImage
import Foundation
import Testing
import VireoSupport

/// VHDX and VDI images qemu-img makes (dynamic and fixed) read byte for byte as qemu-img reads
/// them; `vireo disk convert` of them to qcow2 passes qemu-img check and compare.
@Suite(.enabled(if: TS.hasQemu, "needs qemu-img and qemu-io (apt-get install qemu-utils)"))
struct VHDXVDIInteropTests {
    static let cases: [(format: String, options: [String], subformat: String)] = [
        ("vhdx", [], "dynamic"), ("vhdx", ["-o", "subformat=fixed"], "fixed"),
        ("vhdx", ["-o", "block_size=1M,log_size=1M"], "dynamic"),
        ("vdi", [], "dynamic"), ("vdi", ["-o", "static=on"], "fixed"),
    ]

    /// Creates an image with qemu-img and writes a recognizable mix into it with qemu-io.
    static func make(_ c: (format: String, options: [String], subformat: String), in dir: String, size: String = "40M") throws -> String {
        let p = dir + "/d." + c.format
        try TS.run(TS.qemuImg ?? "qemu-img", ["create", "-q", "-f", c.format] + c.options + [p, size])
        var args = ["-f", c.format]
        for w in ["write -P 0xab 1M 64k", "write -P 0x11 0 300k", "write -P 0x22 9000k 3M", "write -P 0x33 33M 4097", "write -z 9500k 64k"] {
            args += ["-c", w]
        }
        try TS.run(TS.qemuIO ?? "qemu-io", args + [p])
        return p
    }

    @Test(arguments: 0..<5)
    func readsQemuImagesByteForByte(index: Int) throws {
        let c = Self.cases[index]
        let dir = TS.tempDir()
        let p = try Self.make(c, in: dir)
        #expect(try DiskImage.probe(path: p) == DiskImageFormat(name: c.format))
        let ref = try TS.qemuContents(p, format: c.format)
        let img = try DiskImage.open(path: p, readOnly: true)
        defer { try? img.close() }
        #expect(img.format.qemuName == c.format)
        #expect(img.virtualSize == UInt64(ref.count))
        #expect(try TS.readAll(img) == ref, "\(c) differs from qemu's reading")
        // Reads that straddle blocks and start mid-sector.
        for (off, n) in [(1_048_575, 70_000), (9_000 * 1024 - 3, 3 << 20), (33 << 20, 5000)] {
            #expect(try TS.read(img, n, at: UInt64(off)) == Array(ref[off..<off + n]))
        }
        if let v = img as? VHDXImage { #expect(v.subformat == c.subformat) }
        if let v = img as? VDIImage { #expect(v.subformat == c.subformat) }
        // The allocation map covers the disk and every data byte lies in a data extent.
        let map = try ImageOperations.map(img)
        #expect(map.reduce(0) { $0 + $1.length } == img.virtualSize)
        for e in map where !e.data {
            #expect(ref[Int(e.start)..<Int(e.start + e.length)].allSatisfy { $0 == 0 }, "\(c): \(e) is not data but holds non-zero bytes")
        }
        #expect(throws: VireoError.self) { _ = try DiskImage.open(path: p) }   // read-only import
    }

    @Test(.enabled(if: TS.hasVireo, "needs the vireo binary"), arguments: 0..<5)
    func cliConvertsToQcow2ThatQemuAccepts(index: Int) throws {
        let c = Self.cases[index]
        let dir = TS.tempDir()
        let p = try Self.make(c, in: dir)
        let out = dir + "/out.qcow2"
        try TS.vireoRun(["convert", "-O", "qcow2", p, out])
        try TS.qemuCheck(out)
        try TS.qimg("compare", "-q", "-f", c.format, "-F", "qcow2", p, out)
        let info = try TS.vireoRun(["info", p]).out
        #expect(info.contains("file format: \(c.format)") && info.contains("subformat: \(c.subformat)"), "\(info)")
        let cmp = try TS.vireoRun(["compare", p, out], check: false)
        #expect(cmp.status == 0, "\(cmp.out) \(cmp.err)")
        let raw = dir + "/out.raw"
        try TS.vireoRun(["convert", "-O", "raw", p, raw])
        #expect(try TS.readFile(raw) == TS.qemuContents(p, format: c.format))
    }
}
