import DiskImage
import Foundation
import Testing
import VireoSupport

/// A VHDX whose log was left dirty reads, through Vireo's in-memory replay, exactly as qemu-img
/// reads it after replaying the log into the file (qemu-img check -r all opens it read-write,
/// which replays). Vireo never writes the file.
@Suite(.enabled(if: TS.hasQemu, "needs qemu-img and qemu-io (apt-get install qemu-utils)"))
struct VHDXLogReplayTests {
    typealias H = HostileVHDXVDITests

    enum Desc {
        case data(offset: UInt64, page: [UInt8])
        case zero(offset: UInt64, length: UInt64)
    }

    /// One log entry as [MS-VHDX] 2.3.1 lays it out, checksummed.
    static func entry(seq: UInt64, tail: UInt32, guid: [UInt8], flushed: UInt64, last: UInt64, _ descs: [Desc]) -> [UInt8] {
        let descSectors = (64 + 32 * descs.count + 4095) / 4096
        let pages = descs.compactMap { d -> [UInt8]? in if case .data(_, let p) = d { return p } else { return nil } }
        var b = [UInt8](repeating: 0, count: (descSectors + pages.count) * 4096)
        b.replaceSubrange(0..<4, with: Array("loge".utf8))
        H.le32(&b, 8, UInt32(b.count))
        H.le32(&b, 12, tail)
        H.le64(&b, 16, seq)
        H.le32(&b, 24, UInt32(descs.count))
        b.replaceSubrange(32..<48, with: guid)
        H.le64(&b, 48, flushed)
        H.le64(&b, 56, last)
        var sector = descSectors * 4096
        for (i, d) in descs.enumerated() {
            let o = 64 + 32 * i
            switch d {
            case .zero(let off, let len):
                b.replaceSubrange(o..<o + 4, with: Array("zero".utf8))
                H.le64(&b, o + 8, len)
                H.le64(&b, o + 16, off)
            case .data(let off, let page):
                b.replaceSubrange(o..<o + 4, with: Array("desc".utf8))
                b.replaceSubrange(o + 4..<o + 8, with: page[4092..<4096])
                b.replaceSubrange(o + 8..<o + 16, with: page[0..<8])
                H.le64(&b, o + 16, off)
                b.replaceSubrange(sector..<sector + 4, with: Array("data".utf8))
                H.le32(&b, sector + 4, UInt32(truncatingIfNeeded: seq >> 32))
                b.replaceSubrange(sector + 8..<sector + 4092, with: page[8..<4092])
                H.le32(&b, sector + 4092, UInt32(truncatingIfNeeded: seq))
                sector += 4096
            }
            H.le64(&b, o + 24, seq)
        }
        H.le32(&b, 4, H.crc32c(b[...]))
        return b
    }

    static func page(_ seed: UInt64) -> [UInt8] { TS.pattern(4096, seed: seed) }

    /// A qemu-made image (1 MiB blocks, data in block 1) and where its pieces are.
    static func base(_ dir: String) throws -> (bytes: [UInt8], log: Int, bat: Int, block1: UInt64) {
        let b = try H.qemuVHDX(dir)
        let (bat, _) = H.regions(b)
        let log = Int(H.rd64(b, (64 << 10) + 72))
        let block1 = (H.rd64(b, bat + 8) >> 20) << 20
        #expect(H.rd64(b, bat + 8) & 7 == 6, "block 1 is present")
        return (b, log, bat, block1)
    }

    /// Sets the log GUID in both headers (checksums fixed) and puts `log` at the log's start.
    static func dirty(_ b: [UInt8], logAt: Int, guid: [UInt8], _ log: [UInt8]) -> [UInt8] {
        var x = b
        for h in [64 << 10, 128 << 10] { x.replaceSubrange(h + 48..<h + 64, with: guid) }
        x.replaceSubrange(logAt..<logAt + log.count, with: log)
        H.fixChecksums(&x)
        return x
    }

    /// Vireo's reading of `path` equals qemu-img's after qemu replays a copy; the file is untouched.
    func expectSameAsQemuReplay(_ path: String) throws {
        let before = try TS.readFile(path)
        let img = try DiskImage.open(path: path, readOnly: true)
        defer { try? img.close() }
        #expect((img as? VHDXImage)?.replayedLog == true)
        let mine = try TS.readAll(img)
        #expect(try TS.readFile(path) == before, "Vireo wrote the file")
        let copy = path + ".qemu.vhdx"
        try? FileManager.default.removeItem(atPath: copy)
        try FileManager.default.copyItem(atPath: path, toPath: copy)
        try TS.run(TS.qemuImg ?? "qemu-img", ["check", "-q", "-r", "all", copy], check: false)
        #expect(try TS.readFile(copy) != before, "qemu replayed the log into its copy")
        let ref = try TS.qemuContents(copy, format: "vhdx")
        #expect(mine.count == ref.count)
        if let i = mine.indices.first(where: { $0 < ref.count && mine[$0] != ref[$0] }) {
            Issue.record("first difference at \(i): vireo \(mine[i]), qemu \(ref[i])")
        }
    }

