import DiskImage
import Foundation
import Testing
import VireoSupport

/// Library-level behaviour (no external tools needed; qemu-img check is added when present).
@Suite struct Qcow2LibraryTests {
    @Test(arguments: [512, 4096, 65536, 2 << 20] as [UInt64])
    func writeReadRoundTripAcrossClusterSizes(clusterSize: UInt64) throws {
        let dir = TS.tempDir()
        let path = dir + "/rt.qcow2"
        let size: UInt64 = 8 << 20
        try Qcow2Image.create(path: path, size: size, options: Qcow2CreateOptions(clusterSize: clusterSize))
        var expected = [UInt8](repeating: 0, count: Int(size))
        do {
            let img = try DiskImage.open(path: path)
            #expect(img.clusterSize == clusterSize)
            // Unaligned writes that span clusters, overlapping rewrites, a write at the very end.
            let writes: [(UInt64, Int)] = [(0, 4096), (1000, 70000), (3 << 20, 1 << 20), (size - 777, 777), (5000, 100), (2 << 20, 3 << 20)]
            for (i, (off, n)) in writes.enumerated() {
                let data = TS.pattern(n, seed: UInt64(i + 1) * clusterSize)
                try TS.write(img, data, at: off)
                expected.replaceSubrange(Int(off)..<Int(off) + n, with: data)
            }
            #expect(try TS.readAll(img) == expected)
            try img.close()
        }
        let again = try DiskImage.open(path: path, readOnly: true)
        #expect(try TS.readAll(again) == expected)
        let q = try Qcow2Image.openForCheck(path: path, repair: false)
        let r = try q.check()
        #expect(r.corruptions == 0 && r.leaks == 0, "\(r.messages)")
        if TS.hasQemu {
            try TS.qemuCheck(path)
            #expect(try TS.qemuContents(path) == expected)
        }
    }

    @Test func refcountTableGrowsAsTheFileGrows() throws {
        let path = TS.tempDir() + "/grow.qcow2"
        try Qcow2Image.create(path: path, size: 64 << 20, options: Qcow2CreateOptions(clusterSize: 512))
        let img = try Qcow2Image.open(path: path)
        #expect(img.header.refcountTableClusters == 1)
        let data = TS.pattern(24 << 20, seed: 77)      // > 8 MiB: more than one 512-byte table can cover
        try TS.write(img, data, at: 7 << 20)
        try img.flush()
        #expect(img.header.refcountTableClusters > 1)
        try img.close()
        let r = try Qcow2Image.openForCheck(path: path, repair: false).check()
        #expect(r.corruptions == 0 && r.leaks == 0, "\(r.messages.prefix(3))")
        let again = try DiskImage.open(path: path, readOnly: true)
        #expect(try TS.read(again, data.count, at: 7 << 20) == data)
        if TS.hasQemu { try TS.qemuCheck(path) }
    }

    @Test func zeroAndDiscardMakeClustersReadZero() throws {
        let dir = TS.tempDir()
        let path = dir + "/z.qcow2"
        try Qcow2Image.create(path: path, size: 4 << 20)
        let img = try DiskImage.open(path: path)
        try TS.write(img, TS.pattern(4 << 20, seed: 3), at: 0)
        try img.writeZeroes(offset: 65536, length: 65536 * 2)
        try img.writeZeroes(offset: 1000, length: 3000)        // partial cluster: written as zero bytes
        try img.discard(offset: 1 << 20, length: 1 << 20)
        try img.flush()
        let all = try TS.readAll(img)
        #expect(all[65536..<(65536 * 3)].allSatisfy { $0 == 0 })
        #expect(all[1000..<4000].allSatisfy { $0 == 0 })
        #expect(all[(1 << 20)..<(2 << 20)].allSatisfy { $0 == 0 })
        #expect(all[4000] != 0 || all[4001] != 0)
        let st = try img.blockStatus(at: 65536, maxLength: 65536 * 2)
        #expect(st.state == .zero && st.length == 65536 * 2)
        let st2 = try img.blockStatus(at: 1 << 20, maxLength: 1 << 20)
        #expect(st2.state == .unallocated)
        try img.close()
        if TS.hasQemu {
            try TS.qemuCheck(path)
            #expect(try TS.qemuContents(path) == all)
        }
    }

