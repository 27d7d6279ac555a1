import DiskImage
import Foundation
import Testing
import VireoSupport

/// Differencing VHDX. qemu-img neither writes nor reads them, so the child is a qemu-made
/// dynamic VHDX turned into a differencing one by hand, as Hyper-V lays them out: HasParent set,
/// a parent locator naming the parent by relative_path, a BAT with one sector-bitmap entry per
/// chunk, and payload blocks in every state (not present, undefined, zero, unmapped, fully and
/// partially present).
/// The expected contents follow from the layout; the parent is a qemu-made VHDX too.
@Suite(.enabled(if: TS.hasQemu, "needs qemu-img and qemu-io (apt-get install qemu-utils)"))
struct VHDXDifferencingTests {
    typealias H = HostileVHDXVDITests
    static let mib = 1 << 20

    /// Sectors of block 3 present in the child (by 512-byte sector within the block).
    static let presentSectors: [Range<Int>] = [8..<16, 100..<101, 2040..<2048]

    static func utf16(_ s: String) -> [UInt8] { s.utf16.flatMap { [UInt8($0 & 0xff), UInt8($0 >> 8)] } }

    /// Builds parent.vhdx and child.vhdx in `dir`; returns the child's expected guest contents.
    static func make(_ dir: String, parentName: String = ".\\parent.vhdx") throws -> [UInt8] {
        let parent = dir + "/parent.vhdx", child = dir + "/child.vhdx"
        for p in [parent, child] { try TS.qimg("create", "-q", "-f", "vhdx", "-o", "block_size=1M", p, "8M") }
        try TS.qio("-f", "vhdx", "-c", "write -P 0x11 0 8M", parent)
        try TS.qio("-f", "vhdx", "-c", "write -P 0x22 2M 1M", child)
        var b = try TS.readFile(child)
        let (bat, meta) = H.regions(b)
        // Metadata: the file parameters item gets HasParent; a parent locator item is added.
        var params = 0
        let count = Int(UInt16(b[meta + 10]) | UInt16(b[meta + 11]) << 8)
        for i in 0..<count where H.rd32(b, meta + 32 + i * 32) == 0xcaa1_6737 {
            params = meta + Int(H.rd32(b, meta + 32 + i * 32 + 16))
        }
        #expect(params > 0)
        H.le32(&b, params + 4, H.rd32(b, params + 4) | 2)
        let keys = ["parent_linkage": "{83ed2e42-3e07-4d19-9b9e-0f8c0dfd2a11}", "relative_path": parentName]
        var locator = [0xb7, 0xef, 0x4a, 0xb0, 0x9e, 0xd1, 0x81, 0x4a, 0xb7, 0x89, 0x25, 0xb8, 0xe9, 0x44, 0x59, 0x13] as [UInt8]
        locator += [0, 0, UInt8(keys.count), 0]
        var strings: [UInt8] = []
        let stringsAt = 20 + 12 * keys.count
        for (k, v) in keys.sorted(by: { $0.key < $1.key }) {
            let kb = utf16(k), vb = utf16(v)
            var e = [UInt8](repeating: 0, count: 12)
            H.le32(&e, 0, UInt32(stringsAt + strings.count)); strings += kb
            H.le32(&e, 4, UInt32(stringsAt + strings.count)); strings += vb
            e[8] = UInt8(kb.count); e[10] = UInt8(vb.count)
            locator += e
        }
        locator += strings
        let locAt = 128 << 10
        b.replaceSubrange(meta + locAt..<meta + locAt + locator.count, with: locator)
        let entry = meta + 32 + count * 32
        b.replaceSubrange(entry..<entry + 16, with: [0x2d, 0x5f, 0xd3, 0xa8, 0x0b, 0xb3, 0x4d, 0x45, 0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c])
        H.le32(&b, entry + 16, UInt32(locAt))
        H.le32(&b, entry + 20, UInt32(locator.count))
        H.le32(&b, entry + 24, 4)   // IsRequired
        b[meta + 10] = UInt8(count + 1)
        // Two new MiB at the end: block 3's data (0x33) and chunk 0's sector bitmap.
        let dataAt = (b.count + mib - 1) / mib * mib
        b += [UInt8](repeating: 0, count: dataAt - b.count)
        b += [UInt8](repeating: 0x33, count: mib)
        var bitmap = [UInt8](repeating: 0, count: mib)
        for r in presentSectors { for s in r { let n = 3 * 2048 + s; bitmap[n / 8] |= 1 << (n % 8) } }
        b += bitmap
        // BAT (chunk ratio 4096: payload 0..4095, then the bitmap entry 4096).
        H.le64(&b, bat + 0 * 8, 0)                              // block 0: not present -> parent
        H.le64(&b, bat + 1 * 8, 2)                              // block 1: zero
        #expect(H.rd64(b, bat + 2 * 8) & 7 == 6)                // block 2: the child's own data
        H.le64(&b, bat + 3 * 8, UInt64(dataAt) | 7)             // block 3: partially present
        H.le64(&b, bat + 4096 * 8, UInt64(dataAt + mib) | 6)    // chunk 0's sector bitmap
        // qemu-img marks unwritten blocks ZERO; make 4 and 7 fall through, 5 undefined, 6 trimmed.
        for (block, state) in [(4, 0), (5, 1), (6, 3), (7, 0)] as [(Int, UInt64)] { H.le64(&b, bat + block * 8, state) }
        try TS.writeFile(child, b)
        var expected = [UInt8](repeating: 0x11, count: 8 * mib)
        expected.replaceSubrange(mib..<2 * mib, with: [UInt8](repeating: 0, count: mib))
        expected.replaceSubrange(2 * mib..<3 * mib, with: [UInt8](repeating: 0x22, count: mib))
        expected.replaceSubrange(5 * mib..<7 * mib, with: [UInt8](repeating: 0, count: 2 * mib))
        for r in presentSectors { expected.replaceSubrange(3 * mib + r.lowerBound * 512..<3 * mib + r.upperBound * 512, with: [UInt8](repeating: 0x33, count: r.count * 512)) }
        return expected
    }

