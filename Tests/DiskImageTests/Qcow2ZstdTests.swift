import DiskImage
import Foundation
import Testing
import VireoSupport

/// qcow2 compression_type=zstd: images qemu-img writes read back identical; images Vireo writes
/// pass qemu-img check and compare; damaged zstd clusters are clear errors.
@Suite(.enabled(if: TS.hasQemu, "needs qemu-img and qemu-io (apt-get install qemu-utils)"))
struct Qcow2ZstdTests {
    /// 4 MiB: compressible runs, an incompressible cluster, zero clusters, an odd tail.
    static func sample() -> [UInt8] {
        var data = [UInt8](repeating: 0, count: (4 << 20) + 12800)
        for i in 0..<data.count where (i / 4096) % 3 != 0 { data[i] = UInt8(truncatingIfNeeded: i / 777) }
        data.replaceSubrange(0..<65536, with: TS.pattern(65536, seed: 7))
        for i in (2 << 20)..<((2 << 20) + 131072) { data[i] = 0 }
        return data
    }

    static func qemuInfo(_ p: String) throws -> String { try TS.qimg("info", "--output", "json", p).out }

    @Test func readsQemuZstdImage() throws {
        let dir = TS.tempDir()
        let raw = dir + "/src.raw", q = dir + "/z.qcow2"
        var data = Self.sample()
        try TS.writeFile(raw, data)
        try TS.qimg("convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", raw, q)
        #expect(try Self.qemuInfo(q).contains("\"compression-type\": \"zstd\""))
        let img = try DiskImage.open(path: q, readOnly: true)
        #expect(try TS.readAll(img) == data)
        #expect(try img.blockStatus(at: 65536, maxLength: 65536).compressed)
        #expect((img as? Qcow2Image)?.header.compression == .zstd)
        try img.close()
        // Writing into it (copy-on-write out of zstd clusters) keeps qemu's view identical.
        let w = try DiskImage.open(path: q)
        try TS.write(w, [9, 8, 7, 6, 5], at: 70000)
        data.replaceSubrange(70000..<70005, with: [9, 8, 7, 6, 5])
        try w.close()
        try TS.qemuCheck(q)
        #expect(try TS.qemuContents(q) == data)
        // Cluster sizes other than 64 KiB.
        for cs in ["4096", "2M"] {
            let q2 = dir + "/z\(cs).qcow2"
            try TS.qimg("convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd,cluster_size=\(cs)", raw, q2)
            let i2 = try DiskImage.open(path: q2, readOnly: true)
            #expect(try TS.readAll(i2) == Self.sample(), "cluster_size=\(cs)")
            try i2.close()
        }
    }

    @Test func writesZstdThatQemuReads() throws {
        let dir = TS.tempDir()
        let raw = dir + "/src.raw", q = dir + "/v.qcow2"
        let data = Self.sample()
        try TS.writeFile(raw, data)
        let src = try DiskImage.open(path: raw, readOnly: true)
        var o = ImageOperations.ConvertOptions()
        o.format = .qcow2
        o.compress = true
        o.qcow2.compressionType = .zstd
        try ImageOperations.convert(src, to: q, options: o)
        try src.close()
        try TS.qemuCheck(q)
        try TS.qimg("compare", raw, q)
        let info = try Self.qemuInfo(q)
        #expect(info.contains("\"compression-type\": \"zstd\""), "\(info)")
        // Smaller than the zlib flavour would not be guaranteed; smaller than raw is.
        let size = try FileManager.default.attributesOfItem(atPath: q)[.size] as? Int ?? 0
        #expect(size < data.count / 2, "zstd output is \(size) bytes")
        // qemu writes into Vireo's zstd image; Vireo reads qemu's result.
        try TS.qio("-c", "write -P 0x5a 100k 8k", q)
        let img = try DiskImage.open(path: q, readOnly: true)
        #expect(try TS.readAll(img) == TS.qemuContents(q))
        try img.close()
    }

