import DiskImage
import Foundation
import Testing
import VireoSupport

/// Issue 10: hostile VMDK descriptors are refused with a VireoError, never a trap, through the
/// library and through `vireo disk convert|map|info` (which exit 1 with the reason).
@Suite struct HostileVMDKDescriptorTests {
    static let head = "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n"

    /// Descriptors that each trapped before (first) or must be refused: (name, text, expected error text).
    static func hostileDescriptors(selfName: String) -> [(String, String, String)] {
        [
            // A flat extent whose offset + length overflows 64 bits (the issue-10 crash: `map`
            // and `convert` trapped on `offset + position` in blockStatus/read).
            ("flat-offset-overflow", head + "RW 128 ZERO\nRW 2048 FLAT \"\(selfName)\" 36028797018963967\n", "overflows"),
            ("flat-offset-past-any-file", head + "RW 2048 FLAT \"\(selfName)\" 18014398509481983\n", "past any file size"),
            ("flat-offset-garbage", head + "RW 2048 FLAT \"\(selfName)\" -5\n", "invalid offset"),
            ("flat-unterminated-quote", head + "RW 2048 FLAT \"\(selfName) 0\n", "names no file"),
            ("flat-empty-name", head + "RW 2048 FLAT \"\" 0\n", "names no file"),
            ("sizes-overflow", head + String(repeating: "RW 17592186044416 ZERO\n", count: 2100), "overflows"),
            ("unknown-extent-type", head + "RW 16 SESPARSE \"\(selfName)\"\n", "not supported"),
            ("no-extents", head + "RW -1 ZERO\nRW 99999999999999999999999 ZERO\nRDONLY 0x10 ZERO\n", "names no extents"),
            ("sparse-extent-is-text", head + "RW 16 SPARSE \"\(selfName)\"\n", "VMDK"),
        ]
    }

    @Test func hostileVMDKDescriptorsAreRefused() throws {
        let dir = TS.tempDir()
        for (name, text, expected) in Self.hostileDescriptors(selfName: "d.vmdk") {
            let sub = dir + "/" + name
            try FileManager.default.createDirectory(atPath: sub, withIntermediateDirectories: true)
            let p = sub + "/d.vmdk"
            try TS.writeFile(p, Array(text.utf8))
            let e = TS.exerciseHostile(p)
            #expect(e?.description.contains(expected) == true, "\(name): \(e.map { "\($0)" } ?? "accepted")")
        }
    }

    @Test func tooManyExtentsAreRefused() throws {
        let p = TS.tempDir() + "/many.vmdk"
        try TS.writeFile(p, Array((Self.head + String(repeating: "RW 1 ZERO\n", count: 40_001)).utf8))
        #expect(TS.exerciseHostile(p)?.message.contains("more than 40000 extents") == true)
    }

    /// Descriptors that are odd but valid read as qemu-img reads them: a sparse extent declared
    /// longer than its header's capacity (the capacity wins, as in qemu), createType lying about
    /// the extents, a 100 KB line.
    @Test(.enabled(if: TS.hasQemu, "needs qemu-img"))
    func oddButValidDescriptorsReadLikeQemu() throws {
        let dir = TS.tempDir()
        try TS.qimg("create", "-q", "-f", "vmdk", dir + "/s.vmdk", "1M")
        try TS.qio("-c", "write -P 0x7e 4k 8k", dir + "/s.vmdk")
        try TS.writeFile(dir + "/flat.bin", [UInt8](repeating: 0x42, count: 4096))
        let text = "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"vmfs\"\n"
            + "# " + String(repeating: "x", count: 100_000) + "\n"
            + "RW 4096 SPARSE \"s.vmdk\"\nRW 8 FLAT \"flat.bin\" 0\n"
        let p = dir + "/odd.vmdk"
        try TS.writeFile(p, Array(text.utf8))
        let img = try DiskImage.open(path: p, readOnly: true)
        defer { try? img.close() }
        #expect(img.virtualSize == (2048 + 8) * 512)
        #expect(try TS.readAll(img) == TS.qemuContents(p, format: "vmdk"))
        #expect(TS.exerciseHostile(p) == nil)
    }