    @Test func snapshotsCreateApplyDelete() throws {
        let dir = TS.tempDir()
        let path = dir + "/s.qcow2"
        try Qcow2Image.create(path: path, size: 2 << 20, options: Qcow2CreateOptions(clusterSize: 4096))
        let img = try Qcow2Image.open(path: path)
        let v1 = TS.pattern(2 << 20, seed: 11)
        try TS.write(img, v1, at: 0)
        try img.createSnapshot(name: "one")
        let v2 = TS.pattern(300_000, seed: 12)
        try TS.write(img, v2, at: 12345)
        #expect(try TS.read(img, v2.count, at: 12345) == v2)
        try img.createSnapshot(name: "two")
        #expect(img.snapshotList.map(\.name) == ["one", "two"])
        #expect(throws: VireoError.self) { try img.createSnapshot(name: "one") }
        try img.applySnapshot(name: "one")
        #expect(try TS.readAll(img) == v1)
        try img.deleteSnapshot(name: "one")
        try img.applySnapshot(name: "two")
        var v12 = v1
        v12.replaceSubrange(12345..<(12345 + v2.count), with: v2)
        #expect(try TS.readAll(img) == v12)
        try img.close()
        let r = try Qcow2Image.openForCheck(path: path, repair: false).check()
        #expect(r.corruptions == 0 && r.leaks == 0, "\(r.messages.prefix(5))")
        if TS.hasQemu {
            try TS.qemuCheck(path)
            let list = try TS.qimg("snapshot", "-l", path).out
            #expect(list.contains("two") && !list.contains(" one "))
            #expect(try TS.qemuContents(path) == v12)
        }
    }

    /// A VMM killed right after a guest's flush must leave no leaked cluster: the refcounts that
    /// a copy-on-write lowered (the snapshot's clusters) are on disk once flush() returns.
    @Test func flushAfterCopyOnWriteLeavesNoLeaks() throws {
        let dir = TS.tempDir()
        let path = dir + "/cow.qcow2"
        try Qcow2Image.create(path: path, size: 4 << 20, options: Qcow2CreateOptions(clusterSize: 65536))
        let img = try Qcow2Image.open(path: path)
        try TS.write(img, Array(repeating: 0xAA, count: 4), at: 0)
        try img.createSnapshot(name: "s")
        try TS.write(img, Array(repeating: 0xBB, count: 4), at: 0)   // copies the L2 table and the data cluster
        try img.flush()
        // Read the file as another process would now, without closing (the VMM could be killed here).
        let r = try Qcow2Image.openForCheck(path: path, repair: false).check()
        #expect(r.corruptions == 0 && r.leaks == 0, "\(r.messages.prefix(5))")
        if TS.hasQemu {
            let q = try TS.run(TS.qemuImg ?? "qemu-img", ["check", "-U", path], check: false)
            #expect(q.status == 0, "qemu-img check after flush: \(q.out)")
        }
        try img.close()
    }

    @Test func resizeGrowsAndRefusesUnsafeShrink() throws {
        let dir = TS.tempDir()
        let path = dir + "/r.qcow2"
        try Qcow2Image.create(path: path, size: 1 << 20, options: Qcow2CreateOptions(clusterSize: 512))
        let img = try Qcow2Image.open(path: path)
        try TS.write(img, [1, 2, 3], at: 900_000)
        try img.resize(to: 64 << 20)       // L1 must grow at 512-byte clusters
        #expect(img.virtualSize == 64 << 20)
        try TS.write(img, [9, 9], at: (64 << 20) - 2)
        #expect(try TS.read(img, 3, at: 900_000) == [1, 2, 3])
        #expect(throws: VireoError.self) { try img.resize(to: 512 << 10) }
        try img.discard(offset: (64 << 20) - 65536, length: 65536)
        try img.resize(to: 1 << 20)        // nothing is stored past 1 MiB any more
        #expect(img.virtualSize == 1 << 20)
        #expect(try TS.read(img, 3, at: 900_000) == [1, 2, 3])
        try img.close()
        if TS.hasQemu { try TS.qemuCheck(path) }
    }