    @Test func cliCreateAndConvertWithZstd() throws {
        guard TS.hasVireo else { return }
        let dir = TS.tempDir()
        let raw = dir + "/src.raw", c = dir + "/c.qcow2", e = dir + "/e.qcow2"
        try TS.writeFile(raw, Self.sample())
        try TS.vireoRun(["convert", "-O", "qcow2", "-c", "-o", "compression_type=zstd", raw, c])
        try TS.qemuCheck(c)
        try TS.qimg("compare", raw, c)
        #expect(try Self.qemuInfo(c).contains("\"compression-type\": \"zstd\""))
        #expect(try TS.vireoRun(["info", c]).out.contains("compression type: zstd"))
        let out = try TS.vireoRun(["create", "-f", "qcow2", "-o", "compression_type=zstd", e, "16M"]).out
        #expect(out.contains("compression_type=zstd"))
        try TS.qemuCheck(e)
        #expect(try Self.qemuInfo(e).contains("\"compression-type\": \"zstd\""))
        // qemu compresses into Vireo's empty zstd image; Vireo reads it back.
        let img0 = try TS.readFile(raw)
        try TS.qio("-c", "write -c -P 0x77 0 64k", e)
        let img = try DiskImage.open(path: e, readOnly: true)
        #expect(try TS.read(img, 65536, at: 0) == [UInt8](repeating: 0x77, count: 65536))
        #expect(try img.blockStatus(at: 0, maxLength: 65536).compressed)
        try img.close()
        _ = img0
        // Unknown compression types are refused before anything is written.
        let bad = try TS.vireoRun(["create", "-f", "qcow2", "-o", "compression_type=lz4", dir + "/x.qcow2", "1M"], check: false)
        #expect(bad.status != 0 && !FileManager.default.fileExists(atPath: dir + "/x.qcow2"))
    }

    /// Hostile zstd images: garbage frames, truncated frames, unknown type, a missing feature bit.
    @Test func hostileZstdClusters() throws {
        let dir = TS.tempDir()
        let raw = dir + "/src.raw", q = dir + "/z.qcow2"
        var data = [UInt8](repeating: 0, count: 1 << 20)
        for i in 0..<data.count { data[i] = UInt8(truncatingIfNeeded: (i / 100) % 7) }
        try TS.writeFile(raw, data)
        try TS.qimg("convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", raw, q)
        let b = try TS.readFile(q)
        // Each zstd frame starts with the magic 28 b5 2f fd.
        var frames: [Int] = []
        var i = 65536
        while i + 4 <= b.count {
            if b[i] == 0x28 && b[i + 1] == 0xb5 && b[i + 2] == 0x2f && b[i + 3] == 0xfd { frames.append(i) }
            i += 1
        }
        #expect(!frames.isEmpty)
        guard let f = frames.first else { return }
        func expectError(_ bytes: [UInt8], _ text: String, _ label: String) throws {
            let p = dir + "/\(label).qcow2"
            try TS.writeFile(p, bytes)
            do {
                let img = try DiskImage.open(path: p, readOnly: true)
                defer { try? img.close() }
                _ = try TS.readAll(img)
                Issue.record("\(label): accepted; expected '\(text)'")
            } catch let e as VireoError {
                #expect(e.description.contains(text), "\(label): \(e.description)")
            }
        }
        var x = b
        for k in 4..<40 { x[f + k] = 0xff }
        try expectError(x, "compressed data", "garbage")
        // Frame cut short: the file ends 10 bytes into the last frame.
        if let last = frames.last { try expectError(Array(b[0..<(last + 10)]), "compressed", "truncated") }
        // Compression type 2 (unknown), and zstd named without the incompatible bit.
        x = b; x[104] = 2
        try expectError(x, "unknown compression type 2", "type2")
        x = b; x[79] &= ~UInt8(1 << 3)
        try expectError(x, "feature bit is clear", "nobit")
        // convert of a damaged image leaves no output behind.
        x = b
        for k in 4..<40 { x[f + k] = 0xff }
        let p = dir + "/garbage2.qcow2"
        try TS.writeFile(p, x)
        let src = try DiskImage.open(path: p, readOnly: true)
        #expect(throws: VireoError.self) { try ImageOperations.convert(src, to: dir + "/out.qcow2", options: ImageOperations.ConvertOptions()) }
        #expect(!FileManager.default.fileExists(atPath: dir + "/out.qcow2"))
        try src.close()
    }
}