    @Test func oneEntryMovesABlockPastTheEndOfTheFileAndRewritesData() throws {
        let dir = TS.tempDir()
        let (b, log, bat, block1) = try Self.base(dir)
        let guid: [UInt8] = (0..<16).map { UInt8(0x40 + $0) }
        let end = UInt64(b.count)
        let newBlock = ((end + (1 << 20) - 1) >> 20) << 20
        // BAT page: block 3 becomes present at newBlock, a MiB past the file's current end.
        var batPage = Array(b[bat..<bat + 4096])
        H.le64(&batPage, 3 * 8, newBlock | 6)
        let e = Self.entry(seq: 5, tail: 0, guid: guid, flushed: end, last: newBlock + (1 << 20), [
            .data(offset: UInt64(bat), page: batPage),
            .data(offset: newBlock + 8192, page: Self.page(1)),
            // The block's last page too: qemu-img grows the file only as far as the pages it
            // writes (not to LastFileOffset, as the spec asks), so both readers see the whole block.
            .data(offset: newBlock + (1 << 20) - 4096, page: Self.page(3)),
            .zero(offset: block1 + 4096, length: 8192),
            .data(offset: block1 + 65536, page: Self.page(2)),
        ])
        let p = dir + "/dirty.vhdx"
        try TS.writeFile(p, Self.dirty(b, logAt: log, guid: guid, e))
        // qemu refuses to read it without replaying; Vireo reads it replayed.
        #expect(throws: VireoError.self) { try TS.qimg("convert", "-f", "vhdx", "-O", "raw", p, dir + "/x.raw") }
        try expectSameAsQemuReplay(p)
        let img = try DiskImage.open(path: p, readOnly: true)
        defer { try? img.close() }
        #expect(try TS.read(img, 4096, at: (3 << 20) + 8192) == Self.page(1))
        #expect(try TS.read(img, 4096, at: (4 << 20) - 4096) == Self.page(3))
        #expect(try TS.read(img, 8192, at: (1 << 20) + 4096) == [UInt8](repeating: 0, count: 8192))
    }

    /// Two entries in sequence (the later overrides the earlier), then a newer entry with a bad
    /// checksum and a stale one of an older sequence: only the active sequence is replayed.
    @Test func onlyTheActiveSequenceIsReplayed() throws {
        let dir = TS.tempDir()
        let (b, log, _, block1) = try Self.base(dir)
        let guid: [UInt8] = (0..<16).map { UInt8(0x90 &+ $0 &* 3) }
        let end = UInt64(b.count)
        let e1 = Self.entry(seq: 10, tail: 0, guid: guid, flushed: end, last: end, [
            .data(offset: block1, page: Self.page(10)), .data(offset: block1 + 4096, page: Self.page(11)),
        ])
        let e2 = Self.entry(seq: 11, tail: 0, guid: guid, flushed: end, last: end, [
            .zero(offset: block1, length: 4096), .data(offset: block1 + 8192, page: Self.page(12)),
        ])
        var e3 = Self.entry(seq: 12, tail: 0, guid: guid, flushed: end, last: end, [.data(offset: block1, page: Self.page(13))])
        e3[100] ^= 0xff   // torn write: its checksum fails
        // An older sequence further on, whose tail is itself: valid, but older than 11.
        let stale = Self.entry(seq: 3, tail: UInt32(e1.count + e2.count + e3.count), guid: guid, flushed: end, last: end,
                               [.data(offset: block1 + 12288, page: Self.page(14))])
        let p = dir + "/seq.vhdx"
        try TS.writeFile(p, Self.dirty(b, logAt: log, guid: guid, e1 + e2 + e3 + stale))
        try expectSameAsQemuReplay(p)
        let img = try DiskImage.open(path: p, readOnly: true)
        defer { try? img.close() }
        #expect(try TS.read(img, 4096, at: 1 << 20) == [UInt8](repeating: 0, count: 4096))
        #expect(try TS.read(img, 4096, at: (1 << 20) + 4096) == Self.page(11))
        #expect(try TS.read(img, 4096, at: (1 << 20) + 8192) == Self.page(12))
        #expect(try TS.read(img, 4096, at: (1 << 20) + 12288) == [UInt8](repeating: 0x5a, count: 4096))
    }

