import DiskImage
import Foundation
import Testing
import VireoSupport

/// qcow2 extended L2 entries (extended_l2=on, 32 subclusters per cluster): qemu-img's images read
/// identical; Vireo allocates subclusters on write and qemu-img checks and reads the result.
@Suite(.enabled(if: TS.hasQemu, "needs qemu-img and qemu-io (apt-get install qemu-utils)"))
struct Qcow2ExtendedL2Tests {
    static func info(_ p: String) throws -> String { try TS.qimg("info", "--output", "json", p).out }

    @Test(arguments: ["16K", "64K", "2M"])
    func readsQemuExtendedL2(cs: String) throws {
        let dir = TS.tempDir()
        let base = dir + "/base.qcow2", top = dir + "/top.qcow2"
        try TS.qimg("create", "-q", "-f", "qcow2", base, "8M")
        try TS.qio("-c", "write -P 0xaa 0 8M", base)
        try TS.qimg("create", "-q", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=\(cs)", "-b", "base.qcow2", "-F", "qcow2", top)
        #expect(try Self.info(top).contains("\"extended-l2\": true"))
        // Pieces smaller than a subcluster, zeroed subclusters, data over the backing file.
        for c in ["write -P 0x11 0 1k", "write -P 0x12 5k 3k", "write -z 64k 32k", "write -P 0x13 100k 7k",
                  "write -z 1M 2k", "write -P 0x14 3M 300k", "write -z 5M 1M", "write -P 0x15 8000k 192k", "discard 7M 512k"] {
            try TS.qio("-c", c, top)
        }
        let ref = try TS.qemuContents(top)
        let img = try DiskImage.open(path: top, readOnly: true)
        #expect(try TS.readAll(img) == ref, "cluster_size=\(cs)")
        // Block status distinguishes subclusters: data at 0, backing (unallocated) just after 1k in cluster 0.
        let st = try img.blockStatus(at: 0, maxLength: 1 << 20)
        #expect(st.state == .data)
        #expect(st.length < 1 << 20)
        try img.close()
        // Vireo's own convert of it equals qemu's reading.
        let out = dir + "/flat.qcow2"
        let src = try DiskImage.open(path: top, readOnly: true)
        try ImageOperations.convert(src, to: out, options: ImageOperations.ConvertOptions())
        try src.close()
        try TS.qimg("compare", top, out)
    }

    @Test func writesSubclustersQemuReads() throws {
        let dir = TS.tempDir()
        let base = dir + "/base.qcow2", top = dir + "/top.qcow2"
        try Qcow2Image.create(path: base, size: 4 << 20)
        var model = TS.pattern(4 << 20, seed: 3)
        let b = try DiskImage.open(path: base)
        try TS.write(b, model, at: 0)
        try b.close()
        var o = Qcow2CreateOptions(backingFile: "base.qcow2", backingFormat: .qcow2)
        o.extendedL2 = true
        try Qcow2Image.create(path: top, size: nil, options: o)
        #expect(try Self.info(top).contains("\"extended-l2\": true"))
        let img = try DiskImage.open(path: top)
        func put(_ bytes: [UInt8], _ off: Int) throws {
            try TS.write(img, bytes, at: UInt64(off))
            model.replaceSubrange(off..<off + bytes.count, with: bytes)
        }
        try put([UInt8](repeating: 0x41, count: 100), 10)                 // inside subcluster 0
        try put([UInt8](repeating: 0x42, count: 2048), 2048 * 3)          // exactly subcluster 3
        try put([UInt8](repeating: 0x43, count: 5000), 65536 - 1000)       // across a cluster boundary
        try put(TS.pattern(200_000, seed: 9), 300_000)                     // several clusters, unaligned
        try put([UInt8](repeating: 0x44, count: 10), 2048 * 3 + 5)         // into an allocated subcluster
        try img.writeZeroes(offset: 1 << 20, length: 256 << 10)           // whole clusters -> zero bits
        for i in (1 << 20)..<((1 << 20) + (256 << 10)) { model[i] = 0 }
        try img.writeZeroes(offset: 2 << 20 + 100, length: 3000)          // partial: written as data
        for i in (2 << 20 + 100)..<(2 << 20 + 3100) { model[i] = 0 }
        try img.close()
        try TS.qemuCheck(top)
        #expect(try TS.qemuContents(top) == model)
        // Only touched subclusters are allocated: qemu-img map shows backing data right after them.
        let map = try TS.qimg("map", "--output", "json", top).out
        #expect(map.contains("\"start\": 2048, \"length\": 4096, \"depth\": 1"), "\(map)")
        // Vireo reads back, and writes again over qemu's changes.
        try TS.qio("-c", "write -P 0x66 12k 1k", top)
        for i in (12 << 10)..<(13 << 10) { model[i] = 0x66 }
        let r = try DiskImage.open(path: top)
        #expect(try TS.readAll(r) == model)
        try TS.write(r, [1, 2, 3], at: (12 << 10) + 500)
        model.replaceSubrange(((12 << 10) + 500)..<((12 << 10) + 503), with: [1, 2, 3])
        // Internal snapshot, then a write into a shared cluster copies its whole guest view.
        if let q = r as? Qcow2Image {
            try q.createSnapshot(name: "s1")
            try TS.write(r, [7, 7], at: 30)
            model.replaceSubrange(30..<32, with: [7, 7])
        }
        try r.close()
        try TS.qemuCheck(top)
        #expect(try TS.qemuContents(top) == model)
        let c = try Qcow2Image.open(path: top)
        let res = try c.check()
        #expect(res.corruptions == 0 && res.leaks == 0, "\(res.messages.prefix(3))")
        try c.close()
    }

    @Test func cliConvertAndCreate() throws {
        guard TS.hasVireo else { return }
        let dir = TS.tempDir()
        let raw = dir + "/s.raw", q = dir + "/x.qcow2", e = dir + "/e.qcow2"
        var data = TS.pattern(3 << 20, seed: 5)
        for i in (1 << 20)..<(2 << 20) { data[i] = 0 }
        try TS.writeFile(raw, data)
        try TS.vireoRun(["convert", "-O", "qcow2", "-o", "extended_l2=on,cluster_size=128K", raw, q])
        try TS.qemuCheck(q)
        try TS.qimg("compare", raw, q)
        #expect(try Self.info(q).contains("\"extended-l2\": true"))
        #expect(try TS.vireoRun(["info", q]).out.contains("extended l2: true"))
        try TS.vireoRun(["create", "-q", "-f", "qcow2", "-o", "extended_l2=on", e, "8M"])
        try TS.qemuCheck(e)
        let bad = try TS.vireoRun(["create", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=4K", dir + "/b.qcow2", "8M"], check: false)
        #expect(bad.status != 0 && bad.err.contains("16K"))
    }

    /// Hostile bitmaps: both bits of a subcluster, allocated subclusters of an unallocated cluster,
    /// the reserved bit 0, and garbage in a whole L2 table.
    @Test func hostileBitmaps() throws {
        let dir = TS.tempDir()
        let p = dir + "/h.qcow2"
        try TS.qimg("create", "-q", "-f", "qcow2", "-o", "extended_l2=on", p, "4M")
        try TS.qio("-c", "write -P 0x11 0 4k", "-c", "write -P 0x22 64k 64k", p)
        let b = try TS.readFile(p)
        func rd(_ off: Int) -> UInt64 { b[off..<off + 8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) } }
        func put(_ x: inout [UInt8], _ off: Int, _ v: UInt64) { for i in 0..<8 { x[off + i] = UInt8(truncatingIfNeeded: v >> UInt64(56 - 8 * i)) } }
        let l1 = Int(rd(40))
        let l2 = Int(rd(l1) & 0x00ff_ffff_ffff_fe00)
        func expectError(_ x: [UInt8], _ text: String, _ label: String) throws {
            let q = dir + "/\(label).qcow2"
            try TS.writeFile(q, x)
            do {
                let img = try DiskImage.open(path: q)
                defer { try? img.close() }
                _ = try TS.readAll(img)
                try TS.write(img, [1], at: 100)
                Issue.record("\(label): accepted; expected '\(text)'")
            } catch let e as VireoError {
                #expect(e.description.contains(text), "\(label): \(e.description)")
            }
        }
        var x = b; put(&x, l2 + 8, rd(l2 + 8) | (1 << 32))                         // subcluster 0 allocated and zero
        try expectError(x, "both allocated and zero", "both")
        x = b; put(&x, l2 + 16 * 5 + 8, 0x3)                                       // unallocated cluster 5 with allocated bits
        try expectError(x, "allocated in an unallocated cluster", "unalloc")
        x = b; put(&x, l2, rd(l2) | 1)                                              // reserved bit 0
        try expectError(x, "reserved", "bit0")
        x = b; put(&x, l2 + 16 * 7, (UInt64(1) << 62) | (UInt64(1) << 60) | 0xffff_ffff_fff0)   // compressed past EOF
        try expectError(x, "past the end", "compressed")
        x = b; for i in 0..<65536 { x[l2 + i] = UInt8(truncatingIfNeeded: i &* 131 &+ 7) }
        let q = dir + "/garbage.qcow2"
        try TS.writeFile(q, x)
        #expect(TS.exerciseHostile(q) != nil)
        // Truncated inside the L2 table.
        try TS.writeFile(q, Array(b[0..<(l2 + 100)]))
        #expect(TS.exerciseHostile(q) != nil)
    }
}
