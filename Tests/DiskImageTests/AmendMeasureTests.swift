import DiskImage
import Foundation
import Testing
import VireoSupport

/// `vireo disk amend` and `vireo disk measure` beside qemu-img's.
@Suite(.enabled(if: TS.hasQemu, "needs qemu-img and qemu-io (apt-get install qemu-utils)"))
struct AmendMeasureTests {
    static func figures(_ out: String) -> [String] {
        out.split(separator: "\n").map { String($0) }.filter { $0.contains("size:") || $0.contains("\"") }
    }

    /// The same figures as qemu-img measure, for empty targets of several shapes and for input images.
    @Test func measureMatchesQemuImg() throws {
        guard TS.hasVireo else { return }
        let dir = TS.tempDir()
        var cases: [[String]] = [
            ["--size", "1G"], ["--size", "10G", "-o", "cluster_size=4K"], ["--size", "100G", "-o", "cluster_size=2M,refcount_bits=64"],
            ["--size", "10G", "-o", "extended_l2=on,cluster_size=128K"], ["--size", "5G", "-o", "refcount_bits=1"],
            ["--size", "3G", "-O", "raw"], ["--size", "1G", "-o", "preallocation=full"], ["--size", "12345678"],
        ]
        // Inputs: a sparse raw file, a qcow2 with data/zero/unallocated clusters, a chain, a VMDK.
        let raw = dir + "/s.raw", q = dir + "/q.qcow2", top = dir + "/top.qcow2", vmdk = dir + "/v.vmdk"
        try TS.qimg("create", "-q", "-f", "raw", raw, "20M")
        try TS.qio("-f", "raw", "-c", "write -P 1 0 100k", "-c", "write -P 2 5M 64k", "-c", "write -P 3 19M 1k", raw)
        try TS.qimg("create", "-q", "-f", "qcow2", "-o", "cluster_size=4K", q, "30M")
        try QemuInteropTests.qemuFill(q)
        try TS.qimg("create", "-q", "-f", "qcow2", "-b", "q.qcow2", "-F", "qcow2", top)
        try TS.qio("-c", "write -P 9 10M 3M", top)
        try TS.qimg("convert", "-O", "vmdk", raw, vmdk)
        for input in [raw, q, top, vmdk] {
            cases.append([input])
            cases.append(["-o", "cluster_size=512", input])
            cases.append(["-o", "cluster_size=1M", input])
            cases.append(["-O", "raw", input])
        }
        for c in cases {
            let args = (c.contains("-O") ? [] : ["-O", "qcow2"]) + c
            let theirs = try TS.run(TS.qemuImg ?? "qemu-img", ["measure"] + args).out
            let mine = try TS.vireoRun(["measure"] + args).out
            #expect(Self.figures(mine) == Self.figures(theirs), "measure \(args.joined(separator: " ")): vireo \(mine) qemu-img \(theirs)")
            let tj = try TS.run(TS.qemuImg ?? "qemu-img", ["measure", "--output", "json"] + args).out
            let mj = try TS.vireoRun(["measure", "--output", "json"] + args).out
            #expect(mj.trimmingCharacters(in: .whitespacesAndNewlines) == tj.trimmingCharacters(in: .whitespacesAndNewlines), "json \(args)")
        }
        // A convert of each input fits in what measure said.
        for input in [raw, q, top] {
            let out = dir + "/m.qcow2"
            try TS.vireoRun(["convert", "-O", "qcow2", input, out])
            let size = try FileManager.default.attributesOfItem(atPath: out)[.size] as? Int ?? 0
            let req = try ImageMeasure.measure(format: .qcow2, size: nil, source: DiskImage.open(path: input, readOnly: true)).required
            #expect(UInt64(size) <= req, "\(input): \(size) > required \(req)")
        }
    }

