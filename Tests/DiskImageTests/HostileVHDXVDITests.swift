import DiskImage
import Foundation
import Testing
import VireoSupport

/// Hostile VHDX and VDI headers: each is refused with a VireoError, never a trap (a trap kills
/// the test process, which fails the run).
@Suite struct HostileVHDXVDITests {
    static func le32(_ b: inout [UInt8], _ o: Int, _ v: UInt32) { for i in 0..<4 { b[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) } }
    static func le64(_ b: inout [UInt8], _ o: Int, _ v: UInt64) { for i in 0..<8 { b[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) } }
    static func rd32(_ b: [UInt8], _ o: Int) -> UInt32 { (0..<4).reduce(UInt32(0)) { $0 | UInt32(b[o + $1]) << (8 * UInt32($1)) } }
    static func rd64(_ b: [UInt8], _ o: Int) -> UInt64 { (0..<8).reduce(UInt64(0)) { $0 | UInt64(b[o + $1]) << (8 * UInt64($1)) } }

    func expectRefused(_ bytes: [UInt8], ext: String, _ expected: String, _ what: String) throws {
        let p = TS.tempDir() + "/bad." + ext
        try TS.writeFile(p, bytes)
        let e = TS.exerciseHostile(p)
        #expect(e?.description.contains(expected) == true, "\(what): \(e.map { "\($0)" } ?? "accepted")")
    }

    @Test(.enabled(if: TS.hasQemu, "needs qemu-img"))
    func hostileVDIHeaders() throws {
        let dir = TS.tempDir()
        let p = dir + "/s.vdi"
        try TS.qimg("create", "-q", "-f", "vdi", p, "8M")
        try TS.qio("-c", "write -P 0x5a 1M 1M", p)
        let b = try TS.readFile(p)
        #expect(TS.exerciseHostile(p) == nil)
        let map = Int(Self.rd32(b, 0x154))
        var x = b; Self.le64(&x, 0x170, UInt64.max)
        try expectRefused(x, ext: "vdi", "absurd", "disk size")
        x = b; Self.le32(&x, 0x178, 0)
        try expectRefused(x, ext: "vdi", "block size", "zero block size")
        x = b; Self.le32(&x, 0x178, 0xffff_fe00)
        try expectRefused(x, ext: "vdi", "block size", "huge block size")
        x = b; Self.le32(&x, 0x180, 0xffff_ffff)
        try expectRefused(x, ext: "vdi", "too large", "block count")
        x = b; Self.le32(&x, 0x180, 1)
        try expectRefused(x, ext: "vdi", "too few", "block count below the disk size")
        x = b; Self.le32(&x, 0x154, 0xffff_ff00)
        try expectRefused(x, ext: "vdi", "past the end of the file", "block map past EOF")
        x = b; Self.le32(&x, map + 4, 0x7fff_ffff)
        try expectRefused(x, ext: "vdi", "past the end of the file", "block entry past EOF")
        x = b; Self.le32(&x, 0x17c, 0xffff_ffff)
        try expectRefused(x, ext: "vdi", "extra data", "block extra")
        x = b; Self.le32(&x, 0x4c, 4)
        try expectRefused(x, ext: "vdi", "differencing", "differencing")
        x = b; Self.le32(&x, 0x44, 0x0001_0000)
        try expectRefused(x, ext: "vdi", "version", "old version")
        try expectRefused(Array(b[0..<300]), ext: "vdi", "too short", "truncated header")
        try expectRefused(Array(b[0..<(map + 2)]), ext: "vdi", "past the end of the file", "truncated map")
        try expectRefused(Array(b[0..<(b.count - 4096)]), ext: "vdi", "past the end of the file", "truncated data")
    }

    // MARK: VHDX

    static func crc32c(_ b: ArraySlice<UInt8>) -> UInt32 {
        var c: UInt32 = 0xffff_ffff
        for x in b {
            c ^= UInt32(x)
            for _ in 0..<8 { c = c & 1 != 0 ? (c >> 1) ^ 0x82f6_3b78 : c >> 1 }
        }
        return c ^ 0xffff_ffff
    }

    /// Recomputes the checksums of both headers and both region tables, so mutations reach past them.
    static func fixChecksums(_ b: inout [UInt8]) {
        for (off, len) in [(64 << 10, 4096), (128 << 10, 4096), (192 << 10, 64 << 10), (256 << 10, 64 << 10)] where off + len <= b.count {
            le32(&b, off + 4, 0)
            le32(&b, off + 4, crc32c(b[off..<off + len]))
        }
    }

