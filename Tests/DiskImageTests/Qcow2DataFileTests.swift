import DiskImage
import Foundation
import Testing
import VireoSupport

/// qcow2 external data files (data_file, data_file_raw): qemu-img's images read identical, Vireo's
/// pass qemu-img check and compare, a raw data file stays the disk's raw image, and the data file
/// is a referenced file under the backing policy. qemu-img resolves a relative data file name
/// against its working directory, Vireo against the image's directory: the images both read here
/// name their data files by absolute path.
@Suite(.enabled(if: TS.hasQemu, "needs qemu-img and qemu-io (apt-get install qemu-utils)"))
struct Qcow2DataFileTests {
    static func info(_ p: String) throws -> String { try TS.qimg("info", "--output", "json", p).out }

    @Test(arguments: [false, true])
    func readsQemuDataFile(raw: Bool) throws {
        let dir = TS.tempDir()
        let q = dir + "/d.qcow2"
        try TS.qimg("create", "-q", "-f", "qcow2", "-o", "data_file=\(dir)/d.data,data_file_raw=\(raw ? "on" : "off")", q, "6M")
        for c in ["write -P 0x11 0 300k", "write -P 0x22 1M 64k", "write -z 1M 32k", "write -P 0x33 1500k 4k",
                  "discard 2M 64k", "write -P 0x44 5M 1000"] {
            try TS.qio("-c", c, q)
        }
        let ref = try TS.qemuContents(q)
        let img = try DiskImage.open(path: q, readOnly: true)
        #expect(try TS.readAll(img) == ref)
        #expect(img.referencedFiles.contains { $0.hasSuffix("/d.data") })
        try img.close()
        // Vireo writes into qemu's image; qemu reads it, and check is clean.
        var model = ref
        let w = try DiskImage.open(path: q)
        try TS.write(w, [UInt8](repeating: 0x99, count: 70000), at: 3 << 20)
        model.replaceSubrange((3 << 20)..<((3 << 20) + 70000), with: [UInt8](repeating: 0x99, count: 70000))
        try w.writeZeroes(offset: 0, length: 128 << 10)
        for i in 0..<(128 << 10) { model[i] = 0 }
        try w.close()
        try TS.qemuCheck(q)
        #expect(try TS.qemuContents(q) == model)
        if raw {
            let data = try TS.readFile(dir + "/d.data")
            #expect(Array(data.prefix(model.count)) == model, "a raw data file is the disk's raw image")
        }
    }

    @Test(arguments: [false, true])
    func writesDataFileQemuReads(raw: Bool) throws {
        let dir = TS.tempDir()
        let q = dir + "/v.qcow2"
        var o = Qcow2CreateOptions()
        o.dataFile = dir + "/v.data"
        o.dataFileRaw = raw
        try Qcow2Image.create(path: q, size: 5 << 20, options: o)
        let info = try Self.info(q)
        #expect(info.contains("\"data-file\": \"\(dir)/v.data\""), "\(info)")
        #expect(info.contains("\"data-file-raw\": \(raw)"), "\(info)")
        var model = [UInt8](repeating: 0, count: 5 << 20)
        let img = try DiskImage.open(path: q)
        func put(_ b: [UInt8], _ off: Int) throws {
            try TS.write(img, b, at: UInt64(off)); model.replaceSubrange(off..<off + b.count, with: b)
        }
        try put(TS.pattern(200_000, seed: 1), 1000)
        try put([UInt8](repeating: 0x5a, count: 65536), 2 << 20)
        try put([1, 2, 3], 4 << 20 + 17)
        try img.writeZeroes(offset: 0, length: 65536)
        for i in 0..<65536 { model[i] = 0 }
        try img.discard(offset: 2 << 20, length: 65536)
        if raw {
            // A raw data file keeps discarded data (qemu-img's behaviour too): the model keeps it.
        } else {
            for i in (2 << 20)..<((2 << 20) + 65536) { model[i] = 0 }
        }
        #expect((img as? Qcow2Image)?.dataFilePath?.hasSuffix("/v.data") == true)
        #expect(throws: VireoError.self) { try (img as? Qcow2Image)?.createSnapshot(name: "s") }
        try img.close()
        try TS.qemuCheck(q)
        #expect(try TS.qemuContents(q) == model)
        let res = try Qcow2Image.open(path: q, readOnly: true).check()
        #expect(res.corruptions == 0 && res.leaks == 0, "\(res.messages.prefix(3))")
        if raw {
            let data = try TS.readFile(dir + "/v.data")
            #expect(data == model, "a raw data file is the disk's raw image")
        }
        // qemu writes into Vireo's image; Vireo reads it.
        try TS.qio("-c", "write -P 0x77 3M 8k", q)
        for i in (3 << 20)..<((3 << 20) + 8192) { model[i] = 0x77 }
        let r = try DiskImage.open(path: q, readOnly: true)
        #expect(try TS.readAll(r) == model)
        try r.close()
    }