    @Test func amendChangesWhatQemuImgAmendDoes() throws {
        guard TS.hasVireo else { return }
        let dir = TS.tempDir()
        let p = dir + "/a.qcow2"
        try TS.qimg("create", "-q", "-f", "qcow2", p, "8M")
        try TS.qio("-c", "write -P 0x31 0 1M", p)
        let ref = try TS.qemuContents(p)
        func info() throws -> String { try TS.qimg("info", "--output", "json", p).out }
        try TS.vireoRun(["amend", "-o", "lazy_refcounts=on", p])
        #expect(try info().contains("\"lazy-refcounts\": true"))
        try TS.qemuCheck(p)
        try TS.vireoRun(["amend", "-o", "lazy_refcounts=off", p])
        #expect(try info().contains("\"lazy-refcounts\": false"))
        // Down to version 2 (no zero clusters, no snapshots), qemu reads it, and back up.
        try TS.vireoRun(["amend", "-o", "compat=0.10", p])
        #expect(try info().contains("\"compat\": \"0.10\""))
        try TS.qemuCheck(p)
        #expect(try TS.qemuContents(p) == ref)
        try TS.vireoRun(["amend", "-o", "compat=1.1", p])
        #expect(try info().contains("\"compat\": \"1.1\""))
        try TS.qemuCheck(p)
        #expect(try TS.qemuContents(p) == ref)
        // Version 2 with a zero cluster cannot go down.
        try TS.qio("-c", "write -z 2M 64k", p)
        let down = try TS.vireoRun(["amend", "-o", "compat=0.10", p], check: false)
        #expect(down.status != 0 && down.err.contains("zero clusters"), "\(down.err)")
        #expect(try info().contains("\"compat\": \"1.1\""))
        // Backing file name and size.
        try TS.qimg("create", "-q", "-f", "qcow2", dir + "/b.qcow2", "8M")
        try TS.vireoRun(["amend", "-o", "backing_file=b.qcow2,backing_fmt=qcow2", p])
        #expect(try info().contains("\"backing-filename\": \"b.qcow2\""))
        try TS.vireoRun(["amend", "-o", "backing_file=", p])
        #expect(try !info().contains("backing-filename"))
        try TS.vireoRun(["amend", "-o", "size=16M", p])
        #expect(try info().contains("\"virtual-size\": 16777216"))
        try TS.qemuCheck(p)
        // Options that would rewrite the image are refused before anything changes.
        for bad in ["cluster_size=4K", "refcount_bits=8", "extended_l2=on", "compression_type=zstd", "data_file=x.raw", "data_file_raw=on"] {
            let r = try TS.vireoRun(["amend", "-o", bad, p], check: false)
            #expect(r.status != 0, "amend -o \(bad) was accepted")
        }
        // Data file: rename it after moving it; drop the raw promise.
        let d = dir + "/d.qcow2"
        try TS.qimg("create", "-q", "-f", "qcow2", "-o", "data_file=\(dir)/d1.raw,data_file_raw=on", d, "4M")
        try TS.qio("-c", "write -P 0x44 0 64k", d)
        try FileManager.default.moveItem(atPath: dir + "/d1.raw", toPath: dir + "/d2.raw")
        try TS.vireoRun(["amend", "-o", "data_file=\(dir)/d2.raw,data_file_raw=off", d])
        let di = try TS.qimg("info", "--output", "json", d).out
        #expect(di.contains("\"data-file\": \"\(dir)/d2.raw\"") && di.contains("\"data-file-raw\": false"), "\(di)")
        try TS.qemuCheck(d)
        let img = try DiskImage.open(path: d, readOnly: true)
        #expect(try TS.read(img, 4, at: 0) == [0x44, 0x44, 0x44, 0x44])
        try img.close()
        // Amend on a non-qcow2 file is refused.
        let r = try TS.vireoRun(["amend", "-o", "lazy_refcounts=on", dir + "/d2.raw"], check: false)
        #expect(r.status != 0)
    }
}