    /// Where the BAT and the metadata region start (from region table 1).
    static func regions(_ b: [UInt8]) -> (bat: Int, meta: Int) {
        var bat = 0, meta = 0
        for i in 0..<Int(rd32(b, (192 << 10) + 8)) {
            let e = (192 << 10) + 16 + i * 32
            if b[e] == 0x66 { bat = Int(rd64(b, e + 16)) } else if b[e] == 0x06 { meta = Int(rd64(b, e + 16)) }
        }
        return (bat, meta)
    }

    static func qemuVHDX(_ dir: String, options: [String] = ["-o", "block_size=1M"]) throws -> [UInt8] {
        let p = dir + "/s.vhdx"
        try TS.run(TS.qemuImg ?? "qemu-img", ["create", "-q", "-f", "vhdx"] + options + [p, "8M"])
        try TS.qio("-f", "vhdx", "-c", "write -P 0x5a 1M 1M", p)
        return try TS.readFile(p)
    }

    @Test(.enabled(if: TS.hasQemu, "needs qemu-img"))
    func hostileVHDXHeaders() throws {
        let dir = TS.tempDir()
        let b = try Self.qemuVHDX(dir)
        #expect(TS.exerciseHostile(dir + "/s.vhdx") == nil)
        let (bat, meta) = Self.regions(b)
        #expect(bat >= 1 << 20 && meta >= 1 << 20)
        // Metadata items: find the file parameters (block size) and virtual size by GUID prefix.
        var params = 0, vsize = 0, lss = 0
        for i in 0..<Int(UInt16(b[meta + 10]) | UInt16(b[meta + 11]) << 8) {
            let e = meta + 32 + i * 32
            let off = meta + Int(Self.rd32(b, e + 16))
            switch Self.rd32(b, e) {
            case 0xcaa1_6737: params = off
            case 0x2fa5_4224: vsize = off
            case 0x8141_bf1d: lss = off
            default: break
            }
        }
        #expect(params > 0 && vsize > 0 && lss > 0)
        func mutated(_ f: (inout [UInt8]) -> Void) -> [UInt8] { var x = b; f(&x); Self.fixChecksums(&x); return x }
        try expectRefused(mutated { Self.le64(&$0, vsize, UInt64.max) }, ext: "vhdx", "absurd", "virtual size")
        try expectRefused(mutated { Self.le32(&$0, params, 3 << 20) }, ext: "vhdx", "block size", "block size not a power of two")
        try expectRefused(mutated { Self.le32(&$0, params, 0) }, ext: "vhdx", "block size", "zero block size")
        try expectRefused(mutated { Self.le32(&$0, lss, 1) }, ext: "vhdx", "logical sector size", "sector size")
        try expectRefused(mutated { Self.le64(&$0, bat, (UInt64(1) << 43) | 6) }, ext: "vhdx", "outside the file", "BAT entry past EOF")
        try expectRefused(mutated { Self.le64(&$0, bat, 6) }, ext: "vhdx", "outside the file", "BAT entry into the headers")
        try expectRefused(mutated { Self.le64(&$0, bat, 5) }, ext: "vhdx", "invalid state", "BAT state 5")
        try expectRefused(mutated { Self.le64(&$0, bat, (2 << 20) | 7) }, ext: "vhdx", "partially present", "partial without parent")
        try expectRefused(mutated { Self.le64(&$0, (192 << 10) + 16 + 16, UInt64.max - 4096) }, ext: "vhdx", "overflows", "region offset overflow")
        try expectRefused(mutated { Self.le64(&$0, (192 << 10) + 16 + 16, 1 << 40) }, ext: "vhdx", "outside the file", "region past EOF")
        try expectRefused(mutated { Self.le32(&$0, (192 << 10) + 8, 3000) }, ext: "vhdx", "at most 2047", "region count")
        try expectRefused(mutated { $0[meta + 10] = 0xff; $0[meta + 11] = 0xff }, ext: "vhdx", "at most 2047", "metadata count")
        try expectRefused(mutated { Self.le32(&$0, meta + 32 + 16, 0xffff_fff0) }, ext: "vhdx", "outside the metadata region", "item offset")
        try expectRefused(mutated { Self.le32(&$0, params + 4, 2) }, ext: "vhdx", "parent locator", "differencing without locator")
        // Bad checksums in both copies: refused, not trusted.
        var x = b; x[(64 << 10) + 20] ^= 1; x[(128 << 10) + 20] ^= 1
        try expectRefused(x, ext: "vhdx", "neither VHDX header", "header checksums")
        x = b; x[(192 << 10) + 40] ^= 1; x[(256 << 10) + 40] ^= 1
        try expectRefused(x, ext: "vhdx", "neither VHDX region table", "region checksums")
        try expectRefused(Array(b[0..<(200 << 10)]), ext: "vhdx", "too short", "truncated")
        try expectRefused(Array(b[0..<(b.count - 4096)]), ext: "vhdx", "outside the file", "truncated data")
    }

