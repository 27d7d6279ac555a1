import DiskImage
import Foundation
import Testing
import VireoTestSupport
import VireoAPI
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// `vireo vm clone` through the daemon and the CLI, with probe-guest VMs on this host's KVM: a
/// clone from a snapshot runs on from the snapshot's state beside its running source with its
/// own generation ID (and outlives the snapshot); a stopped VM's disks are copied, not shared;
/// every refusal says why and leaves nothing behind. (Disks and NICs of a clone from a
/// snapshot, with a Linux guest, are the testbed's host-clone-linux.)
@Suite(.serialized, .timeLimit(.minutes(2)), .enabled(if: VireoBinary.path != nil && VireoBinary.hasKVM))
struct HostCloneTests {
    func vireo(_ d: TestDaemon, _ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        try ChildProcessRunner.run([VireoBinary.path ?? "vireo", "--socket", d.socket] + args)
    }

    func config(_ d: TestDaemon, _ name: String) throws -> VMConfigReport {
        try d.client.call("GET", "/v1/vms/\(name)/config", as: VMConfigReport.self)
    }

    @Test func aCloneFromASnapshotRunsBesideItsSourceWithItsOwnIdentity() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        _ = try d.createProbe("src", workload: "dirty", memory: 32)
        #expect(try d.action("src", "start").status == 200)
        let srcPID = try #require(try d.vm("src").pid)
        #expect(try vireo(d, ["vm", "snapshot", "create", "src", "gold"]).status == 0)

        let made = try vireo(d, ["vm", "clone", "src", "c1", "--snapshot", "gold", "--start"])
        #expect(made.status == 0 && made.stdout.contains("cloned src (snapshot gold) as c1: running"), "\(made.stdout) \(made.stderr)")
        let c1 = try d.vm("c1")
        #expect(c1.state == .running && c1.pid != nil && c1.pid != srcPID)
        #expect(try d.vm("src").state == .running && d.vm("src").pid == srcPID, "the source must run on beside its clone")
        // Its own generation ID, and the VMM runs exactly the clone's configuration.
        let srcID = try #require(try config(d, "src").stored.generationID)
        let report = try config(d, "c1")
        #expect(report.stored.generationID != nil && report.stored.generationID != srcID)
        #expect(report.inSync == true, "stored \(report.stored) running \(String(describing: report.running))")
        #expect(report.running?.name == "c1")
        // It was restored, not booted: the snapshot's state became the clone's first start.
        let events = try d.client.call("GET", "/v1/events?vm=c1", as: EventList.self).events.map(\.type)
        #expect(events.contains("cloned") && events.contains("resumed-from-suspend"), "\(events)")

        // More clones of the same snapshot run at once; deleting the snapshot leaves them whole.
        #expect(try d.req("POST", "/v1/vms/src/clone", json: #"{"name":"c2","snapshot":"gold"}"#).status == 201)
        #expect(try vireo(d, ["vm", "snapshot", "delete", "src", "gold"]).status == 0)
        #expect(try d.action("c2", "start").status == 200)
        #expect(try d.vm("c2").state == .running && d.vm("c1").state == .running)
        for name in ["c1", "c2"] {
            #expect(try d.action(name, "stop").status == 200)
            #expect(try d.req("DELETE", "/v1/vms/\(name)").status == 204)
            #expect(!FileManager.default.fileExists(atPath: d.dataDir + "/vms/\(name)"), "deleting \(name) left files")
        }
    }

    @Test func aStoppedVMsDisksAreCopiedNotShared() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        #expect(try d.req("POST", "/v1/images", json: #"{"name":"i1","size_bytes":8388608}"#).status == 201)
        let imagePath = try d.client.call("GET", "/v1/images/i1", as: Image.self).path
        let pattern = (0..<65536).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        do {
            let img = try DiskImage.open(path: imagePath)
            try pattern.withUnsafeBytes { try img.write($0, at: 1 << 20) }
            try img.close()
        }
        _ = try d.createProbe("dsrc", workload: "dirty", memory: 32, extra: #","disks":[{"image":"i1"}]"#)
        let r = try d.req("POST", "/v1/vms/dsrc/clone", json: #"{"name":"dcopy"}"#)
        #expect(r.status == 201, "\(r.text)")
        let clone = try d.vm("dcopy")
        let disk = try #require(clone.definition.disks.first)
        #expect(disk.path.hasPrefix(d.dataDir + "/vms/dcopy/") && disk.path != imagePath && disk.image == nil, "\(disk.path)")
        let copy = try DiskImage.open(path: disk.path)
        var back = [UInt8](repeating: 0, count: pattern.count)
        try back.withUnsafeMutableBytes { try copy.read(into: $0, at: 1 << 20) }
        #expect(back == pattern, "the clone's disk does not hold the source's data")
        // Writing the clone's disk leaves the source's alone.
        try [UInt8](repeating: 0xEE, count: 512).withUnsafeBytes { try copy.write($0, at: 1 << 20) }
        try copy.close()
        let src = try DiskImage.open(path: imagePath, readOnly: true)
        try back.withUnsafeMutableBytes { try src.read(into: $0, at: 1 << 20) }
        try src.close()
        #expect(back == pattern, "the source's disk changed when its clone's was written")
        #expect(try config(d, "dcopy").stored.generationID != config(d, "dsrc").stored.generationID)
        #expect(try d.action("dcopy", "start").status == 200)
        #expect(try d.action("dcopy", "stop").status == 200)
        #expect(try d.req("DELETE", "/v1/vms/dcopy").status == 204)
        #expect(!FileManager.default.fileExists(atPath: disk.path))
    }

    @Test func refusalsSayWhyAndLeaveNothing() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        _ = try d.createProbe("r", workload: "dirty", memory: 32)
        _ = try d.createProbe("taken", workload: "dirty", memory: 32)
        func refused(_ body: String, _ status: Int, _ words: String, _ clone: String) throws {
            let r = try d.req("POST", "/v1/vms/r/clone", json: body)
            #expect(r.status == status && r.text.contains(words), "\(body): \(r.status) \(r.text)")
            if clone != "taken" {
                #expect(!FileManager.default.fileExists(atPath: d.dataDir + "/vms/\(clone)"), "a refused clone left \(clone)'s directory")
            }
        }
        try refused(#"{"name":"taken"}"#, 409, "already exists", "taken")
        try refused(#"{"name":"Bad Name"}"#, 400, "not a valid VM name", "Bad Name")
        try refused(#"{"name":"r"}"#, 422, "a name of its own", "r2")
        try refused(#"{"name":"x1","snapshot":"none"}"#, 404, "no snapshot named", "x1")
        try refused(#"{"name":"x2","bogus":1}"#, 400, "bogus", "x2")
        try refused(#"{"name":"x3","taps":["tap9"]}"#, 422, "has no NICs on TAPs", "x3")
        #expect(try d.action("r", "start").status == 200)
        try refused(#"{"name":"x4"}"#, 409, "take a snapshot", "x4")
        let cli = try vireo(d, ["vm", "clone", "r", "x5"])
        #expect(cli.status == 1 && cli.stderr.contains("stop it first"), "\(cli.stderr)")
        #expect(try d.client.call("GET", "/v1/vms", as: VMList.self).vms.map(\.name).sorted() == ["r", "taken"])
    }
}
