import Foundation
import VireoSupport
import X86Boot

// Synthetic kernel images and little-endian helpers shared by the tests.

extension Array where Element == UInt8 {
    func le<T: FixedWidthInteger>(_: T.Type, _ offset: Int) -> T {
        var v: T = 0
        for i in 0..<MemoryLayout<T>.size { v |= T(self[offset + i]) << T(8 * i) }
        return v
    }
    func u8(_ o: Int) -> UInt8 { self[o] }
    func u16(_ o: Int) -> UInt16 { le(UInt16.self, o) }
    func u32(_ o: Int) -> UInt32 { le(UInt32.self, o) }
    func u64(_ o: Int) -> UInt64 { le(UInt64.self, o) }
    mutating func put<T: FixedWidthInteger>(_ v: T, _ offset: Int) {
        for i in 0..<MemoryLayout<T>.size { self[offset + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) }
    }
}

enum Fixtures {
    static let MiB: UInt64 = 1 << 20
    static let GiB: UInt64 = 1 << 30

    /// A minimal bzImage: boot sector + `setupSects` setup sectors with a protocol header, then
    /// `payload` bytes of "protected-mode kernel".
    static func bzImage(version: UInt16 = 0x020F, setupSects: UInt8 = 4, xloadflags: UInt16 = 0x7F,
                        loadflags: UInt8 = 0x01, initrdAddrMax: UInt32 = 0x7FFF_FFFF, cmdlineSize: UInt32 = 0x7FF,
                        prefAddress: UInt64 = 0x100_0000, initSize: UInt32 = 0x40_0000, payload: Int = 8192,
                        magic: UInt32 = 0x5372_6448, bootFlag: UInt16 = 0xAA55) -> [UInt8] {
        let sects = setupSects == 0 ? 4 : Int(setupSects)
        var b = [UInt8](repeating: 0, count: (sects + 1) * 512 + payload)
        b[0x1F1] = setupSects
        b.put(UInt16(0xFFFF), 0x1FA)
        b.put(bootFlag, 0x1FE)
        b[0x200] = 0xEB; b[0x201] = 0x6A           // jmp; header runs to 0x202 + 0x6A = 0x26C
        b.put(magic, 0x202)
        b.put(version, 0x206)
        b[0x211] = loadflags
        b.put(UInt32(0x10_0000), 0x214)
        b.put(initrdAddrMax, 0x22C)
        b.put(UInt32(0x20_0000), 0x230)
        b[0x234] = 1
        b.put(xloadflags, 0x236)
        b.put(cmdlineSize, 0x238)
        b.put(prefAddress, 0x258)
        b.put(initSize, 0x260)
        for i in 0..<payload { b[(sects + 1) * 512 + i] = UInt8(truncatingIfNeeded: i) }
        return b
    }

    struct Segment {
        var type: UInt32 = 1
        var offset: UInt64
        var vaddr: UInt64
        var paddr: UInt64
        var filesz: UInt64
        var memsz: UInt64
    }

    /// One ELF note.
    static func note(name: String, type: UInt32, desc: [UInt8]) -> [UInt8] {
        var n: [UInt8] = []
        let nameBytes = Array(name.utf8) + [0]
        func u32(_ v: UInt32) { for i in 0..<4 { n.append(UInt8(truncatingIfNeeded: v >> (8 * i))) } }
        u32(UInt32(nameBytes.count)); u32(UInt32(desc.count)); u32(type)
        n += nameBytes; while n.count % 4 != 0 { n.append(0) }
        n += desc; while n.count % 4 != 0 { n.append(0) }
        return n
    }

    static func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
    static func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }

    /// An ELF64 x86-64 executable shaped like a vmlinux: text at 16 MiB (virtual 0xffffffff81000000),
    /// data after it, a PT_NOTE with the Xen notes (PVH entry when `pvhEntry` is given).
    static func vmlinux(pvhEntry: UInt64? = 0x100_0850, pvhDescSize: Int = 8, entry: UInt64 = 0x100_0000,
                        extraSegments: [Segment] = [], machine: UInt16 = 62, elfClass: UInt8 = 2,
                        phnumOverride: UInt16? = nil) -> [UInt8] {
        var notes = note(name: "Xen", type: 6, desc: Array("linux".utf8) + [0])
        notes += note(name: "GNU", type: 18, desc: le32(0xDEAD))   // same type, other owner: ignored
        if let pvhEntry {
            notes += note(name: "Xen", type: 18, desc: pvhDescSize == 8 ? le64(pvhEntry) : le32(UInt32(truncatingIfNeeded: pvhEntry)))
        }
        let textOffset: UInt64 = 0x1000, textSize: UInt64 = 0x3000
        let dataOffset: UInt64 = 0x4000, dataSize: UInt64 = 0x1000
        let noteOffset: UInt64 = 0x5000
        var segs = [
            Segment(offset: textOffset, vaddr: 0xFFFF_FFFF_8100_0000, paddr: 0x100_0000, filesz: textSize, memsz: textSize),
            Segment(offset: dataOffset, vaddr: 0xFFFF_FFFF_8120_0000, paddr: 0x120_0000, filesz: dataSize, memsz: 0x10_0000),
            Segment(type: 4, offset: noteOffset, vaddr: 0, paddr: 0, filesz: UInt64(notes.count), memsz: UInt64(notes.count)),
        ]
        segs += extraSegments
        var f = [UInt8](repeating: 0, count: Int(noteOffset) + notes.count)
        f.replaceSubrange(0..<4, with: [0x7F, 0x45, 0x4C, 0x46])
        f[4] = elfClass; f[5] = 1; f[6] = 1
        f.put(UInt16(2), 16); f.put(machine, 18); f.put(UInt32(1), 20)
        f.put(entry, 24); f.put(UInt64(64), 32)
        f.put(UInt16(64), 52); f.put(UInt16(56), 54); f.put(phnumOverride ?? UInt16(segs.count), 56)
        for (i, s) in segs.enumerated() {
            let o = 64 + i * 56
            f.put(s.type, o); f.put(UInt32(5), o + 4); f.put(s.offset, o + 8); f.put(s.vaddr, o + 16)
            f.put(s.paddr, o + 24); f.put(s.filesz, o + 32); f.put(s.memsz, o + 40); f.put(UInt64(0x1000), o + 48)
        }
        f.replaceSubrange(Int(noteOffset)..<(Int(noteOffset) + notes.count), with: notes)
        return f
    }

    /// Where the real kernel lives: $VIREO_GUEST_DIR or <package>/out/guest.
    static var guestDir: String {
        if let d = ProcessInfo.processInfo.environment["VIREO_GUEST_DIR"], !d.isEmpty { return d }
        let here = URL(fileURLWithPath: #filePath)   // <pkg>/Tests/X86BootTests/Fixtures.swift
        return here.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("out/guest").path
    }

    /// The path of a real guest file, or nil (after printing why the test is skipped).
    static func realKernel(_ file: String) -> String? {
        let path = guestDir + "/" + file
        if FileManager.default.isReadableFile(atPath: path) { return path }
        print("SKIP: \(path) not found; run scripts/guest-assets.sh (or set VIREO_GUEST_DIR) to test with Debian's real kernel")
        return nil
    }

    /// The VireoError `body` throws, or nil when it does not throw one.
    static func error(_ body: () throws -> Void) -> VireoError? {
        do { try body() } catch let e as VireoError { return e } catch { return nil }
        return nil
    }
}
