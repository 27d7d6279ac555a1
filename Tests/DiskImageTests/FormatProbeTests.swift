import DiskImage
import Foundation
import Testing
import VireoSupport

/// Every signature a user meets is recognised; raw only when none matches; formats Vireo does
/// not read are refused by name (by `probe`, by `open`, and by `vireo disk info|convert`).
@Suite struct FormatProbeTests {
    static func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) } }
    static func field(_ s: String, _ n: Int) -> [UInt8] { Array(s.utf8) + [UInt8](repeating: 0, count: n - s.utf8.count) }

    /// Files carrying a signature, made by hand (formats qemu-img cannot create).
    static func handMade() -> [(String, [UInt8], DetectedFormat)] {
        var bochs = field("Bochs Virtual HD Image", 32) + field("Redolog", 16) + field("Growing", 16) + le32(0x0002_0000)
        bochs += [UInt8](repeating: 0, count: 512 - bochs.count)
        var parallels = Array("WithoutFreeSpace".utf8) + le32(2)
        parallels += [UInt8](repeating: 0, count: 512 - parallels.count)
        var luks: [UInt8] = [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe, 0, 2]   // LUKS2
        luks += [UInt8](repeating: 0, count: 4096 - luks.count)
        var luks1 = luks
        luks1[7] = 1
        var luks9 = luks   // an unknown LUKS version is not LUKS
        luks9[7] = 9
        let cloop = Array("#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$1 && mount -r -t iso9660 /dev/cloop $2\n".utf8) + [UInt8](repeating: 0, count: 600)
        var dmg = [UInt8](repeating: 0x5a, count: 8192)
        dmg.replaceSubrange(8192 - 512..<8192 - 508, with: Array("koly".utf8))
        var qed = Array("QED\0".utf8) + le32(65536)
        qed += [UInt8](repeating: 0, count: 1024)
        var cowd = Array("COWD".utf8) + le32(1)
        cowd += [UInt8](repeating: 0, count: 2048)
        let descriptor = Array("# comment\n   \nversion=1\nCID=12345678\ncreateType=\"monolithicFlat\"\n".utf8)
        var vdi = field("<<< Oracle VM VirtualBox Disk Image >>>\n", 64) + le32(0xbeda_107f)
        vdi += [UInt8](repeating: 0, count: 1024 - vdi.count)
        return [
            ("bochs.img", bochs, .foreign(.bochs)), ("parallels.hds", parallels, .foreign(.parallels)),
            ("luks2.img", luks, .foreign(.luks)), ("luks1.img", luks1, .foreign(.luks)), ("luks9.img", luks9, .supported(.raw)), ("cloop.img", cloop, .foreign(.cloop)), ("disk.dmg", dmg, .foreign(.dmg)),
            ("qed.img", qed, .foreign(.qed)), ("cowd.vmdk", cowd, .supported(.vmdk)),
            ("descriptor.vmdk", descriptor, .supported(.vmdk)), ("sig.vdi", vdi, .supported(.vdi)),
            ("zeros.img", [UInt8](repeating: 0, count: 1 << 20), .supported(.raw)),
            ("tiny.img", [1, 2, 3], .supported(.raw)), ("empty.img", [], .supported(.raw)),
            // Near misses stay raw: a qemu-like text that is not a descriptor, a bochs header of another subtype.
            ("text.img", Array("hello\nversion=1\n".utf8) + [UInt8](repeating: 0, count: 600), .supported(.raw)),
            ("bochs-undoable.img", field("Bochs Virtual HD Image", 32) + field("Redolog", 16) + field("Undoable", 16) + le32(0x0002_0000) + [UInt8](repeating: 0, count: 444), .supported(.raw)),
        ]
    }

    @Test func handMadeSignatures() throws {
        let dir = TS.tempDir()
        for (name, bytes, expected) in Self.handMade() {
            let p = dir + "/" + name
            try TS.writeFile(p, bytes)
            #expect(try DiskImage.probeDetailed(path: p) == expected, "\(name)")
            if case .foreign(let f) = expected {
                #expect { _ = try DiskImage.probe(path: p) } throws: { e in
                    let v = e as? VireoError
                    return v?.code == .unsupported && v?.message.contains("is a \(f.displayName) image, which Vireo does not read") == true
                        && v?.hint?.contains("qemu-img convert") == true
                }
                #expect { _ = try DiskImage.open(path: p, readOnly: true) } throws: { e in (e as? VireoError)?.message.contains(f.displayName) == true }
            }
        }
    }

    @Test func cowdVMDKIsRefusedByName() throws {
        let p = TS.tempDir() + "/esx2.vmdk"
        try TS.writeFile(p, Array("COWD".utf8) + [1, 0, 0, 0] + [UInt8](repeating: 0, count: 2048))
        #expect(try DiskImage.probe(path: p) == .vmdk)
        #expect { _ = try DiskImage.open(path: p, readOnly: true) } throws: { e in
            (e as? VireoError)?.code == .unsupported && (e as? VireoError)?.message.contains("VMDK3 (COWD") == true
        }
    }

    @Test func qemuNamesAreAccepted() {
        #expect(DiskImageFormat(name: "vpc") == .vhd)
        #expect(DiskImageFormat(name: "VHDX") == .vhdx)
        #expect(DiskImageFormat(name: "vdi") == .vdi)
        #expect(DiskImageFormat(name: "qed") == nil)
        #expect(DiskImageFormat.vhdx.qemuName == "vhdx" && DiskImageFormat.vdi.qemuName == "vdi")
    }

    /// Images qemu-img makes are probed to the format qemu-img itself reports. (LUKS is made by
    /// hand above: qemu-img's key-derivation benchmark fails on a loaded 2-core machine.)
    @Test(.enabled(if: TS.hasQemu, "needs qemu-img"),
          arguments: ["qcow2", "qcow", "qed", "vmdk", "vpc", "vhdx", "vdi", "parallels", "raw"])
    func probesWhatQemuMakes(format: String) throws {
        let dir = TS.tempDir()
        let p = dir + "/img." + format
        try TS.run(TS.qemuImg ?? "qemu-img", ["create", "-q", "-f", format, p, "4M"])
        let info = try TS.run(TS.qemuImg ?? "qemu-img", ["info", "--output", "json", p]).out
        #expect(info.contains("\"format\": \"\(format)\""), "qemu-img info: \(info)")
        #expect(try DiskImage.probeDetailed(path: p).qemuName == format)
        if let f = DiskImageFormat(name: format) {
            #expect(try DiskImage.probe(path: p) == f)
        } else {
            #expect(throws: VireoError.self) { _ = try DiskImage.probe(path: p) }
        }
    }

    /// The CLI says which format it refused, and exits 1.
    @Test(.enabled(if: TS.hasVireo, "needs the vireo binary"))
    func cliRefusesForeignFormatsByName() throws {
        let dir = TS.tempDir()
        let p = dir + "/old.qed"
        try TS.writeFile(p, Array("QED\0".utf8) + [UInt8](repeating: 0, count: 4096))
        for args in [["info", p], ["convert", "-O", "qcow2", p, dir + "/out.qcow2"]] {
            let r = try TS.vireoRun(args, check: false)
            #expect(r.status == 1, "\(args): \(r.status)")
            #expect(r.err.contains("is a QED image, which Vireo does not read"), "\(r.err)")
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/out.qcow2"))
    }
}
