import DiskImage
import Foundation
import Testing
import VireoSupport

/// Images qemu-img writes read byte-identical through Vireo; images Vireo writes pass qemu-img check/compare.
@Suite(.enabled(if: TS.hasQemu, "needs qemu-img and qemu-io (apt-get install qemu-utils)"))
struct QemuInteropTests {
    /// Writes a recognizable mix with qemu-io: data, zero clusters, unaligned pieces.
    static func qemuFill(_ path: String, extra: [String] = []) throws {
        var args: [String] = []
        for c in ["write -P 0x11 0 300k", "write -P 0x22 1M 64k", "write -P 0x33 1500k 4k", "write -z 64k 128k", "write -P 0x44 3m 1000", "write -P 0x55 7m 1m"] + extra {
            args += ["-c", c]
        }
        try TS.run(TS.qemuIO ?? "qemu-io", args + [path])
    }

    func assertSameAsQemu(_ path: String, format: String? = nil, file: String = #filePath, line: Int = #line) throws {
        let ref = try TS.qemuContents(path, format: format)
        let img = try DiskImage.open(path: path, format: format.flatMap { DiskImageFormat(name: $0) }, readOnly: true)
        defer { try? img.close() }
        #expect(img.virtualSize == UInt64(ref.count))
        let mine = try TS.readAll(img)
        #expect(mine == ref, "\(path) differs from qemu's reading")
    }

    @Test(arguments: [512, 2 << 20] as [Int])
    func readsQemuClusterSizes(cs: Int) throws {
        let p = TS.tempDir() + "/q.qcow2"
        try TS.qimg("create", "-q", "-f", "qcow2", "-o", "cluster_size=\(cs)", p, "9M")
        try Self.qemuFill(p)
        try assertSameAsQemu(p)
    }

    @Test func readsQemuCompressedImage() throws {
        let dir = TS.tempDir()
        let raw = dir + "/src.raw", q = dir + "/c.qcow2"
        var data = [UInt8](repeating: 0, count: 4 << 20)
        for i in 0..<data.count where (i / 4096) % 3 != 0 { data[i] = UInt8(truncatingIfNeeded: i / 777) }
        data.replaceSubrange(0..<65536, with: TS.pattern(65536, seed: 1))   // incompressible cluster
        try TS.writeFile(raw, data)
        try TS.qimg("convert", "-c", "-O", "qcow2", raw, q)
        let img = try DiskImage.open(path: q, readOnly: true)
        #expect(try TS.readAll(img) == data)
        let st = try img.blockStatus(at: 65536, maxLength: 65536)
        #expect(st.compressed)
        try img.close()
        // Vireo writes into a compressed image (COW out of compressed clusters), qemu agrees.
        let w = try DiskImage.open(path: q)
        try TS.write(w, [1, 2, 3, 4], at: 70000)
        data.replaceSubrange(70000..<70004, with: [1, 2, 3, 4])
        try w.close()
        try TS.qemuCheck(q)
        #expect(try TS.qemuContents(q) == data)
    }

