import Foundation
import Testing
import VireoAPI
import VireoSupport
import VireoTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// `vireo image ...` and `vireo events [--follow]` against a real daemon.
@Suite(.serialized, .timeLimit(.minutes(2)), .enabled(if: VireoBinary.path != nil && QemuImg.available))
struct HostImageCLITests {
    func vireo(_ d: TestDaemon, _ args: [String], env: [String] = []) throws -> (status: Int32, stdout: String, stderr: String) {
        try ChildProcessRunner.run(["/usr/bin/env"] + env + [VireoBinary.path ?? "vireo", "--socket", d.socket] + args)
    }

    @Test func imageVerbsPrintTablesProgressAndErrorsWithTheNextStep() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        let created = try vireo(d, ["image", "create", "d1", "--size", "64M", "--provisioning", "thick"])
        #expect(created.status == 0 && created.stdout.contains("created image d1: 64 MiB qcow2"), "\(created)")
        #expect(created.stdout.contains("--disk image=d1"))

        let src = d.dir + "/src.qcow2"
        #expect(try ChildProcessRunner.run(["/usr/bin/qemu-img", "create", "-f", "qcow2", src, "32M"]).status == 0)
        #expect(try ChildProcessRunner.run(["/usr/bin/qemu-io", "-c", "write -P 0x11 0 8M", src]).status == 0)
        let imported = try vireo(d, ["image", "import", "d2", src], env: ["VIREO_PROGRESS=1"])
        #expect(imported.status == 0 && imported.stdout.contains("imported \(src) as image d2: 32 MiB qcow2"), "\(imported)")
        #expect(imported.stderr.contains("image-import: 0% qcow2 \(src)") && imported.stderr.contains("image-imported: 100%"), "\(imported.stderr)")

        let list = try vireo(d, ["image", "list"])
        let lines = list.stdout.split(separator: "\n")
        #expect(lines.first?.hasPrefix("NAME") == true && lines.count == 3, "\(list.stdout)")
        #expect(lines.contains { $0.hasPrefix("d1") && $0.contains("64 MiB") && $0.contains("ready") })
        let json = try vireo(d, ["image", "show", "d2", "--json"])
        #expect(try JSONDecoder().decode(Image.self, from: Data(json.stdout.utf8)).virtualSizeBytes == 32 << 20)

        #expect(try vireo(d, ["image", "create", "ov", "--backing", "d2"]).status == 0)
        let inUse = try vireo(d, ["image", "delete", "d2"])
        #expect(inUse.status == 1 && inUse.stderr.contains("overlay image ov") && inUse.stderr.contains("[conflict]"), "\(inUse.stderr)")
        let resized = try vireo(d, ["image", "resize", "d1", "--size", "128M"])
        #expect(resized.status == 0 && resized.stdout.contains("now 128 MiB"), "\(resized)")

        for (args, message) in [(["image", "create", "x1", "--size", "10Q"], "is not a size"),
                                (["image", "create", "x2"], "give --size"),
                                (["image", "create", "x3", "--size", "1G", "--provisioning", "fat"], "not one of thin, thick, eager-zeroed"),
                                (["image", "import", "x4", "/nonexistent.vmdk"], "does not exist"),
                                (["image", "show", "nope"], "`vireo image list` shows them"),
                                (["image", "resize", "d1", "--size", "1M"], "only grow")] {
            let r = try vireo(d, args)
            #expect(r.status == 1 && r.stderr.contains(message), "\(args): \(r.stderr)")
        }
        #expect(try vireo(d, ["image", "delete", "ov"]).stdout.contains("deleted image ov"))

        // The stored history: the import's start and end, named as an image; its progress went
        // only to followers (the import's own lines above).
        let events = try vireo(d, ["events", "--image", "d2"])
        #expect(events.stdout.contains("image d2  image-import-started") && events.stdout.contains("image d2  image-imported")
                && !events.stdout.contains("image-import  "), "\(events.stdout)")
    }

    @Test func eventsFollowPrintsNewEventsAsTheyHappen() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        let follow = try ChildProcess([VireoBinary.path ?? "vireo", "--socket", d.socket, "events", "--follow", "--image", "f1", "--json"])
        // (It ends by itself when the daemon goes, below or in shutdown.)
        for _ in 0..<100 {
            if try d.metric("vireo_event_subscribers") == 1 { break }
            usleep(50_000)
        }
        #expect(try d.req("POST", "/v1/images", json: #"{"name":"f1","size_bytes":1048576}"#).status == 201)
        #expect(try d.req("DELETE", "/v1/images/f1").status == 204)
        var types: [String] = []
        while types.last != "image-deleted", let line = ChildProcess.readLine(follow.stdout) {
            if let e = try? JSONDecoder().decode(Event.self, from: Data(line.utf8)) { types.append(e.type) }
        }
        // Stored events, and between them the live progress lines (seq 0).
        #expect(types.first == "image-create-started" && types.suffix(2) == ["image-created", "image-deleted"]
                && types.dropFirst().dropLast(2).allSatisfy { $0 == "image-create" } && types.contains("image-create"), "\(types)")

        // The daemon going away ends it with a message saying how to continue.
        d.kill9()
        let status = follow.wait()
        var err = ""
        while let l = ChildProcess.readLine(follow.stderr) { err += l }
        #expect(status == 1 && err.contains("closed the event stream") && err.contains("--since"), "\(status) \(err)")
    }
}