    /// A log GUID whose log holds no valid entry of it is clean (nothing to replay), and so is
    /// one whose only entry is hostile (descriptor count past the entry, data sectors missing):
    /// the entry is not valid, so it is never applied.
    @Test(.enabled(if: TS.hasQemu, "needs qemu-img"))
    func logWithoutValidEntriesIsNotReplayed() throws {
        let dir = TS.tempDir()
        let b = try Self.qemuVHDX(dir)
        let logOff = Int(Self.rd64(b, (64 << 10) + 72))
        let guid: [UInt8] = (0..<16).map { UInt8($0 * 7 + 1) }
        var clean = b
        for h in [64 << 10, 128 << 10] { clean.replaceSubrange(h + 48..<h + 64, with: guid) }
        Self.fixChecksums(&clean)
        let ref = try TS.qemuContents(dir + "/s.vhdx", format: "vhdx")
        for (name, count, length) in [("clean", nil, nil), ("descriptors-past-entry", UInt32.max, UInt32(4096)),
                                      ("missing-data-sector", UInt32(1), UInt32(4096)), ("longer-than-log", UInt32(0), UInt32.max & ~4095)] as [(String, UInt32?, UInt32?)] {
            var x = clean
            if let count, let length {
                var entry = [UInt8](repeating: 0, count: 4096)
                entry.replaceSubrange(0..<4, with: Array("loge".utf8))
                Self.le32(&entry, 8, length)
                Self.le64(&entry, 16, 1)
                Self.le32(&entry, 24, count)
                entry.replaceSubrange(32..<48, with: guid)
                if count == 1 {   // a data descriptor whose data sector is not there
                    entry.replaceSubrange(64..<68, with: Array("desc".utf8))
                    Self.le64(&entry, 64 + 16, 1 << 20)
                    Self.le64(&entry, 64 + 24, 1)
                }
                Self.le32(&entry, 4, Self.crc32c(entry[...]))
                x.replaceSubrange(logOff..<logOff + 4096, with: entry)
            }
            let p = dir + "/\(name).vhdx"
            try TS.writeFile(p, x)
            #expect(TS.exerciseHostile(p) == nil, "\(name)")
            let img = try DiskImage.open(path: p, readOnly: true)
            #expect((img as? VHDXImage)?.replayedLog == false, "\(name)")
            #expect(try TS.readAll(img) == ref, "\(name)")
            try img.close()
        }
    }

    /// Random damage to every metadata structure, checksums recomputed so it is not caught
    /// early: each mutant opens or is refused, never traps.
    @Test(.enabled(if: TS.hasQemu, "needs qemu-img"))
    func mutatedVHDXAndVDINeverCrash() throws {
        let dir = TS.tempDir()
        let vhdx = try Self.qemuVHDX(dir)
        let (bat, meta) = Self.regions(vhdx)
        try TS.qimg("create", "-q", "-f", "vdi", dir + "/s.vdi", "8M")
        try TS.qio("-c", "write -P 0x5a 1M 1M", dir + "/s.vdi")
        let vdi = try TS.readFile(dir + "/s.vdi")
        var rng: UInt64 = 0x9e37_79b9_7f4a_7c15
        func next() -> UInt64 { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng }
        var refused = 0, accepted = 0
        let iterations = Int(ProcessInfo.processInfo.environment["VIREO_FUZZ_ITERATIONS"] ?? "") ?? 150
        for i in 0..<iterations {
            let isVHDX = i % 2 == 0
            var x = isVHDX ? vhdx : vdi
            let areas = isVHDX ? [(64 << 10, 80), (192 << 10, 80), (meta, 256), (meta + (64 << 10), 64), (bat, 64)] : [(0x140, 0x60), (512, 64)]
            for _ in 0..<(1 + Int(next() % 4)) {
                let (start, len) = areas[Int(next() % UInt64(areas.count))]
                let at = start + Int(next() % UInt64(len))
                switch next() % 3 {
                case 0: x[at] ^= UInt8(truncatingIfNeeded: 1 << (next() % 8))
                case 1: for k in 0..<min(8, x.count - at) { x[at + k] = 0xff }
                default: x[at] = UInt8(truncatingIfNeeded: next())
                }
            }
            if isVHDX { Self.fixChecksums(&x) }
            let p = dir + "/m\(i)." + (isVHDX ? "vhdx" : "vdi")
            try TS.writeFile(p, x)
            if TS.exerciseHostile(p) == nil { accepted += 1 } else { refused += 1 }
            try? FileManager.default.removeItem(atPath: p)
            try? FileManager.default.removeItem(atPath: p + ".out.qcow2")
        }
        #expect(refused > 0 && accepted > 0, "accepted \(accepted), refused \(refused)")
    }
}