    @Test func backingChainCopyOnWriteAndLoopDetection() throws {
        let dir = TS.tempDir()
        let base = dir + "/base.raw", mid = dir + "/mid.qcow2", top = dir + "/top.qcow2"
        let baseData = TS.pattern(1 << 20, seed: 5)
        try TS.writeFile(base, baseData)
        try Qcow2Image.create(path: mid, size: nil, options: Qcow2CreateOptions(clusterSize: 65536, backingFile: "base.raw", backingFormat: .raw))
        try Qcow2Image.create(path: top, size: 2 << 20, options: Qcow2CreateOptions(clusterSize: 4096, backingFile: "mid.qcow2", backingFormat: .qcow2))
        let m = try DiskImage.open(path: mid)
        try TS.write(m, [7, 7, 7], at: 70000)
        try m.writeZeroes(offset: 131072, length: 65536)
        try m.close()
        let t = try DiskImage.open(path: top)
        #expect(t.chainLength == 2)
        try TS.write(t, [1], at: 5)          // partial-cluster write: copy-on-write from the chain
        var exp = baseData + [UInt8](repeating: 0, count: 1 << 20)
        exp[70000...70002] = [7, 7, 7]
        for i in 131072..<196608 { exp[i] = 0 }
        exp[5] = 1
        #expect(try TS.readAll(t) == exp)
        try t.close()
        // A loop: base points at top.
        let loopA = dir + "/la.qcow2", loopB = dir + "/lb.qcow2"
        try Qcow2Image.create(path: loopA, size: 1 << 20)
        try Qcow2Image.create(path: loopB, size: 1 << 20, options: Qcow2CreateOptions(backingFile: "la.qcow2", backingFormat: .qcow2))
        let a = try Qcow2Image.open(path: loopA, options: OpenOptions(openBacking: false))
        try a.setBackingFile("lb.qcow2", format: .qcow2)
        try a.close()
        #expect {
            _ = try DiskImage.open(path: loopB)
        } throws: { e in (e as? VireoError)?.message.contains("loop") == true }
        if TS.hasQemu {
            try TS.qemuCheck(top)
            #expect(try TS.qemuContents(top) == exp)
        }
    }

    @Test(arguments: [Preallocation.off, .metadata, .falloc, .full])
    func preallocationModes(mode: Preallocation) throws {
        let dir = TS.tempDir()
        let q = dir + "/p.qcow2", r = dir + "/p.raw"
        let size: UInt64 = 16 << 20
        try Qcow2Image.create(path: q, size: size, options: Qcow2CreateOptions(preallocation: mode))
        let img = try DiskImage.open(path: q, readOnly: true)
        #expect(try TS.readAll(img).allSatisfy { $0 == 0 })
        let st = try img.blockStatus(at: 0, maxLength: size)
        #expect(st.state == (mode == .off ? .unallocated : .data))
        try img.close()
        let used = try FileManager.default.attributesOfItem(atPath: q)[.size] as? UInt64 ?? 0
        #expect(mode == .off ? used < 1 << 20 : used >= size)
        if mode != .metadata {
            try RawImage.create(path: r, size: size, preallocation: mode)
            var st = stat()
            stat(r, &st)
            #expect(mode == .off || mode == .metadata ? st.st_blocks * 512 < 1 << 20 : st.st_blocks * 512 >= Int(size))
        } else {
            #expect(throws: VireoError.self) { try RawImage.create(path: r, size: size, preallocation: .metadata) }
        }
        if TS.hasQemu { try TS.qemuCheck(q) }
    }

    @Test func lazyRefcountsSetDirtyBitWhileOpenAndRepairOnOpen() throws {
        let dir = TS.tempDir()
        let path = dir + "/lazy.qcow2"
        try Qcow2Image.create(path: path, size: 4 << 20, options: Qcow2CreateOptions(lazyRefcounts: true))
        let data = TS.pattern(1 << 20, seed: 9)
        let img = try Qcow2Image.open(path: path)
        try TS.write(img, data, at: 0)
        try img.flush()
        let onDisk = try Qcow2Image.openForCheck(path: path, repair: false)
        #expect(onDisk.header.incompatibleFeatures & Qcow2Header.Incompatible.dirty != 0, "dirty bit on disk while writing")
        try onDisk.close()
        try img.close()
        let clean = try Qcow2Image.openForCheck(path: path, repair: false)
        #expect(clean.header.incompatibleFeatures & Qcow2Header.Incompatible.dirty == 0, "clean close clears it")
        try clean.close()
        // A crash leaves the bit set and refcounts stale: craft that (set bit 0 of the incompatible
        // features, wipe refcounts of clusters 10..41) and check that opening repairs it.
        var bytes = try TS.readFile(path)
        bytes[79] |= 1
        let rt = Int(bytes[48..<56].reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
        let rb = Int(bytes[rt..<rt + 8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
        for i in (rb + 20)..<(rb + 84) { bytes[i] = 0 }
        try TS.writeFile(path, bytes)
        let check = try Qcow2Image.openForCheck(path: path, repair: false)
        #expect(try check.check().corruptions > 0)
        try check.close()
        let reopened = try Qcow2Image.open(path: path)     // repairs
        #expect(reopened.header.incompatibleFeatures & Qcow2Header.Incompatible.dirty == 0)
        #expect(try TS.read(reopened, data.count, at: 0) == data)
        try reopened.close()
        let r = try Qcow2Image.openForCheck(path: path, repair: false).check()
        #expect(r.corruptions == 0 && r.leaks == 0, "\(r.messages.prefix(5))")
        if TS.hasQemu { try TS.qemuCheck(path) }
    }

    @Test func checkFindsAndRepairsLeaks() throws {
        let dir = TS.tempDir()
        let path = dir + "/leak.qcow2"
        try Qcow2Image.create(path: path, size: 4 << 20)
        let img = try DiskImage.open(path: path)
        try TS.write(img, TS.pattern(1 << 20, seed: 2), at: 0)
        try img.close()
        // Craft two leaked clusters: extend the file and give its new clusters refcount 1.
        var bytes = try TS.readFile(path)
        let cs = 65536
        let rt = Int(bytes[48..<56].reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
        let rb = Int(bytes[rt..<rt + 8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
        let first = bytes.count / cs
        bytes += [UInt8](repeating: 0, count: 2 * cs)
        for c in first..<first + 2 { bytes[rb + 2 * c + 1] = 1 }
        try TS.writeFile(path, bytes)
        let r = try Qcow2Image.openForCheck(path: path, repair: false).check()
        #expect(r.leaks == 2 && r.corruptions == 0, "\(r.messages)")
        if TS.hasQemu {
            let q = try TS.run(TS.qemuImg ?? "qemu-img", ["check", path], check: false)
            #expect(q.status == 3, "qemu-img sees the leaks too: \(q.out)")
        }
        let fixed = try Qcow2Image.openForCheck(path: path, repair: true)
        let fr = try fixed.check(repair: .leaks)
        #expect(fr.leaksFixed == 2)
        try fixed.close()
        let after = try Qcow2Image.openForCheck(path: path, repair: false).check()
        #expect(after.leaks == 0 && after.corruptions == 0, "\(after.messages)")
        if TS.hasQemu { try TS.qemuCheck(path) }
    }
}
