import DiskImage
import Foundation
import Testing
import VireoSupport

/// `Qcow2Image.exportSnapshot`: the disk as it was at an internal snapshot, into a new image
/// backed by the same backing file (what a clone's base is made of). qemu-img is the reference:
/// `qemu-img convert -l snapshot.name=S` of the same image must compare equal, the export must
/// pass `qemu-img check`, and only the snapshot's own clusters are copied.
@Suite(.enabled(if: TS.hasQemu, "needs qemu-img and qemu-io (apt-get install qemu-utils)"))
struct Qcow2SnapshotExportTests {
    @Test func exportMatchesQemuImgConvertOfTheSnapshot() throws {
        let dir = TS.tempDir()
        let base = dir + "/base.qcow2", disk = dir + "/disk.qcow2", out = dir + "/export.qcow2", ref = dir + "/ref.raw"
        // A backing file with data of its own, and an overlay that changes part of it.
        try TS.qimg("create", "-f", "qcow2", base, "8M")
        try TS.qio("-c", "write -P 0x11 0 2M", base)
        try TS.qimg("create", "-f", "qcow2", "-b", base, "-F", "qcow2", disk)
        try TS.qio("-c", "write -P 0x22 1M 1M", "-c", "write -z 4M 64k", "-c", "write -P 0x33 6M 100k", disk)
        try TS.qimg("snapshot", "-c", "then", disk)
        // After the snapshot the active disk moves on; the export must not see any of it.
        try TS.qio("-c", "write -P 0x44 0 3M", "-c", "write -P 0x55 5M 64k", disk)

        let image = try Qcow2Image.open(path: disk)
        var progress: [Double] = []
        try image.exportSnapshot("then", to: out) { progress.append($0) }
        // The image stays usable (a VM runs on through the export).
        try image.write(UnsafeRawBufferPointer(start: [UInt8](repeating: 0x66, count: 512), count: 512), at: 0)
        try image.close()

        try TS.qemuCheck(out)
        try TS.qimg("convert", "-l", "snapshot.name=then", "-O", "raw", disk, ref)
        let cmp = try TS.run(TS.qemuImg ?? "qemu-img", ["compare", "-f", "qcow2", "-F", "raw", out, ref], check: false)
        #expect(cmp.status == 0, "the export differs from qemu-img's view of the snapshot: \(cmp.out) \(cmp.err)")
        #expect(progress.last == 1)
        // Backed by the same file; only the snapshot's own clusters (about 1.1 MiB of data) are in it.
        let info = try TS.qimg("info", "--output", "json", out).out
        #expect(info.contains("\"backing-filename\": \"\(base)\""), "\(info)")
        let exported = try Qcow2Image.open(path: out, readOnly: true, options: OpenOptions(readOnly: true, openBacking: false))
        var dataBytes: UInt64 = 0
        var at: UInt64 = 0
        while at < exported.virtualSize {
            let st = try exported.blockStatus(at: at, maxLength: exported.virtualSize - at)
            if st.state == .data { dataBytes += st.length }
            at += max(st.length, 1)
        }
        try exported.close()
        #expect(dataBytes >= (1 << 20) + 100 * 1024 && dataBytes <= (1 << 20) + (3 << 16), "\(dataBytes) bytes of data")
    }

    @Test func aMissingSnapshotOrAnExistingOutputIsRefusedAndLeavesNothing() throws {
        let dir = TS.tempDir()
        let disk = dir + "/d.qcow2", out = dir + "/o.qcow2"
        try TS.qimg("create", "-f", "qcow2", disk, "1M")
        let image = try Qcow2Image.open(path: disk)
        defer { try? image.close() }
        #expect { try image.exportSnapshot("nope", to: out) } throws: { ($0 as? VireoError)?.code == .notFound }
        #expect(!FileManager.default.fileExists(atPath: out))
        try image.createSnapshot(name: "s")
        FileManager.default.createFile(atPath: out, contents: Data([1, 2, 3]))
        #expect { try image.exportSnapshot("s", to: out) } throws: { ($0 as? VireoError)?.code == .conflict }
        #expect(try Data(contentsOf: URL(fileURLWithPath: out)) == Data([1, 2, 3]), "an existing file was overwritten")
    }
}