    @Test func readsThreeDeepChainWithZeroClusters() throws {
        let dir = TS.tempDir()
        let a = dir + "/a.qcow2", b = dir + "/b.qcow2", c = dir + "/c.qcow2"
        try TS.qimg("create", "-q", "-f", "qcow2", a, "8M")
        try TS.qio("-c", "write -P 0xaa 0 8M", a)
        try TS.qimg("create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", b)
        try TS.qio("-c", "write -z 1M 2M", "-c", "write -P 0xbb 4M 64k", b)
        try TS.qimg("create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "-o", "cluster_size=4096", c)
        try TS.qio("-c", "write -P 0xcc 1500k 8k", "-c", "write -z 6M 512k", c)
        try assertSameAsQemu(c)
        let img = try DiskImage.open(path: c, readOnly: true)
        #expect(img.chainLength == 2)
        // map agrees with qemu-img map
        let ours = try ImageOperations.map(img)
        try img.close()
        let theirs = try TS.qimg("map", "--output", "json", c).out
        let qemuEntries = theirs.split(separator: "\n").count
        #expect(ours.count == qemuEntries, "map: \(ours.count) extents vs qemu's \(qemuEntries)\n\(theirs)")
        if TS.hasVireo {
            let mine = try TS.vireoRun(["map", "--output", "json", c]).out
            #expect(mine.trimmingCharacters(in: .whitespacesAndNewlines) == theirs.trimmingCharacters(in: .whitespacesAndNewlines))
        }
    }

    @Test func readsQemuInternalSnapshots() throws {
        let dir = TS.tempDir()
        let p = dir + "/s.qcow2"
        try TS.qimg("create", "-q", "-f", "qcow2", p, "4M")
        try TS.qio("-c", "write -P 0x01 0 4M", p)
        try TS.qimg("snapshot", "-c", "first", p)
        try TS.qio("-c", "write -P 0x02 1M 1M", "-c", "write -z 0 64k", p)
        try TS.qimg("snapshot", "-c", "second", p)
        try TS.qio("-c", "write -P 0x03 3M 100k", p)
        let firstRef = try TS.qemuContents(p, snapshot: "first")
        let secondRef = try TS.qemuContents(p, snapshot: "second")
        try assertSameAsQemu(p)
        let img = try Qcow2Image.open(path: p)
        #expect(img.snapshotList.map(\.name) == ["first", "second"])
        try img.applySnapshot(name: "first")
        #expect(try TS.readAll(img) == firstRef)
        try img.applySnapshot(name: "second")
        #expect(try TS.readAll(img) == secondRef)
        try img.deleteSnapshot(name: "first")
        try img.close()
        try TS.qemuCheck(p)
        #expect(try TS.qemuContents(p) == secondRef)
        #expect(try TS.qemuContents(p, snapshot: "second") == secondRef)
    }

    @Test(arguments: ["monolithicSparse", "streamOptimized", "monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat"])
    func readsQemuVMDK(subformat: String) throws {
        let dir = TS.tempDir()
        let raw = dir + "/src.raw", v = dir + "/d.vmdk"
        try TS.qimg("create", "-q", "-f", "raw", raw, "9M")
        try Self.qemuFill(raw)
        try TS.qimg("convert", "-O", "vmdk", "-o", "subformat=\(subformat)", raw, v)
        let img = try DiskImage.open(path: v, readOnly: true)
        #expect(img.format == .vmdk)
        #expect(try TS.readAll(img) == TS.readFile(raw))
        try img.close()
        #expect(throws: VireoError.self) { _ = try DiskImage.open(path: v) }   // read-only import
    }

    @Test(arguments: ["fixed", "dynamic"])
    func readsQemuVHD(subformat: String) throws {
        let dir = TS.tempDir()
        let raw = dir + "/src.raw", v = dir + "/d.vhd"
        try TS.qimg("create", "-q", "-f", "raw", raw, "9M")
        try Self.qemuFill(raw)
        try TS.qimg("convert", "-O", "vpc", "-o", "subformat=\(subformat)", raw, v)
        let img = try DiskImage.open(path: v, readOnly: true)
        #expect(img.format == .vhd)
        try img.close()
        try assertSameAsQemu(v, format: "vpc")
    }

    @Test func readsQcow2Version2() throws {
        let p = TS.tempDir() + "/v2.qcow2"
        try TS.qimg("create", "-q", "-f", "qcow2", "-o", "compat=0.10", p, "9M")
        try Self.qemuFill(p)
        try assertSameAsQemu(p)
        #expect(throws: VireoError.self) { _ = try DiskImage.open(path: p) }   // v2 is read-only
    }

    @Test(arguments: [1, 8, 64] as [Int])
    func writesQemuImagesWithOtherRefcountWidths(bits: Int) throws {
        let p = TS.tempDir() + "/rc.qcow2"
        try TS.qimg("create", "-q", "-f", "qcow2", "-o", "refcount_bits=\(bits),cluster_size=4096", p, "16M")
        let img = try DiskImage.open(path: p)
        let data = TS.pattern(3 << 20, seed: UInt64(bits))
        try TS.write(img, data, at: 5 << 20)
        try img.close()
        try TS.qemuCheck(p)
        #expect(Array(try TS.qemuContents(p)[(5 << 20)..<(8 << 20)]) == data)
    }

    @Test func vireoLibraryImagesPassQemuCheckAtEveryClusterSize() throws {
        for bits in 9...21 {
            let p = TS.tempDir() + "/c\(bits).qcow2"
            let cs = UInt64(1) << UInt64(bits)
            try Qcow2Image.create(path: p, size: 24 << 20, options: Qcow2CreateOptions(clusterSize: cs))
            let img = try DiskImage.open(path: p)
            let data = TS.pattern(5 << 20, seed: UInt64(bits))
            try TS.write(img, data, at: 1_234_567)
            try img.writeZeroes(offset: 16 << 20, length: 4 << 20)
            try img.close()
            try TS.qemuCheck(p)
            let ref = try TS.qemuContents(p)
            #expect(Array(ref[1_234_567..<(1_234_567 + data.count)]) == data, "cluster size \(cs)")
            #expect(ref[(16 << 20)..<(20 << 20)].allSatisfy { $0 == 0 })
        }
    }
}

/// The `vireo disk` CLI against qemu-img.
@Suite(.enabled(if: TS.hasQemu && TS.hasVireo, "needs qemu-utils and the vireo binary"))
struct CLIInteropTests {
    @Test func createConvertCompressSnapshotCloneAllPassQemuCheck() throws {
        let dir = TS.tempDir()
        let raw = dir + "/src.raw"
        try TS.qimg("create", "-q", "-f", "raw", raw, "12M")
        try QemuInteropTests.qemuFill(raw)
        // create + info
        let img = dir + "/new.qcow2"
        try TS.vireoRun(["create", "-f", "qcow2", "-o", "cluster_size=4096", img, "12M"])
        try TS.qemuCheck(img)
        let info = try TS.vireoRun(["info", "--output", "json", img]).out
        #expect(info.contains("\"virtual-size\": 12582912") && info.contains("\"cluster-size\": 4096"))
        // convert, convert -c, convert back to raw
        for (name, extra) in [("plain", [String]()), ("comp", ["-c"]), ("small", ["-o", "cluster_size=512"])] {
            let out = dir + "/\(name).qcow2"
            try TS.vireoRun(["convert", "-p", "-O", "qcow2"] + extra + [raw, out])
            try TS.qemuCheck(out)
            try TS.qimg("compare", raw, out)
            let back = dir + "/\(name).back.raw"
            try TS.vireoRun(["convert", "-O", "raw", out, back])
            try TS.qimg("compare", "-f", "raw", "-F", "raw", raw, back)
        }
        let comp = try TS.qimg("check", "--output", "json", dir + "/comp.qcow2").out
        #expect(!comp.contains("\"compressed-clusters\": 0"), "convert -c produced compressed clusters")
        // snapshot
        let snap = dir + "/plain.qcow2"
        try TS.vireoRun(["snapshot", "-c", "before", snap])
        try TS.qio("-c", "write -P 0x77 0 2M", snap)
        let list = try TS.vireoRun(["snapshot", "-l", snap]).out
        #expect(list.contains("before"))
        try TS.vireoRun(["snapshot", "-a", "before", snap])
        try TS.qemuCheck(snap)
        try TS.qimg("compare", raw, snap)
        try TS.vireoRun(["snapshot", "-d", "before", snap])
        try TS.qemuCheck(snap)
        // linked clone, commit, rebase
        let clone = dir + "/clone.qcow2"
        try TS.vireoRun(["create", "-f", "qcow2", "-b", "plain.qcow2", "-F", "qcow2", clone])
        try TS.qio("-c", "write -P 0x99 5M 100k", clone)
        let cloneRef = try TS.qemuContents(clone)
        try TS.vireoRun(["rebase", "-b", "comp.qcow2", clone])     // same content, different file
        try TS.qemuCheck(clone)
        #expect(try TS.qemuContents(clone) == cloneRef)
        try TS.vireoRun(["rebase", "-b", "", clone])               // standalone
        #expect(try TS.qemuContents(clone) == cloneRef)
        #expect(!(try TS.qimg("info", clone).out.contains("backing file")))
        let c2 = dir + "/c2.qcow2"
        try TS.vireoRun(["create", "-f", "qcow2", "-b", "plain.qcow2", "-F", "qcow2", c2])
        try TS.qio("-c", "write -P 0x98 1M 100k", "-c", "write -z 3M 64k", c2)
        let c2Ref = try TS.qemuContents(c2)
        try TS.vireoRun(["commit", c2])
        try TS.qemuCheck(c2)
        try TS.qemuCheck(snap)
        #expect(try TS.qemuContents(snap) == c2Ref)
        #expect(try TS.qemuContents(c2) == c2Ref)
        // compare exit codes
        #expect(try TS.vireoRun(["compare", raw, snap], check: false).status == 1)
        #expect(try TS.vireoRun(["compare", c2, snap], check: false).status == 0)
        // resize
        try TS.vireoRun(["resize", c2, "+1G"])
        try TS.qemuCheck(c2)
        #expect(try TS.qimg("info", "--output", "json", c2).out.contains("\"virtual-size\": \(12 * 1048576 + 1073741824)"))
        #expect(try TS.vireoRun(["resize", c2, "1M"], check: false).status != 0)
        // check on a qemu image + exit status
        let chk = try TS.vireoRun(["check", "--output", "json", snap]).out
        #expect(chk.contains("\"check-errors\": 0"))
    }

    @Test(arguments: ["off", "metadata", "falloc", "full"])
    func createPreallocationModes(mode: String) throws {
        let dir = TS.tempDir()
        let q = dir + "/p.qcow2"
        try TS.vireoRun(["create", "-f", "qcow2", "-o", "preallocation=\(mode)", q, "32M"])
        try TS.qemuCheck(q)
        let map = try TS.qimg("map", "--output", "json", q).out
        #expect(map.contains("\"data\": true") == (mode != "off"))
        let raw = dir + "/p.raw"
        let r = try TS.vireoRun(["create", "-f", "raw", "-o", "preallocation=\(mode)", raw, "32M"], check: false)
        #expect(r.status == (mode == "metadata" ? 1 : 0))
    }

    @Test func benchRunsOnThinImage() throws {
        let q = TS.tempDir() + "/b.qcow2"
        try TS.vireoRun(["create", "-f", "qcow2", q, "64M"])
        let w = try TS.vireoRun(["bench", "-w", "-c", "2000", "-S", "4194304", q]).out
        #expect(w.contains("Run completed in"))
        try TS.qemuCheck(q)
        let r = try TS.vireoRun(["bench", "--random", "-c", "2000", q]).out
        #expect(r.contains("Run completed in"))
    }
}