    /// Random damage to a dirty log's entries, with the first entry's checksum recomputed so the
    /// damage reaches the descriptor and data-sector checks: opened (replayed or not) or
    /// refused, never a trap.
    @Test func mutatedLogsNeverCrash() throws {
        let dir = TS.tempDir()
        let (b, log, bat, block1) = try Self.base(dir)
        let guid: [UInt8] = (0..<16).map { UInt8(truncatingIfNeeded: 0x21 * ($0 + 3)) }
        let end = UInt64(b.count)
        var batPage = Array(b[bat..<bat + 4096])
        H.le64(&batPage, 2 * 8, (block1 + (1 << 20)) | 6)
        let e1 = Self.entry(seq: 7, tail: 0, guid: guid, flushed: end, last: end + (1 << 20), [
            .data(offset: UInt64(bat), page: batPage), .zero(offset: block1, length: 4096), .data(offset: block1 + (2 << 20) - 4096, page: Self.page(4)),
        ])
        let e2 = Self.entry(seq: 8, tail: 0, guid: guid, flushed: end, last: end, [.data(offset: block1 + 4096, page: Self.page(5))])
        let dirty = Self.dirty(b, logAt: log, guid: guid, e1 + e2)
        var rng: UInt64 = 0x2545_f491_4f6c_dd1d
        func next() -> UInt64 { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng }
        var replayed = 0, other = 0
        let iterations = Int(ProcessInfo.processInfo.environment["VIREO_FUZZ_ITERATIONS"] ?? "") ?? 150
        for i in 0..<iterations {
            var x = dirty
            for _ in 0..<(1 + Int(next() % 3)) {
                // Mostly the headers and descriptors of both entries, sometimes their data sectors.
                let at = log + (next() % 4 == 0 ? Int(next() % UInt64(e1.count + e2.count)) : Int(next() % 4) / 2 * e1.count + Int(next() % 192))
                switch next() % 3 {
                case 0: x[at] ^= UInt8(truncatingIfNeeded: 1 << (next() % 8))
                case 1: for k in 0..<8 { x[at + k] = 0xff }
                default: x[at] = UInt8(truncatingIfNeeded: next())
                }
            }
            let len = Int(H.rd32(x, log + 8))
            if len > 0, len % 4096 == 0, len <= 1 << 20 {
                H.le32(&x, log + 4, 0)
                H.le32(&x, log + 4, H.crc32c(x[log..<log + len]))
            }
            let p = dir + "/m\(i).vhdx"
            try TS.writeFile(p, x)
            if TS.exerciseHostile(p) == nil, let img = try? DiskImage.open(path: p, readOnly: true) {
                if (img as? VHDXImage)?.replayedLog == true { replayed += 1 } else { other += 1 }
                try? img.close()
            } else {
                other += 1
            }
            try? FileManager.default.removeItem(atPath: p)
            try? FileManager.default.removeItem(atPath: p + ".out.qcow2")
        }
        #expect(replayed > 0 && other > 0, "replayed \(replayed), other \(other)")
    }

    /// An entry vouching for an absurd or unaligned file size is not a valid entry: it is not
    /// replayed (so it cannot stretch the file to make any BAT offset look inside it).
    @Test func entryWithAbsurdFileSizesIsIgnored() throws {
        let dir = TS.tempDir()
        let (b, log, _, block1) = try Self.base(dir)
        let ref = try TS.qemuContents(dir + "/s.vhdx", format: "vhdx")
        let guid: [UInt8] = (0..<16).map { UInt8(0xa0 + $0) }
        for (flushed, last) in [(UInt64(b.count), UInt64(1) << 60), (UInt64(b.count), UInt64(b.count) + 4096), (UInt64.max & ~0xfffff, UInt64(b.count))] {
            let e = Self.entry(seq: 1, tail: 0, guid: guid, flushed: flushed, last: last, [.data(offset: block1, page: Self.page(9))])
            let p = dir + "/absurd.vhdx"
            try TS.writeFile(p, Self.dirty(b, logAt: log, guid: guid, e))
            let img = try DiskImage.open(path: p, readOnly: true)
            #expect((img as? VHDXImage)?.replayedLog == false, "flushed \(flushed) last \(last)")
            #expect(try TS.readAll(img) == ref)
            try img.close()
        }
    }

    /// A log whose head says the file was longer than it is: truncated, refused.
    @Test func truncatedFileIsRefused() throws {
        let dir = TS.tempDir()
        let (b, log, _, block1) = try Self.base(dir)
        let guid: [UInt8] = (0..<16).map { UInt8(0x11 * ($0 + 1) & 0xff) }
        let e = Self.entry(seq: 1, tail: 0, guid: guid, flushed: UInt64(b.count) + (64 << 20), last: UInt64(b.count),
                           [.data(offset: block1, page: Self.page(1))])
        let p = dir + "/trunc.vhdx"
        try TS.writeFile(p, Self.dirty(b, logAt: log, guid: guid, e))
        #expect { _ = try DiskImage.open(path: p, readOnly: true) } throws: { e in (e as? VireoError)?.message.contains("truncated") == true }
    }
}