    @Test func readsThroughTheParent() throws {
        let dir = TS.tempDir()
        let expected = try Self.make(dir)
        let img = try DiskImage.open(path: dir + "/child.vhdx", readOnly: true)
        defer { try? img.close() }
        let v = try #require(img as? VHDXImage)
        #expect(v.subformat == "differencing" && v.parentName == "parent.vhdx")
        #expect(img.backing?.format == .vhdx && img.chainLength == 1)
        #expect(try TS.readAll(img) == expected)
        // Unaligned reads across the sector runs of the partially present block.
        for (off, n) in [(3 * Self.mib + 4000, 5000), (3 * Self.mib + 100 * 512 - 7, 600), (4 * Self.mib - 4097, 4200)] {
            #expect(try TS.read(img, n, at: UInt64(off)) == Array(expected[off..<off + n]), "at \(off)")
        }
        // The map says which bytes come from the parent (depth 1).
        let map = try ImageOperations.map(img)
        #expect(map.contains { $0.depth == 1 && $0.start == 0 })
        #expect(map.contains { $0.depth == 0 && $0.start == UInt64(3 * Self.mib + 8 * 512) && $0.length == 8 * 512 })
    }

    @Test func imageAloneLeavesParentRangesUnallocated() throws {
        let dir = TS.tempDir()
        _ = try Self.make(dir)
        let img = try DiskImage.open(path: dir + "/child.vhdx", options: OpenOptions(readOnly: true, openBacking: false))
        defer { try? img.close() }
        #expect(img.backing == nil)
        #expect(try img.blockStatus(at: 0, maxLength: 1 << 20).state == .unallocated)
        #expect(try img.blockStatus(at: 1 << 20, maxLength: 1 << 20).state == .zero)
        #expect(try img.blockStatus(at: 2 << 20, maxLength: 1 << 20).state == .data)
    }

    @Test func parentOutsideTheDirectoryFollowsThePolicy() throws {
        let dir = TS.tempDir()
        try FileManager.default.createDirectory(atPath: dir + "/sub", withIntermediateDirectories: true)
        _ = try Self.make(dir, parentName: "..\\parent.vhdx")
        try FileManager.default.moveItem(atPath: dir + "/child.vhdx", toPath: dir + "/sub/child.vhdx")
        #expect { _ = try DiskImage.open(path: dir + "/sub/child.vhdx", options: OpenOptions(readOnly: true, backingPolicy: .confined)) } throws: { e in
            (e as? VireoError)?.code == .permissionDenied
        }
        let img = try DiskImage.open(path: dir + "/sub/child.vhdx", readOnly: true)
        #expect(img.backing != nil)
        try img.close()
        try FileManager.default.removeItem(atPath: dir + "/parent.vhdx")
        #expect { _ = try DiskImage.open(path: dir + "/sub/child.vhdx", readOnly: true) } throws: { e in (e as? VireoError)?.code == .notFound }
    }

    @Test(.enabled(if: TS.hasVireo, "needs the vireo binary"))
    func cliFlattensToQcow2ThatQemuAccepts() throws {
        let dir = TS.tempDir()
        let expected = try Self.make(dir)
        let out = dir + "/flat.qcow2", raw = dir + "/expected.raw"
        try TS.vireoRun(["convert", "-O", "qcow2", dir + "/child.vhdx", out])
        try TS.qemuCheck(out)
        try TS.writeFile(raw, expected)
        try TS.qimg("compare", "-q", "-f", "raw", "-F", "qcow2", raw, out)
        let info = try TS.vireoRun(["info", dir + "/child.vhdx"]).out
        #expect(info.contains("subformat: differencing") && info.contains("backing file: parent.vhdx"), "\(info)")
    }
}
