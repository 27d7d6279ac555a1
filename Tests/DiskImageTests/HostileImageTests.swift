import DiskImage
import Foundation
import Testing
import VireoSupport

/// Damaged and hostile images are refused (or repaired) with a clear VireoError: no crash, no huge allocation.
@Suite struct HostileImageTests {
    static func be(_ b: inout [UInt8], _ off: Int, _ v: UInt64, _ n: Int) {
        for i in 0..<n { b[off + i] = UInt8(truncatingIfNeeded: v >> UInt64(8 * (n - 1 - i))) }
    }
    static func rd(_ b: [UInt8], _ off: Int, _ n: Int) -> UInt64 { b[off..<off + n].reduce(UInt64(0)) { $0 << 8 | UInt64($1) } }

    /// A small valid image with data, as bytes.
    static func seed(clusterSize: UInt64 = 65536) throws -> (String, [UInt8]) {
        let dir = TS.tempDir()
        let p = dir + "/seed.qcow2"
        try Qcow2Image.create(path: p, size: 4 << 20, options: Qcow2CreateOptions(clusterSize: clusterSize))
        let img = try DiskImage.open(path: p)
        try TS.write(img, TS.pattern(300_000, seed: 4), at: 100_000)
        try img.close()
        return (dir, try TS.readFile(p))
    }

