import Foundation
import Testing
import VireoTestSupport
import VireoAPI
#if canImport(Glibc)
import Glibc
#endif

/// The image store against a real daemon, checked with the real qemu-img (not our own library):
/// what the daemon writes under DATA_DIR/images must be what qemu-img says it is.
@Suite(.serialized, .timeLimit(.minutes(3)), .enabled(if: VireoBinary.path != nil && QemuImg.available))
struct HostImageTests {
    static let mib: Int64 = 1 << 20

    @discardableResult
    func create(_ d: TestDaemon, _ json: String, status: Int = 201) throws -> Image? {
        let r = try d.req("POST", "/v1/images", json: json)
        #expect(r.status == status, "POST /v1/images \(json): \(r.text)")
        return r.status == 201 ? try JSONDecoder().decode(Image.self, from: Data(r.body)) : nil
    }

    /// Names of what is in DATA_DIR/images (complete images and leftovers alike).
    func storeEntries(_ d: TestDaemon) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: d.dataDir + "/images")) ?? []).sorted()
    }

    @Test func thinThickAndEagerZeroedImagesAreWhatQemuImgSays() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        let thin = try #require(try create(d, #"{"name":"thin","size_bytes":\#(1024 * Self.mib)}"#))
        let thick = try #require(try create(d, #"{"name":"thick","size_bytes":\#(64 * Self.mib),"provisioning":"thick"}"#))
        let eager = try #require(try create(d, #"{"name":"eager","size_bytes":\#(32 * Self.mib),"provisioning":"eager-zeroed"}"#))
        let rawThick = try #require(try create(d, #"{"name":"rawthick","format":"raw","size_bytes":\#(48 * Self.mib),"provisioning":"thick"}"#))
        let rawThin = try #require(try create(d, #"{"name":"rawthin","format":"raw","size_bytes":\#(2048 * Self.mib)}"#))
        #expect(thin.path == d.dataDir + "/images/thin.qcow2" && rawThin.path == d.dataDir + "/images/rawthin.raw")
        #expect(thin.state == .ready && thin.usedByVMs.isEmpty)

        for (img, format, virtual) in [(thin, "qcow2", 1024 * Self.mib), (thick, "qcow2", 64 * Self.mib), (eager, "qcow2", 32 * Self.mib),
                                       (rawThick, "raw", 48 * Self.mib), (rawThin, "raw", 2048 * Self.mib)] {
            let info = try QemuImg.info(img.path)
            #expect(info.format == format, "\(img.name): qemu-img says \(info.format)")
            #expect(info.virtualSize == virtual, "\(img.name): qemu-img says \(info.virtualSize) bytes")
            #expect(img.virtualSizeBytes == virtual)
            if format == "qcow2" {
                let check = try ChildProcessRunner.run(["/usr/bin/qemu-img", "check", img.path])
                #expect(check.status == 0, "qemu-img check \(img.name): \(check.stdout) \(check.stderr)")
            }
        }
        // Thin: a few metadata clusters. Thick and eager-zeroed: the whole size is on disk.
        #expect(try QemuImg.info(thin.path).actualSize < 2 * Self.mib)
        #expect(try QemuImg.info(rawThin.path).actualSize < 2 * Self.mib)
        for img in [thick, eager, rawThick] {
            let actual = try QemuImg.info(img.path).actualSize
            #expect(actual >= img.virtualSizeBytes && actual < img.virtualSizeBytes + 4 * Self.mib, "\(img.name): \(actual) bytes on disk")
            #expect(img.actualSizeBytes >= img.virtualSizeBytes)
        }
        // The list shows all five; resize grows (qemu-img agrees), never shrinks.
        let list = try d.client.call("GET", "/v1/images", as: ImageList.self)
        #expect(list.images.map(\.name) == ["eager", "rawthick", "rawthin", "thick", "thin"])
        let grown = try d.req("POST", "/v1/images/thin/resize", json: #"{"size_bytes":\#(2048 * Self.mib)}"#)
        #expect(grown.status == 200, "\(grown.text)")
        #expect(try QemuImg.info(thin.path).virtualSize == 2048 * Self.mib)
        #expect(try ChildProcessRunner.run(["/usr/bin/qemu-img", "check", thin.path]).status == 0)
        #expect(try d.req("POST", "/v1/images/rawthin/resize", json: #"{"size_bytes":\#(4096 * Self.mib)}"#).status == 200)
        #expect(try QemuImg.info(rawThin.path).virtualSize == 4096 * Self.mib)
        let shrink = try d.req("POST", "/v1/images/thin/resize", json: #"{"size_bytes":\#(1024 * Self.mib)}"#)
        #expect(shrink.status == 422 && shrink.text.contains("shrink-refused"))
        #expect(try QemuImg.info(thin.path).virtualSize == 2048 * Self.mib)

        // An overlay names its base; the base cannot go while the overlay exists.
        let overlay = try #require(try create(d, #"{"name":"ov","backing":"thin"}"#))
        #expect(overlay.backingImage == "thin" && overlay.virtualSizeBytes == 2048 * Self.mib)
        let ovInfo = try QemuImg.info(overlay.path)
        #expect(ovInfo.backingFilename == "thin.qcow2")
        #expect(try d.showImage("thin").usedByImages == ["ov"])
        let inUse = try d.req("DELETE", "/v1/images/thin")
        #expect(inUse.status == 409 && inUse.text.contains("overlay image ov"))
        #expect(try d.req("DELETE", "/v1/images/ov").status == 204)
        #expect(try d.req("DELETE", "/v1/images/thin").status == 204)
        #expect(access(thin.path, F_OK) != 0)
        #expect(try d.req("GET", "/v1/images/thin").status == 404)
    }

    @Test func importsOfWhatQemuImgWroteCompareEqual() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        // A qcow2 with data in several places, and the same disk as a VMDK, a VHD, a VHDX and a VDI.
        let src = d.dir + "/src.qcow2"
        #expect(try ChildProcessRunner.run(["/usr/bin/qemu-img", "create", "-f", "qcow2", src, "96M"]).status == 0)
        for (pattern, offset, length) in [("0xab", "0", "3M"), ("0x5c", "17M", "1M"), ("0x01", "95M", "1M")] {
            let w = try ChildProcessRunner.run(["/usr/bin/qemu-io", "-c", "write -P \(pattern) \(offset) \(length)", src])
            #expect(w.status == 0, "\(w.stderr)")
        }
        let vmdk = d.dir + "/src.vmdk", vhd = d.dir + "/src.vhd"
        #expect(try ChildProcessRunner.run(["/usr/bin/qemu-img", "convert", "-O", "vmdk", src, vmdk]).status == 0)
        #expect(try ChildProcessRunner.run(["/usr/bin/qemu-img", "convert", "-O", "vpc", "-o", "force_size=on", src, vhd]).status == 0)
        let vhdx = d.dir + "/src.vhdx", vdi = d.dir + "/src.vdi"
        #expect(try ChildProcessRunner.run(["/usr/bin/qemu-img", "convert", "-O", "vhdx", src, vhdx]).status == 0)
        #expect(try ChildProcessRunner.run(["/usr/bin/qemu-img", "convert", "-O", "vdi", src, vdi]).status == 0)

        let fromQcow2 = try #require(try create(d, #"{"name":"from-qcow2","source":"\#(src)"}"#))
        // Progress goes to followers while the import runs (seq 0: not stored).
        let follower = HostEventStreamTests.Follower(d.client, "/v1/events?follow=true&since=\(Int32.max)&subject_kind=image&subject=from-vmdk") { all in
            all.contains { $0.type == "image-imported" }
        }
        let fromVMDK = try #require(try create(d, #"{"name":"from-vmdk","source":"\#(vmdk)"}"#))
        _ = follower.finished.wait(timeout: .now() + 5)
        let live = follower.seen
        let livePercents = live.filter { $0.type == "image-import" }.compactMap { Int($0.message.prefix { $0.isNumber }) }
        #expect(livePercents.first == 0 && livePercents == livePercents.sorted() && live.filter { $0.type == "image-import" }.allSatisfy { $0.seq == 0 },
                "\(live)")
        #expect(live.allSatisfy { $0.subjectKind == "image" && $0.subject == "from-vmdk" })
        let fromVMDKRaw = try #require(try create(d, #"{"name":"from-vmdk-raw","source":"\#(vmdk)","format":"raw"}"#))
        let fromVHD = try #require(try create(d, #"{"name":"from-vhd","source":"\#(vhd)"}"#))
        let fromVHDX = try #require(try create(d, #"{"name":"from-vhdx","source":"\#(vhdx)"}"#))
        let fromVDI = try #require(try create(d, #"{"name":"from-vdi","source":"\#(vdi)","format":"raw"}"#))
        let thickRaw = try #require(try create(d, #"{"name":"thick-raw","source":"\#(src)","format":"raw","provisioning":"thick"}"#))
        #expect(try QemuImg.info(thickRaw.path).actualSize >= 96 * Self.mib)
        for img in [fromQcow2, fromVMDK, fromVMDKRaw, fromVHD, fromVHDX, fromVDI, thickRaw] {
            #expect(img.state == .ready)
            let cmp = try ChildProcessRunner.run(["/usr/bin/qemu-img", "compare", src, img.path])
            #expect(cmp.status == 0, "qemu-img compare \(img.name): \(cmp.stdout) \(cmp.stderr)")
            #expect(try QemuImg.info(img.path).format == img.format.rawValue)
        }
        #expect(try ChildProcessRunner.run(["/usr/bin/qemu-img", "check", fromVMDK.path]).status == 0)
        // The import stays thin: 5 MiB of data in a 96 MiB disk.
        #expect(fromQcow2.actualSizeBytes < 8 * Self.mib, "\(fromQcow2.actualSizeBytes)")
        // A changed byte is noticed (the comparison can fail).
        #expect(try ChildProcessRunner.run(["/usr/bin/qemu-io", "-c", "write -P 0x77 50M 4k", fromQcow2.path]).status == 0)
        #expect(try ChildProcessRunner.run(["/usr/bin/qemu-img", "compare", src, fromQcow2.path]).status == 1)

        // The stored history says what happened, not how it went: started, then imported; no
        // progress rows. The events name the image as an image.
        let events = try d.client.call("GET", "/v1/events?subject_kind=image&subject=from-vmdk", as: EventList.self).events
        #expect(events.map(\.type) == ["image-import-started", "image-imported"], "\(events)")
        #expect(events.allSatisfy { $0.subjectKind == "image" && $0.subject == "from-vmdk" && $0.seq > 0 })
        #expect(!storeEntries(d).contains { $0.hasSuffix(".part") })
    }

    @Test func badRequestsAreRefusedAndCreateNothing() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        try create(d, #"{"name":"keep","size_bytes":\#(8 * Self.mib)}"#)
        let notAnImage = d.dir + "/dir"
        mkdir(notAnImage, 0o755)
        let tiny = d.dir + "/hostname"
        FileManager.default.createFile(atPath: tiny, contents: Data("host\n".utf8))
        // A format Vireo recognises but does not read is refused by name, not imported as raw.
        let qed = d.dir + "/old.qed"
        #expect(try ChildProcessRunner.run(["/usr/bin/qemu-img", "create", "-f", "qed", qed, "8M"]).status == 0)
        let refused = try d.req("POST", "/v1/images", json: #"{"name":"z21","source":"\#(qed)"}"#)
        #expect(refused.status == 422 && refused.text.contains("invalid-disk") && refused.text.contains("is a QED image"), "\(refused.text)")
        // Issue 10: a hostile VMDK descriptor (a flat extent whose offset + length overflows) used to
        // pass the first open and then trap the conversion thread, killing the daemon. Now it is a
        // 422 and the daemon keeps answering (the requests below).
        let evil = d.dir + "/evil.vmdk"
        try Data(("# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 128 ZERO\n"
                  + "RW 2048 FLAT \"evil.vmdk\" 36028797018963967\n").utf8).write(to: URL(fileURLWithPath: evil))
        let hostile = try d.req("POST", "/v1/images", json: #"{"name":"z22","source":"\#(evil)"}"#)
        #expect(hostile.status == 422 && hostile.text.contains("invalid-disk") && hostile.text.contains("overflows"), "\(hostile.text)")
        let cases: [(String, Int, String)] = [
            (#"{"name":"Bad","size_bytes":1048576}"#, 400, "invalid-name"),
            (#"{"name":"../../etc/x","size_bytes":1048576}"#, 400, "invalid-name"),
            (#"{"name":".hidden","size_bytes":1048576}"#, 400, "invalid-name"),
            (#"{"name":"a/b","size_bytes":1048576}"#, 400, "invalid-name"),
            (#"{"name":"keep","size_bytes":1048576}"#, 409, "conflict"),
            (#"{"name":"z1","size_bytes":0}"#, 422, "out-of-range"),
            (#"{"name":"z2","size_bytes":-512}"#, 422, "out-of-range"),
            (#"{"name":"z3","size_bytes":4611686018427387904}"#, 422, "out-of-range"),
            (#"{"name":"z4","size_bytes":1048577}"#, 422, "out-of-range"),
            (#"{"name":"z5","size_bytes":1e30}"#, 400, "invalid-field"),
            (#"{"name":"z6","size_bytes":1048576,"colour":"red"}"#, 400, "unknown-field"),
            (#"{"name":"z7","size_bytes":1048576,"provisioning":"fat"}"#, 400, "invalid-field"),
            (#"{"name":"z8","size_bytes":1048576,"format":"vmdk"}"#, 400, "invalid-field"),
            (#"{"name":"z9"}"#, 422, "invalid-image-spec"),
            (#"{"name":"z10","size_bytes":1048576,"source":"/etc/hostname"}"#, 422, "invalid-image-spec"),
            (#"{"name":"z11","source":"/nonexistent/disk.qcow2"}"#, 422, "file-not-found"),
            (#"{"name":"z12","source":"\#(notAnImage)"}"#, 422, "file-not-found"),
            (#"{"name":"z13","source":"relative/disk.qcow2"}"#, 422, "invalid-path"),
            (#"{"name":"z14","source":"/dev/null"}"#, 422, "file-not-found"),
            (#"{"name":"z15","backing":"nope"}"#, 404, "not-found"),
            (#"{"name":"z16","backing":"keep","format":"raw"}"#, 422, "invalid-format"),
            (#"{"name":"z17","backing":"keep","size_bytes":1048576}"#, 422, "out-of-range"),
            (#"{"name":"z18","size_bytes":70368744177664,"provisioning":"thick"}"#, 507, "insufficient-space"),
            (#"{"name":"z19","source":"\#(tiny)"}"#, 422, "out-of-range"),
            (#"{"name":"z20","source":"\#(tiny)","provisioning":"thick"}"#, 422, "invalid-provisioning"),
            (#"{"name":"z23","source":"/etc/hostname"}"#, 422, "outside-pools"),
            ("[1]", 400, "malformed-json"),
        ]
        for (body, status, code) in cases {
            let r = try d.req("POST", "/v1/images", json: body)
            #expect(r.status == status && r.text.contains(#""code":"\#(code)""#), "\(body) -> \(r.status) \(r.text)")
        }
        for (method, path, status) in [("GET", "/v1/images/..", 404), ("GET", "/v1/images/..%2F..%2Fetc", 404), ("DELETE", "/v1/images/Keep", 404),
                                       ("POST", "/v1/images/keep/shrink", 404), ("PUT", "/v1/images/keep", 405), ("GET", "/v1/images/keep/resize", 405)] {
            let r = try d.req(method, path)
            #expect(r.status == status, "\(method) \(path) -> \(r.status) \(r.text)")
        }
        for body in [#"{"size_bytes":0}"#, #"{"size_bytes":1048577}"#, #"{}"#, #"{"size":1}"#] {
            #expect((400...422).contains(try d.req("POST", "/v1/images/keep/resize", json: body).status), "\(body)")
        }
        #expect(try d.req("POST", "/v1/images/nope/resize", json: #"{"size_bytes":1048576}"#).status == 404)
        // Nothing but the one good image was created.
        #expect(storeEntries(d) == ["keep.qcow2"])
        #expect(try d.client.call("GET", "/v1/images", as: ImageList.self).images.map(\.name) == ["keep"])
        #expect(try QemuImg.info(d.dataDir + "/images/keep.qcow2").virtualSize == 8 * Self.mib)
    }

    /// An import that fails half-way (a qcow2 whose data clusters were cut off) leaves no image
    /// and no partial file, says why, and frees the name.
    @Test func aFailedImportLeavesNothingBehind() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        let src = d.dir + "/cut.qcow2"
        #expect(try ChildProcessRunner.run(["/usr/bin/qemu-img", "create", "-f", "qcow2", src, "64M"]).status == 0)
        #expect(try ChildProcessRunner.run(["/usr/bin/qemu-io", "-c", "write -P 0xab 0 32M", src]).status == 0)
        #expect(truncate(src, 4 << 20) == 0)
        let r = try d.req("POST", "/v1/images", json: #"{"name":"cut","source":"\#(src)"}"#)
        #expect(r.status == 422 && r.text.contains("import-failed") && r.text.contains("past the end of the file"), "\(r.text)")
        #expect(storeEntries(d).isEmpty, "\(storeEntries(d))")
        #expect(try d.req("GET", "/v1/images/cut").status == 404)
        let events = try d.client.call("GET", "/v1/events?vm=cut", as: EventList.self).events
        #expect(events.last?.type == "image-import-failed")
        // The name is free again.
        #expect(try d.req("POST", "/v1/images", json: #"{"name":"cut","size_bytes":1048576}"#).status == 201)
    }

    /// A long import runs off the daemon's actor: other requests are answered meanwhile, and the
    /// image is listed as importing with its progress until it is done.
    @Test func aLongImportLeavesTheDaemonAnswering() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        let src = d.dir + "/big.raw"
        #expect(try ChildProcessRunner.run(["/usr/bin/qemu-img", "create", "-f", "raw", src, "1536M"]).status == 0)
        #expect(try ChildProcessRunner.run(["/usr/bin/qemu-io", "-f", "raw", "-c", "write -P 0x3c 0 1536M", src]).status == 0)
        let done = DispatchSemaphore(value: 0)
        let status = Mutex(0)
        let client = d.client
        DispatchQueue.global().async {
            var c = client
            c.timeout = 600
            let r = try? c.request("POST", "/v1/images", body: Array(#"{"name":"big","source":"\#(src)"}"#.utf8))
            status.withLock { $0 = r?.status ?? -1 }
            done.signal()
        }
        var sawImporting = false
        var slowest = 0.0
        while done.wait(timeout: .now() + .milliseconds(50)) == .timedOut {
            let t0 = Date()
            #expect(try d.req("GET", "/v1/host").status == 200)
            slowest = max(slowest, Date().timeIntervalSince(t0))
            if let img = try? d.showImage("big"), img.state == .importing {
                sawImporting = true
                #expect(img.progressPercent != nil)
                #expect(try d.req("DELETE", "/v1/images/big").status == 409)
            }
        }
        #expect(status.withLock { $0 } == 201)
        #expect(sawImporting, "the import was never seen in progress")
        #expect(slowest < 1.0, "GET /v1/host took \(slowest) s during the import")
        #expect(try ChildProcessRunner.run(["/usr/bin/qemu-img", "compare", src, d.dataDir + "/images/big.qcow2"]).status == 0)
        unlink(src)
    }
}

/// Store images as VM disks and template bases, on real VMs (probe guest; its VMM opens the disk).
@Suite(.serialized, .timeLimit(.minutes(2)), .enabled(if: VireoBinary.path != nil && VireoBinary.hasKVM))
struct HostImageUseTests {
    @Test func aVMOnAStoreImageStartsAndTheImageStaysUntilTheVMIsDeleted() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        #expect(try d.req("POST", "/v1/images", json: #"{"name":"root","size_bytes":67108864}"#).status == 201)
        let path = d.dataDir + "/images/root.qcow2"

        // Unknown image: 404; both path and image: 422; nothing is created.
        #expect(try d.req("POST", "/v1/vms", json: #"{"name":"v0","probe":"dirty","memory_mib":64,"disks":[{"image":"nope"}]}"#).status == 404)
        #expect(try d.req("POST", "/v1/vms", json: #"{"name":"v0","probe":"dirty","memory_mib":64,"disks":[{"image":"root","path":"/tmp/x"}]}"#).status == 422)
        #expect(try d.req("GET", "/v1/vms/v0").status == 404)

        let vm = try d.createProbe("v1", extra: #","disks":[{"image":"root"}]"#)
        // The store's format is recorded with the disk, and the disk gets its stable id.
        #expect(vm.disks == [DiskSpec(path: path, format: .qcow2, image: "root", id: "disk0")])
        #expect(try d.showImage("root").usedByVMs == ["v1"])
        #expect(try d.req("DELETE", "/v1/images/root").status == 409)

        let started = try d.action("v1", "start")
        #expect(started.status == 200, "\(started.text)")
        let running = try d.vm("v1")
        #expect(running.state == .running)
        // The VMM has the image open (its virtio-blk backend).
        let pid = try #require(running.pid)
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []
        let open = fds.compactMap { try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\($0)") }
        #expect(open.contains(path), "the VMM's open files: \(open)")

        let del = try d.req("DELETE", "/v1/images/root")
        #expect(del.status == 409 && del.text.contains("VM v1"), "\(del.text)")
        let resize = try d.req("POST", "/v1/images/root/resize", json: #"{"size_bytes":134217728}"#)
        #expect(resize.status == 409 && resize.text.contains("running VM v1"), "\(resize.text)")

        #expect(try d.action("v1", "stop").status == 200)
        #expect(try d.req("DELETE", "/v1/images/root").status == 409)   // the stopped VM still names it
        #expect(try d.req("POST", "/v1/images/root/resize", json: #"{"size_bytes":134217728}"#).status == 200)
        #expect(try d.req("DELETE", "/v1/vms/v1").status == 204)
        #expect(try d.req("DELETE", "/v1/images/root").status == 204)
        #expect(access(path, F_OK) != 0)
    }

    /// A running VM on an overlay of an image reads the image too: it cannot be resized under it.
    @Test func aBaseUnderARunningOverlayIsNotResized() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        #expect(try d.req("POST", "/v1/images", json: #"{"name":"base","size_bytes":67108864}"#).status == 201)
        #expect(try d.req("POST", "/v1/images", json: #"{"name":"mid","backing":"base"}"#).status == 201)
        #expect(try d.req("POST", "/v1/images", json: #"{"name":"top","backing":"mid"}"#).status == 201)
        _ = try d.createProbe("v2", extra: #","disks":[{"image":"top"}]"#)
        #expect(try d.action("v2", "start").status == 200)
        for name in ["base", "mid", "top"] {
            let r = try d.req("POST", "/v1/images/\(name)/resize", json: #"{"size_bytes":134217728}"#)
            #expect(r.status == 409 && r.text.contains("running VM v2"), "\(name): \(r.text)")
        }
        #expect(try QemuImg.info(d.dataDir + "/images/base.qcow2").virtualSize == 64 << 20)
        #expect(try d.action("v2", "stop").status == 200)
        #expect(try d.req("POST", "/v1/images/base/resize", json: #"{"size_bytes":134217728}"#).status == 200)
    }

    @Test func aTemplateOnAStoreImageKeepsIt() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        let kernel = d.dir + "/vmlinuz"
        FileManager.default.createFile(atPath: kernel, contents: Data(repeating: 0, count: 4096))
        #expect(try d.req("POST", "/v1/images", json: #"{"name":"base","size_bytes":67108864}"#).status == 201)
        #expect(try d.req("POST", "/v1/templates", json: #"{"name":"t1","kernel":"\#(kernel)","base_image":"base","base_disk":"/x"}"#).status == 422)
        #expect(try d.req("POST", "/v1/templates", json: #"{"name":"t1","kernel":"\#(kernel)","base_image":"nope"}"#).status == 404)
        let t = try d.req("POST", "/v1/templates", json: #"{"name":"t1","kernel":"\#(kernel)","base_image":"base"}"#)
        #expect(t.status == 201, "\(t.text)")
        let template = try JSONDecoder().decode(Template.self, from: Data(t.body))
        #expect(template.baseDisk == d.dataDir + "/images/base.qcow2" && template.baseImage == "base" && template.baseFormat == "qcow2")
        #expect(try d.req("POST", "/v1/vms", json: #"{"name":"w1","template":"t1"}"#).status == 201)
        #expect(try d.showImage("base").usedByTemplates == ["t1"])
        #expect(try d.req("DELETE", "/v1/images/base").status == 409)
        #expect(try d.req("DELETE", "/v1/vms/w1").status == 204)
        #expect(try d.req("DELETE", "/v1/images/base").status == 409)
        #expect(try d.req("DELETE", "/v1/templates/t1").status == 204)
        #expect(try d.req("DELETE", "/v1/images/base").status == 204)
    }
}

extension TestDaemon {
    func showImage(_ name: String) throws -> Image { try client.call("GET", "/v1/images/\(name)", as: Image.self) }
}

/// The real qemu-img, to check what the daemon wrote.
enum QemuImg {
    static let available: Bool = {
        let ok = access("/usr/bin/qemu-img", X_OK) == 0 && access("/usr/bin/qemu-io", X_OK) == 0
        if !ok { print("SKIPPED (image store tests): qemu-img/qemu-io not installed (apt-get install qemu-utils)") }
        return ok
    }()

    struct Info: Decodable {
        var format: String
        var virtualSize: Int64
        var actualSize: Int64
        var backingFilename: String?
        enum CodingKeys: String, CodingKey {
            case format, virtualSize = "virtual-size", actualSize = "actual-size", backingFilename = "backing-filename"
        }
    }

    static func info(_ path: String) throws -> Info {
        let r = try ChildProcessRunner.run(["/usr/bin/qemu-img", "info", "-U", "--output=json", path])
        guard r.status == 0 else { throw APIErrorBody(code: "qemu-img", message: "qemu-img info \(path): \(r.stderr)") }
        return try JSONDecoder().decode(Info.self, from: Data(r.stdout.utf8))
    }
}

import Synchronization
