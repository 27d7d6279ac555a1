import DiskImage
import Foundation
import Testing
import VireoSupport

/// Differencing VHDs (disk type 4). qemu-img cannot write them, so `make` builds one by the VHD
/// specification over a dynamic parent that qemu-img writes: footer (copy at 0 and at the end),
/// dynamic header with the parent's unique ID, Unicode name and a W2ru locator, a block table
/// and blocks whose sector bitmaps say which sectors the child holds.
@Suite(.enabled(if: TS.hasQemu, "needs qemu-img and qemu-io (apt-get install qemu-utils)"))
struct VHDDifferencingTests {
    static func be32(_ b: inout [UInt8], _ o: Int, _ v: UInt32) { for i in 0..<4 { b[o + i] = UInt8(truncatingIfNeeded: v >> UInt32(24 - 8 * i)) } }
    static func be64(_ b: inout [UInt8], _ o: Int, _ v: UInt64) { for i in 0..<8 { b[o + i] = UInt8(truncatingIfNeeded: v >> UInt64(56 - 8 * i)) } }
    static func rd32(_ b: [UInt8], _ o: Int) -> UInt32 { b[o..<o + 4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) } }
    static func rd64(_ b: [UInt8], _ o: Int) -> UInt64 { b[o..<o + 8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) } }
    /// One's complement of the byte sum, with the checksum field taken as zero.
    static func checksum(_ b: inout [UInt8], at o: Int) {
        for i in 0..<4 { b[o + i] = 0 }
        be32(&b, o, ~b.reduce(UInt32(0)) { $0 &+ UInt32($1) })
    }

    struct Made { var expected: [UInt8]; var child: String; var parentBytes: [UInt8]; var childBytes: [UInt8]; var locatorOffset: Int; var dynOffset: Int }

    /// parent.vhd (qemu-img, dynamic, 8 MiB, 2 MiB blocks) and child.vhd: block 0 holds sectors
    /// 0-7 and 100 (other sectors of it hold junk the bitmap hides), block 2 is whole, the rest
    /// falls through to the parent.
    static func make(_ dir: String, locator: String = ".\\parent.vhd") throws -> Made {
        let parent = dir + "/parent.vhd", child = dir + "/child.vhd"
        try TS.qimg("create", "-q", "-f", "vpc", "-o", "subformat=dynamic,force_size=on", parent, "8M")
        try TS.qio("-f", "vpc", "-c", "write -P 0x11 0 3M", "-c", "write -P 0x12 6M 1M", parent)
        var expected = try TS.qemuContents(parent, format: "vpc")
        let pb = try TS.readFile(parent)
        let pfoot = Array(pb[(pb.count - 512)...])
        let blockSize = 2 << 20, entries = 4, bitmapBytes = 512
        // Layout: footer copy 0..512, dynamic header 512..1536, BAT 1536..2048, locator 2048..2560,
        // block 0 at 4096 (bitmap + data), block 2 after it, footer at the end.
        let dynOff = 512, batOff = 1536, locOff = 2048
        let b0 = 4096, b2 = b0 + bitmapBytes + blockSize
        let end = b2 + bitmapBytes + blockSize
        var c = [UInt8](repeating: 0, count: end + 512)
        var foot = pfoot
        be32(&foot, 60, 4)                                          // differencing
        be64(&foot, 16, UInt64(dynOff))
        for i in 0..<16 { foot[68 + i] = UInt8(truncatingIfNeeded: 0xa0 + i) }   // the child's own unique ID
        checksum(&foot, at: 64)
        c.replaceSubrange(0..<512, with: foot)
        c.replaceSubrange(end..<end + 512, with: foot)
        var dh = [UInt8](repeating: 0, count: 1024)
        dh.replaceSubrange(0..<8, with: Array("cxsparse".utf8))
        be64(&dh, 8, UInt64.max)
        be64(&dh, 16, UInt64(batOff))
        be32(&dh, 24, 0x0001_0000)
        be32(&dh, 28, UInt32(entries))
        be32(&dh, 32, UInt32(blockSize))
        dh.replaceSubrange(40..<56, with: pfoot[68..<84])             // parent's unique ID
        for (i, u) in "parent.vhd".utf16.enumerated() { dh[64 + 2 * i] = UInt8(u >> 8); dh[65 + 2 * i] = UInt8(u & 0xff) }
        let loc = Array(locator.utf16.flatMap { [UInt8($0 & 0xff), UInt8($0 >> 8)] })   // UTF-16LE
        be32(&dh, 576, 0x5732_7275)                                 // W2ru
        be32(&dh, 580, 1)                                           // one sector of space
        be32(&dh, 584, UInt32(loc.count))
        be64(&dh, 592, UInt64(locOff))
        checksum(&dh, at: 36)
        c.replaceSubrange(dynOff..<dynOff + 1024, with: dh)
        c.replaceSubrange(locOff..<locOff + loc.count, with: loc)
        for i in 0..<entries { be32(&c, batOff + 4 * i, 0xffff_ffff) }
        be32(&c, batOff, UInt32(b0 / 512))
        be32(&c, batOff + 8, UInt32(b2 / 512))
        // Block 0: junk everywhere, bitmap bits for sectors 0-7 and 100 only.
        for i in 0..<blockSize { c[b0 + bitmapBytes + i] = 0xee }
        c[b0] = 0xff                                                // sectors 0..7
        c[b0 + 100 / 8] |= 0x80 >> UInt8(100 % 8)                    // sector 100
        for i in 0..<(8 * 512) { c[b0 + bitmapBytes + i] = 0x21; expected[i] = 0x21 }
        for i in (100 * 512)..<(101 * 512) { c[b0 + bitmapBytes + i] = 0x22; expected[i] = 0x22 }
        // Block 2 (4M..6M): every sector is the child's.
        for i in 0..<bitmapBytes { c[b2 + i] = 0xff }
        for i in 0..<blockSize { let v = UInt8(truncatingIfNeeded: i / 4096 + 1); c[b2 + bitmapBytes + i] = v; expected[(4 << 20) + i] = v }
        try TS.writeFile(child, c)
        return Made(expected: expected, child: child, parentBytes: pb, childBytes: c, locatorOffset: locOff, dynOffset: dynOff)
    }

    @Test func readsAChildOverItsParent() throws {
        let dir = TS.tempDir()
        let m = try Self.make(dir)
        let img = try DiskImage.open(path: m.child, readOnly: true)
        #expect(img.format == .vhd && img.chainLength == 1)
        #expect((img as? VHDImage)?.isDifferencing == true && (img as? VHDImage)?.parentName == "parent.vhd")
        #expect(img.referencedFiles.contains { $0.hasSuffix("/parent.vhd") })
        #expect(try TS.readAll(img) == m.expected)
        // Block status: the child's sectors are data, the rest falls through.
        #expect(try img.blockStatus(at: 0, maxLength: 1 << 20).length == 4096)
        #expect(try img.blockStatus(at: 4096, maxLength: 1 << 20).state == .unallocated)
        // Converted (flattened) to qcow2, qemu-img agrees byte for byte.
        let out = dir + "/flat.qcow2", ref = dir + "/expected.raw"
        try ImageOperations.convert(img, to: out, options: ImageOperations.ConvertOptions())
        try img.close()
        try TS.writeFile(ref, m.expected)
        try TS.qemuCheck(out)
        try TS.qimg("compare", ref, out)
        if TS.hasVireo {
            let info = try TS.vireoRun(["info", m.child]).out
            #expect(info.contains("subformat: differencing") && info.contains("backing file: parent.vhd"), "\(info)")
            try TS.vireoRun(["compare", m.child, out])
        }
    }

    @Test func parentsAreFoundAndChecked() throws {
        let dir = TS.tempDir()
        // A locator that climbs out is refused under the confined policy.
        let m = try Self.make(dir, locator: "..\\elsewhere\\parent.vhd")
        #expect { _ = try DiskImage.open(path: m.child, options: OpenOptions(readOnly: true, backingPolicy: .confined)) } throws: { e in
            (e as? VireoError)?.message.contains("climbs out") == true
        }
        // A missing parent is named.
        #expect { _ = try DiskImage.open(path: m.child, readOnly: true) } throws: { e in
            (e as? VireoError)?.message.contains("does not exist") == true
        }
        // A parent whose unique ID differs is refused.
        let dir2 = TS.tempDir()
        let m2 = try Self.make(dir2)
        var pb = m2.parentBytes
        pb[pb.count - 512 + 70] ^= 0xff
        try TS.writeFile(dir2 + "/parent.vhd", pb)
        #expect { _ = try DiskImage.open(path: m2.child, readOnly: true) } throws: { e in
            (e as? VireoError)?.message.contains("unique ID") == true
        }
        // No locator: the parent's Unicode name beside the child is used.
        let dir3 = TS.tempDir()
        let m3 = try Self.make(dir3)
        var c = m3.childBytes
        Self.be32(&c, m3.dynOffset + 576, 0)
        try TS.writeFile(m3.child, c)
        let img = try DiskImage.open(path: m3.child, readOnly: true)
        #expect(try TS.readAll(img) == m3.expected)
        try img.close()
    }

    /// Hostile headers: locators and blocks past the end of the file, a huge locator, a truncated
    /// file, a block table past the end, no parent name at all.
    @Test func hostileDifferencingHeaders() throws {
        let dir = TS.tempDir()
        let m = try Self.make(dir)
        let d = m.dynOffset
        func expectError(_ x: [UInt8], _ text: String, _ label: String) throws {
            let p = dir + "/\(label).vhd"
            try TS.writeFile(p, x)
            do {
                let img = try DiskImage.open(path: p, readOnly: true)
                defer { try? img.close() }
                _ = try TS.readAll(img)
                Issue.record("\(label): accepted; expected '\(text)'")
            } catch let e as VireoError {
                #expect(e.description.contains(text), "\(label): \(e.description)")
            }
        }
        var x = m.childBytes; Self.be64(&x, d + 592, UInt64(x.count) - 10)
        try expectError(x, "past the end", "locator-eof")
        x = m.childBytes; Self.be32(&x, d + 584, 1 << 30)
        try expectError(x, "too long", "locator-huge")
        x = m.childBytes; Self.be64(&x, d + 592, UInt64.max - 5)
        try expectError(x, "past the end", "locator-overflow")
        x = m.childBytes; Self.be32(&x, 1536 + 4, 0x00ff_ffff)
        try expectError(x, "past the end", "block-eof")
        x = m.childBytes; Self.be64(&x, d + 16, UInt64(x.count) - 8)
        try expectError(x, "past the end", "bat-eof")
        x = m.childBytes; Self.be32(&x, d + 576, 0); for i in 64..<576 { x[d + i] = 0 }
        try expectError(x, "names no parent", "noname")
        // Truncated anywhere: an error, never a crash (the footer copy at 0 keeps it recognisable).
        for cut in [600, 1600, 2100, 5000, m.childBytes.count / 2] {
            let p = dir + "/cut\(cut).vhd"
            try TS.writeFile(p, Array(m.childBytes[0..<cut]))
            #expect(TS.exerciseHostile(p) != nil, "cut at \(cut) was accepted")
        }
    }
}