    /// Descriptors assembled from hostile pieces (extreme sector counts and offsets, every extent
    /// type, broken quoting, names of sparse, flat and missing files, lying createTypes): each
    /// opens or is refused, never traps. VIREO_FUZZ_ITERATIONS sets the count (default 300).
    @Test(.enabled(if: TS.hasQemu, "needs qemu-img"))
    func generatedDescriptorsNeverCrash() throws {
        let dir = TS.tempDir()
        try TS.qimg("create", "-q", "-f", "vmdk", dir + "/s.vmdk", "1M")
        try TS.qio("-c", "write -P 0x7e 4k 8k", dir + "/s.vmdk")
        try TS.writeFile(dir + "/flat.bin", [UInt8](repeating: 0x42, count: 8192))
        let counts = ["0", "1", "8", "2048", "17592186044416", "17592186044417", "9223372036854775807", "18446744073709551615",
                      "-1", "0x10", "", "1e3", "99999999999999999999"]
        let offsets = ["", "0", "1", "16", "36028797018963967", "18014398509481983", "18446744073709551615", "-1", "x", "0 7"]
        let types = ["FLAT", "SPARSE", "ZERO", "VMFS", "VMFSSPARSE", "SESPARSE", "flat", ""]
        let names = ["\"flat.bin\"", "\"s.vmdk\"", "\"d.vmdk\"", "\"missing\"", "\"\"", "\"flat.bin", "flat.bin\"", "\"../x\"", "\"a\"b\"c\""]
        let access = ["RW", "RDONLY", "NOACCESS", "rw", ""]
        let creates = ["monolithicFlat", "monolithicSparse", "streamOptimized", "twoGbMaxExtentSparse", "vmfs", "\"", ""]
        var rng: UInt64 = 0xdead_beef_cafe_f00d
        func next() -> UInt64 { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng }
        func pick(_ a: [String]) -> String { a[Int(next() % UInt64(a.count))] }
        var accepted = 0, refused = 0
        let iterations = Int(ProcessInfo.processInfo.environment["VIREO_FUZZ_ITERATIONS"] ?? "") ?? 300
        for i in 0..<iterations {
            var text = next() % 8 == 0 ? "" : "# Disk DescriptorFile\nversion=1\n"
            text += "createType=\"\(pick(creates))\"\n"
            for _ in 0..<(1 + Int(next() % 4)) {
                var fields = [pick(access), pick(counts), pick(types)]
                if next() % 4 != 0 { fields.append(pick(names)) }
                if next() % 2 == 0 { fields.append(pick(offsets)) }
                text += fields.joined(separator: next() % 8 == 0 ? "  " : " ") + (next() % 8 == 0 ? "\r\n" : "\n")
            }
            let p = dir + "/d.vmdk"
            try TS.writeFile(p, Array(text.utf8))
            if TS.exerciseHostile(p) == nil { accepted += 1 } else { refused += 1 }
            try? FileManager.default.removeItem(atPath: p + ".out.qcow2")
            _ = i
        }
        #expect(accepted > 0 && refused > 0, "accepted \(accepted), refused \(refused)")
    }

    /// `vireo disk convert` and `map` on each committed crasher exit 1 with a message.
    @Test(.enabled(if: TS.hasVireo, "needs the vireo binary"))
    func cliExitsOneOnCrashers() throws {
        let crashers = FuzzCorpusTests.corpusFiles().filter { $0.contains("fuzz-vmdk-desc") }
        #expect(crashers.count >= 3)
        let dir = TS.tempDir()
        for f in crashers {
            let name = (f as NSString).lastPathComponent
            let p = dir + "/" + name
            try FileManager.default.copyItem(atPath: f, toPath: p)
            for args in [["convert", "-O", "qcow2", p, dir + "/out.qcow2"], ["map", p], ["info", p]] {
                let r = try TS.vireoRun(args, check: false)
                #expect(r.status == 1, "\(name) \(args[0]): status \(r.status) \(r.err.prefix(300))")
                #expect(r.err.contains(name) && r.err.count < 2000, "\(name) \(args[0]): \(r.err.prefix(300))")
            }
        }
    }
}