    @Test func cliConvertWithDataFileAndConfinement() throws {
        guard TS.hasVireo else { return }
        let dir = TS.tempDir()
        let src = dir + "/s.raw", q = dir + "/c.qcow2"
        var data = TS.pattern(2 << 20, seed: 8)
        for i in (512 << 10)..<(1 << 20) { data[i] = 0 }
        try TS.writeFile(src, data)
        try TS.vireoRun(["convert", "-O", "qcow2", "-o", "data_file=\(dir)/c.raw,data_file_raw=on", src, q])
        try TS.qemuCheck(q)
        try TS.qimg("compare", src, q)
        #expect(try TS.readFile(dir + "/c.raw") == data)
        let human = try TS.vireoRun(["info", q]).out
        #expect(human.contains("data file: \(dir)/c.raw") && human.contains("data file raw: true"), "\(human)")
        // -c with a data file is refused and leaves nothing.
        let bad = try TS.vireoRun(["convert", "-c", "-O", "qcow2", "-o", "data_file=\(dir)/x.raw", src, dir + "/x.qcow2"], check: false)
        #expect(bad.status != 0 && !FileManager.default.fileExists(atPath: dir + "/x.qcow2"))
        // An absolute data file name is refused under the confined policy, like a backing file.
        let abs = dir + "/abs.qcow2"
        try TS.qimg("create", "-q", "-f", "qcow2", "-o", "data_file=\(dir)/abs.data", abs, "1M")
        #expect { _ = try DiskImage.open(path: abs, options: OpenOptions(readOnly: true, backingPolicy: .confined)) } throws: { e in
            (e as? VireoError)?.message.contains("external data file") == true
        }
        #expect { _ = try DiskImage.open(path: abs, options: OpenOptions(readOnly: true, backingPolicy: .forbidden)) } throws: { _ in true }
        let ok = try DiskImage.open(path: abs, options: OpenOptions(readOnly: true, backingPolicy: .any))
        #expect(ok.referencedFiles.contains(dir + "/abs.data"))
        try ok.close()
        // A missing data file is a clear error.
        try FileManager.default.removeItem(atPath: dir + "/abs.data")
        #expect { _ = try DiskImage.open(path: abs, readOnly: true) } throws: { e in
            (e as? VireoError)?.message.contains("does not exist") == true
        }
    }

    /// Hostile: the bit without a name, a data cluster away from its guest offset, a compressed
    /// entry, snapshots with a data file, a name overrunning the header cluster.
    @Test func hostileDataFileHeaders() throws {
        let dir = TS.tempDir()
        let q = dir + "/h.qcow2"
        try TS.qimg("create", "-q", "-f", "qcow2", "-o", "data_file=\(dir)/h.data", q, "4M")
        try TS.qio("-c", "write -P 0x11 0 64k", "-c", "write -P 0x22 1M 64k", q)
        let b = try TS.readFile(q)
        func rd(_ off: Int) -> UInt64 { b[off..<off + 8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) } }
        func put(_ x: inout [UInt8], _ off: Int, _ v: UInt64, _ n: Int = 8) { for i in 0..<n { x[off + i] = UInt8(truncatingIfNeeded: v >> UInt64(8 * (n - 1 - i))) } }
        func expectError(_ x: [UInt8], _ text: String, _ label: String) throws {
            let p = dir + "/\(label).qcow2"
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
        // Find the DATA extension (type 0x44415441) after the 112-byte header.
        var ext = 112
        while ext + 8 <= 65536 && (b[ext] != 0x44 || b[ext + 1] != 0x41 || b[ext + 2] != 0x54 || b[ext + 3] != 0x41) {
            let len = Int(b[ext + 4]) << 24 | Int(b[ext + 5]) << 16 | Int(b[ext + 6]) << 8 | Int(b[ext + 7])
            if b[ext..<ext + 4].allSatisfy({ $0 == 0 }) { break }
            ext += 8 + ((len + 7) & ~7)
        }
        var x = b; put(&x, ext, 0x1234_5678, 4)                 // rename the extension: bit set, no name
        try expectError(x, "does not name it", "noname")
        x = b; put(&x, ext + 4, 70000, 4)                        // name length overruns the cluster
        try expectError(x, "overruns", "longname")
        let l2 = Int(rd(Int(rd(40))) & 0x00ff_ffff_ffff_fe00)
        x = b; put(&x, l2 + 16 * 8, (rd(l2 + 16 * 8) & ~UInt64(0xffff_ffff_fe00)) | 0x20_0000 | (1 << 63))   // 1M maps to 2M
        try expectError(x, "must be equal", "moved")
        x = b; put(&x, l2 + 8, (1 << 62) | 0x10000)              // compressed
        try expectError(x, "compressed cluster", "compressed")
        x = b; put(&x, 60, 1, 4); put(&x, 64, 0x10000)           // one snapshot
        try expectError(x, "internal snapshots", "snap")
        // A data file that is shorter than the disk reads zeros past its end, never garbage.
        let short = dir + "/short.qcow2"
        try TS.writeFile(short, b)
        try FileManager.default.copyItem(atPath: dir + "/h.data", toPath: dir + "/s.data")
        var sb = b
        let name = Array("\(dir)/s.data".utf8)   // same length as .../h.data: the extension keeps its size
        for (i, c) in name.enumerated() { sb[ext + 8 + i] = c }
        try TS.writeFile(short, sb)
        truncate(dir + "/s.data", 4096)
        let img = try DiskImage.open(path: short, readOnly: true)
        #expect(try TS.read(img, 8192, at: 0) == [UInt8](repeating: 0x11, count: 4096) + [UInt8](repeating: 0, count: 4096))
        try img.close()
    }
}