    /// Opens (and reads, checks) a mutated image; it must fail with a VireoError whose text contains `expect`.
    func expectRefused(_ bytes: [UInt8], _ expect: String, code: VireoError.Code? = nil, name: String = #function) throws {
        let p = TS.tempDir(name) + "/bad.qcow2"
        try TS.writeFile(p, bytes)
        do {
            let img = try DiskImage.open(path: p, readOnly: true)
            _ = try TS.readAll(img)
            if let q = img as? Qcow2Image {
                let r = try q.check()
                if r.corruptions > 0 { throw VireoError(.corrupt, "check: \(r.messages.joined(separator: "; "))") }
            }
            Issue.record("image was accepted; expected an error containing '\(expect)'")
        } catch let e as VireoError {
            #expect(e.description.contains(expect), "got: \(e.description)")
            if let code { #expect(e.code == code, "got code \(e.code): \(e.description)") }
        }
    }

    @Test func truncatedFiles() throws {
        let (_, b) = try Self.seed()
        try expectRefused(Array(b[0..<50]), "too short")
        try expectRefused(Array(b[0..<70_000]), "past the end of the file")
        let empty = TS.tempDir() + "/empty.qcow2"
        try TS.writeFile(empty, [])
        #expect { _ = try DiskImage.open(path: empty, format: .qcow2, readOnly: true) } throws: { e in (e as? VireoError)?.message.contains("too short") == true }
    }

    @Test func absurdTableSizes() throws {
        var (_, b) = try Self.seed()
        var x = b; Self.be(&x, 36, 0xffff_ffff, 4)
        try expectRefused(x, "L1 table")
        x = b; Self.be(&x, 56, 0xffff_ffff, 4)
        try expectRefused(x, "refcount table")
        x = b; Self.be(&x, 36, 0, 4)
        try expectRefused(x, "too small")
        x = b; Self.be(&x, 24, UInt64(1) << 62, 8)
        try expectRefused(x, "too small")
        x = b; Self.be(&x, 20, 40, 4)
        try expectRefused(x, "cluster size")
        x = b; Self.be(&x, 60, 100_000, 4)
        try expectRefused(x, "snapshots")
        x = b; Self.be(&x, 96, 9, 4)
        try expectRefused(x, "refcount order")
        b[0] = 0
        let p = TS.tempDir() + "/notq.qcow2"
        try TS.writeFile(p, b)
        #expect(try DiskImage.probe(path: p) == .raw)
    }

    @Test func offsetsPastEndOfFile() throws {
        let (_, b) = try Self.seed()
        var x = b; Self.be(&x, 40, 1 << 40, 8)
        try expectRefused(x, "past the end of the file")
        x = b; Self.be(&x, 48, 1 << 40, 8)
        try expectRefused(x, "past the end of the file")
        x = b; Self.be(&x, 40, 65536 + 8, 8)
        try expectRefused(x, "not cluster aligned")
        // L1 entry pointing past the end; L2 entry pointing past the end.
        let l1 = Int(Self.rd(b, 40, 8))
        x = b; Self.be(&x, l1, (UInt64(1) << 63) | (1 << 40), 8)
        try expectRefused(x, "past the end of the file")
        let l2 = Int(Self.rd(b, l1, 8) & 0x00ff_ffff_ffff_fe00)
        x = b; Self.be(&x, l2 + 8, (UInt64(1) << 63) | (1 << 40), 8)
        try expectRefused(x, "past the end of the file")
        x = b; Self.be(&x, l2 + 8, (UInt64(1) << 63) | 65536 + 512, 8)
        try expectRefused(x, "not cluster aligned")
        x = b; Self.be(&x, l2 + 8, Self.rd(b, l2 + 8, 8) | 0x2, 8)
        try expectRefused(x, "reserved bits")
    }

    @Test func overlappingMetadataIsDetectedAndNeverOverwritten() throws {
        let (dir, b) = try Self.seed()
        let l1 = Int(Self.rd(b, 40, 8))
        let l2 = Int(Self.rd(b, l1, 8) & 0x00ff_ffff_ffff_fe00)
        let rt = Self.rd(b, 48, 8)
        var x = b
        // Guest cluster 1 now claims to live on top of the refcount table.
        Self.be(&x, l2 + 8, (UInt64(1) << 63) | rt, 8)
        let p = dir + "/overlap.qcow2"
        try TS.writeFile(p, x)
        let r = try Qcow2Image.openForCheck(path: p, repair: false).check()
        #expect(r.corruptions > 0)
        let img = try DiskImage.open(path: p)
        #expect { try TS.write(img, [1, 2, 3], at: 65536) } throws: { e in (e as? VireoError)?.message.contains("overlaps") == true }
        try img.close()
        #expect(Array(try TS.readFile(p)[Int(rt)..<Int(rt) + 16]) == Array(b[Int(rt)..<Int(rt) + 16]), "refcount table untouched")
        // check -r all repairs what can be repaired: afterwards no corruption remains.
        let fix = try Qcow2Image.openForCheck(path: p, repair: true)
        _ = try fix.check(repair: .all)
        try fix.close()
        let after = try Qcow2Image.openForCheck(path: p, repair: false).check()
        #expect(after.corruptions == 0 && after.leaks == 0, "\(after.messages.prefix(3))")
        if TS.hasQemu { try TS.qemuCheck(p) }
    }

    @Test func unknownIncompatibleFeatures() throws {
        let (_, b) = try Self.seed()
        var x = b; Self.be(&x, 72, 1 << 5, 8)
        try expectRefused(x, "incompatible qcow2 features", code: .unsupported)
        x = b; Self.be(&x, 72, 1 << 2, 8)
        try expectRefused(x, "external data file", code: .unsupported)
        // Extended L2 entries are read, but not with clusters under 16 KiB.
        let (_, small) = try Self.seed(clusterSize: 4096)
        x = small; Self.be(&x, 72, 1 << 4, 8)
        try expectRefused(x, "extended L2 entries need clusters of at least 16 KiB")
        x = b; Self.be(&x, 32, 1, 4)
        try expectRefused(x, "encrypted", code: .unsupported)
        x = b; Self.be(&x, 4, 4, 4)
        try expectRefused(x, "version 4", code: .unsupported)
        // corrupt bit: read-only is allowed, read-write is refused
        x = b; Self.be(&x, 72, 1 << 1, 8)
        let p = TS.tempDir() + "/c.qcow2"
        try TS.writeFile(p, x)
        _ = try DiskImage.open(path: p, readOnly: true)
        #expect { _ = try DiskImage.open(path: p) } throws: { e in (e as? VireoError)?.message.contains("marked corrupt") == true }
    }

    @Test func refcountOverflowIsRefused() throws {
        let p = TS.tempDir() + "/rc1.qcow2"
        try Qcow2Image.create(path: p, size: 1 << 20, options: Qcow2CreateOptions(refcountBits: 1))
        let img = try Qcow2Image.open(path: p)
        try TS.write(img, [1], at: 0)
        #expect { try img.createSnapshot(name: "s") } throws: { e in (e as? VireoError)?.message.contains("overflow") == true }
        try img.close()
        if TS.hasQemu { try TS.qemuCheck(p, allowLeaks: true) }
    }

    @Test func backingPolicyRefusesNamesThatClimbOut() throws {
        let root = TS.tempDir()
        let sub = root + "/vm"
        try FileManager.default.createDirectory(atPath: sub, withIntermediateDirectories: true)
        try Qcow2Image.create(path: root + "/outside.qcow2", size: 1 << 20)
        try Qcow2Image.create(path: sub + "/inside.qcow2", size: 1 << 20)
        try Qcow2Image.create(path: sub + "/up.qcow2", size: nil, options: Qcow2CreateOptions(backingFile: "../outside.qcow2", backingFormat: .qcow2))
        try Qcow2Image.create(path: sub + "/abs.qcow2", size: nil, options: Qcow2CreateOptions(backingFile: root + "/outside.qcow2", backingFormat: .qcow2))
        try Qcow2Image.create(path: sub + "/ok.qcow2", size: nil, options: Qcow2CreateOptions(backingFile: "./inside.qcow2", backingFormat: .qcow2))
        let confined = OpenOptions(readOnly: true, backingPolicy: .confined)
        for name in ["up", "abs"] {
            #expect { _ = try DiskImage.open(path: sub + "/\(name).qcow2", options: confined) } throws: { e in
                (e as? VireoError)?.code == .permissionDenied
            }
            _ = try DiskImage.open(path: sub + "/\(name).qcow2", readOnly: true)   // policy .any follows it
        }
        _ = try DiskImage.open(path: sub + "/ok.qcow2", options: confined)
        #expect { _ = try DiskImage.open(path: sub + "/ok.qcow2", options: OpenOptions(readOnly: true, backingPolicy: .forbidden)) } throws: { e in
            (e as? VireoError)?.code == .permissionDenied
        }
        // Missing backing file: a clear not-found error.
        try FileManager.default.removeItem(atPath: sub + "/inside.qcow2")
        #expect { _ = try DiskImage.open(path: sub + "/ok.qcow2", readOnly: true) } throws: { e in
            (e as? VireoError)?.code == .notFound && (e as? VireoError)?.hint?.contains("rebase") == true
        }
    }

    @Test func vmdkDescriptorExtentsFollowThePolicy() throws {
        let dir = TS.tempDir()
        let desc = """
        # Disk DescriptorFile
        version=1
        createType="monolithicFlat"
        RW 2048 FLAT "../../../../etc/hostname" 0
        """
        try TS.writeFile(dir + "/evil.vmdk", Array(desc.utf8))
        #expect { _ = try DiskImage.open(path: dir + "/evil.vmdk", options: OpenOptions(readOnly: true, backingPolicy: .confined)) } throws: { e in
            (e as? VireoError)?.code == .permissionDenied
        }
        try TS.writeFile(dir + "/ok-flat.img", [UInt8](repeating: 3, count: 2048 * 512))
        let good = desc.replacingOccurrences(of: "../../../../etc/hostname", with: "ok-flat.img")
        try TS.writeFile(dir + "/ok.vmdk", Array(good.utf8))
        let img = try DiskImage.open(path: dir + "/ok.vmdk", options: OpenOptions(readOnly: true, backingPolicy: .confined))
        #expect(try TS.readAll(img).allSatisfy { $0 == 3 })
        try img.close()
    }

    @Test func longBackingChainIsBoundedNotRecursedForever() throws {
        let dir = TS.tempDir()
        try Qcow2Image.create(path: dir + "/0.qcow2", size: 1 << 20)
        for i in 1...40 {
            try Qcow2Image.create(path: dir + "/\(i).qcow2", size: 1 << 20,
                                  options: Qcow2CreateOptions(clusterSize: 512, backingFile: "\(i - 1).qcow2", backingFormat: .qcow2))
        }
        let img = try DiskImage.open(path: dir + "/40.qcow2", readOnly: true)
        #expect(img.chainLength == 40)
        try img.close()
    }

    @Test func garbageCompressedClusterIsAnError() throws {
        let (_, b) = try Self.seed()
        let l1 = Int(Self.rd(b, 40, 8))
        let l2 = Int(Self.rd(b, l1, 8) & 0x00ff_ffff_ffff_fe00)
        var x = b
        // Compressed entry pointing at the header cluster's bytes (not deflate data).
        Self.be(&x, l2 + 16, (UInt64(1) << 62) | 200, 8)
        try expectRefused(x, "compressed data is invalid")
    }

    @Test func hostileVMDKAndVHDHeaders() throws {
        let dir = TS.tempDir()
        var vmdk = [UInt8](repeating: 0, count: 4096)
        vmdk[0...3] = [0x4b, 0x44, 0x4d, 0x56]
        vmdk[4] = 1
        // capacity 2^40 sectors, grain 128, 512 GTEs, gd at sector 1
        for (off, v, n) in [(12, UInt64(1) << 40, 8), (20, 128, 8), (44, 512, 4), (56, 1, 8)] as [(Int, UInt64, Int)] {
            for i in 0..<n { vmdk[off + i] = UInt8(truncatingIfNeeded: v >> UInt64(8 * i)) }
        }
        try TS.writeFile(dir + "/a.vmdk", vmdk)
        #expect { _ = try DiskImage.open(path: dir + "/a.vmdk", readOnly: true) } throws: { e in (e as? VireoError)?.message.contains("grain directory") == true }
        vmdk[20] = 3   // grain size not a power of two
        try TS.writeFile(dir + "/b.vmdk", vmdk)
        #expect { _ = try DiskImage.open(path: dir + "/b.vmdk", readOnly: true) } throws: { e in (e as? VireoError)?.message.contains("grain size") == true }
        // VHD dynamic disk with a 4 GiB block size and a huge BAT.
        var foot = [UInt8](repeating: 0, count: 512)
        foot[0..<8] = ArraySlice("conectix".utf8)
        Self.be(&foot, 16, 512, 8)
        Self.be(&foot, 48, 1 << 40, 8)
        Self.be(&foot, 60, 3, 4)
        foot[28..<32] = ArraySlice("qem2".utf8)
        var dyn = [UInt8](repeating: 0, count: 1024)
        dyn[0..<8] = ArraySlice("cxsparse".utf8)
        Self.be(&dyn, 16, 1536, 8)
        Self.be(&dyn, 28, 0xffff_ffff, 4)
        Self.be(&dyn, 32, 2 << 20, 4)
        try TS.writeFile(dir + "/a.vhd", foot + dyn + foot)
        #expect { _ = try DiskImage.open(path: dir + "/a.vhd", readOnly: true) } throws: { e in (e as? VireoError)?.message.contains("block table") == true }
        Self.be(&dyn, 32, 3, 4)
        try TS.writeFile(dir + "/b.vhd", foot + dyn + foot)
        #expect { _ = try DiskImage.open(path: dir + "/b.vhd", readOnly: true) } throws: { e in (e as? VireoError)?.message.contains("block size") == true }
        Self.be(&foot, 60, 4, 4)
        try TS.writeFile(dir + "/c.vhd", foot + dyn + foot)
        // A differencing VHD is read now; its damaged dynamic header is refused like a dynamic disk's.
        #expect { _ = try DiskImage.open(path: dir + "/c.vhd", readOnly: true) } throws: { e in (e as? VireoError)?.message.contains("block size") == true }
    }

    @Test func outOfRangeRequestsAreErrors() throws {
        let (dir, _) = try Self.seed()
        let img = try DiskImage.open(path: dir + "/seed.qcow2")
        #expect(throws: VireoError.self) { _ = try TS.read(img, 10, at: (4 << 20) - 5) }
        #expect(throws: VireoError.self) { try TS.write(img, [1], at: UInt64.max) }
        #expect(throws: VireoError.self) { try img.discard(offset: UInt64.max - 1, length: 10) }
        try img.close()
        #expect(throws: VireoError.self) { _ = try TS.read(img, 1, at: 0) }
    }
}
