import DiskImage
import Foundation
import Testing
import VireoTestSupport
import VireoAPI
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// A VM's configuration reaches its VMM whole: what the daemon stored is what the VMM reports
/// it runs (control command `config`), field by field; every disk has a recorded format,
/// checked against its file; definitions stored without formats are migrated once.
@Suite(.serialized, .timeLimit(.minutes(2)), .enabled(if: VireoBinary.path != nil))
struct HostConfigHandoffTests {
    /// One line to the VMM's control socket, one line back.
    static func control(_ socket: String, _ command: String) throws -> String {
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        let rc = UnixSocketAddress.with(socket) { connect(fd, $0, $1) }
        guard rc == 0 else { throw VireoError.system("connect \(socket)") }
        _ = (command + "\n").withCString { send(fd, $0, strlen($0), 0) }
        return String(decoding: TestDaemon.readAll(fd), as: UTF8.self)
    }

    static func runningConfig(_ vm: VM) throws -> VMConfig {
        let reply = try control(vm.apiSocket, "config")
        struct Reply: Decodable { var ok: Bool; var config: VMConfig }
        let r = try JSONDecoder().decode(Reply.self, from: Data(reply.utf8))
        #expect(r.ok)
        return r.config
    }

    static func writeFile(_ path: String, _ bytes: [UInt8], size: Int) throws {
        let fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0o644)
        guard fd >= 0 else { throw VireoError.system("create \(path)") }
        defer { close(fd) }
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        _ = ftruncate(fd, off_t(size))
    }

    @Test(.enabled(if: VireoBinary.hasKVM)) func whatTheDaemonStoredIsWhatTheVMMRuns() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        for (name, format) in [("q", "qcow2"), ("r", "raw")] {
            let r = try d.req("POST", "/v1/images", json: #"{"name":"\#(name)","size_bytes":8388608,"format":"\#(format)"}"#)
            #expect(r.status == 201, "\(r.text)")
        }
        let qpath = d.dir + "/by-path.qcow2"
        try Qcow2Image.create(path: qpath, size: 4 << 20)
        let rpath = d.dir + "/by-path.raw"
        try Self.writeFile(rpath, [], size: 1 << 20)
        let body = #"""
        {"name":"h","probe":"dirty","memory_mib":32,"vcpus":2,"hugepages":false,"disks":[
          {"image":"q"},
          {"image":"r","readonly":true},
          {"path":"\#(qpath)","backing":"forbidden"},
          {"path":"\#(rpath)","format":"raw","id":"data","rate_limit":{"bytes_per_second":1048576,"ops_per_second":50}}]}
        """#
        let created = try d.req("POST", "/v1/vms", json: body)
        #expect(created.status == 201, "\(created.text)")
        let stored = try d.vm("h").definition.config
        // Every disk has its format recorded, and an id.
        #expect(stored.disks.map(\.format) == [.qcow2, .raw, .qcow2, .raw])
        #expect(stored.disks.map(\.id) == ["disk0", "disk1", "disk2", "data"])
        #expect(stored.configVersion == VMConfig.currentVersion)

        #expect(try d.action("h", "start").status == 200)
        let vm = try d.vm("h")
        let running = try Self.runningConfig(vm)
        #expect(running == stored)
        // Field by field, for the fields most easily lost on the way.
        for (a, b) in zip(running.disks, stored.disks) {
            #expect(a.path == b.path && a.format == b.format && a.id == b.id && a.readonly == b.readonly)
            #expect(a.backing == b.backing && a.rateLimit == b.rateLimit && a.image == b.image)
        }
        #expect(running.vcpus == 2 && running.memoryMiB == 32 && running.hugepages == false && running.probe == "dirty")
        // The same through the API and the CLI (what an operator checks).
        let report = try d.client.call("GET", "/v1/vms/h/config", as: VMConfigReport.self)
        #expect(report.stored == stored && report.running == running && report.inSync == true)
        let cli = try ChildProcessRunner.run([VireoBinary.path ?? "vireo", "--socket", d.socket, "vm", "config", "h", "--running"])
        #expect(cli.status == 0 && (try? VMConfig.decode(Array(cli.stdout.utf8), source: "cli")) == stored, "\(cli.stderr)")
        // The file the VMM read is in the VM's directory, owner-only.
        var st = stat()
        #expect(stat(d.dataDir + "/vms/h/config.json", &st) == 0 && st.st_mode & 0o777 == 0o600)
        _ = try d.action("h", "kill")
    }

    @Test func declaredFormatsAreCheckedAgainstTheFile() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        let raw = d.dir + "/plain.raw"
        try Self.writeFile(raw, [], size: 1 << 20)
        let r1 = try d.req("POST", "/v1/vms", json: #"{"name":"a","probe":"dirty","disks":[{"path":"\#(raw)","format":"qcow2"}]}"#)
        #expect(r1.status == 422 && r1.text.contains("format-mismatch") && r1.text.contains("declared qcow2"), "\(r1.text)")
        // A raw disk whose first bytes are a qcow2 header (what a guest can write onto its raw
        // disk) is never taken for raw, nor for qcow2 without saying so.
        let disguised = d.dir + "/guest-written.raw"
        try Self.writeFile(d.dir + "/secret", [], size: 4096)
        try Qcow2Image.create(path: disguised, size: 1 << 20, options: Qcow2CreateOptions(backingFile: d.dir + "/secret", backingFormat: .raw))
        let r2 = try d.req("POST", "/v1/vms", json: #"{"name":"b","probe":"dirty","disks":[{"path":"\#(disguised)","format":"raw"}]}"#)
        #expect(r2.status == 422 && r2.text.contains("declared raw but starts with a qcow2 signature"), "\(r2.text)")
        // A VHD (its footer at the end) runs nowhere; the error says how to import it.
        let vhd = d.dir + "/disk.vhd"
        try Self.writeFile(vhd, [], size: 1 << 20)
        var footer = [UInt8](repeating: 0, count: 512)
        footer.replaceSubrange(0..<8, with: Array("conectix".utf8))
        let fd = open(vhd, O_WRONLY)
        _ = footer.withUnsafeBytes { pwrite(fd, $0.baseAddress, 512, off_t((1 << 20) - 512)) }
        close(fd)
        let r3 = try d.req("POST", "/v1/vms", json: #"{"name":"c","probe":"dirty","disks":[{"path":"\#(vhd)"}]}"#)
        #expect(r3.status == 422 && r3.text.contains("vireo image import"), "\(r3.text)")
        #expect(try d.client.call("GET", "/v1/vms", as: VMList.self).vms.isEmpty)
    }

    @Test(.enabled(if: VireoBinary.hasKVM)) func theVMMRefusesAFileThatChangedFormatAfterCreate() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        let path = d.dir + "/disk.raw"
        try Self.writeFile(path, [], size: 1 << 20)
        #expect(try d.req("POST", "/v1/vms", json: #"{"name":"v","probe":"dirty","memory_mib":32,"disks":[{"path":"\#(path)"}]}"#).status == 201)
        #expect(try d.vm("v").disks.first?.format == .raw)
        // The file becomes a qcow2 image with a backing file of someone's choice: the VMM, which
        // checks the signature against the recorded raw, refuses to start.
        unlink(path)
        try Self.writeFile(d.dir + "/other", [], size: 4096)
        try Qcow2Image.create(path: path, size: 1 << 20, options: Qcow2CreateOptions(backingFile: d.dir + "/other", backingFormat: .raw))
        let r = try d.action("v", "start")
        #expect(r.status == 422 && r.text.contains("declared raw but starts with a qcow2 signature"), "\(r.text)")
        #expect(try d.vm("v").state == .failed)
    }

    @Test func definitionsWithoutFormatsAreMigratedOnceAtStart() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        let q = d.dir + "/old.qcow2"
        try Qcow2Image.create(path: q, size: 1 << 20)
        let r = d.dir + "/old.raw"
        try Self.writeFile(r, [], size: 1 << 20)
        #expect(try d.req("POST", "/v1/vms", json: #"{"name":"old","probe":"dirty","disks":[{"path":"\#(q)"},{"path":"\#(r)"}]}"#).status == 201)
        d.kill9()
        // What a release before VM configurations stored: no config_version, no formats, no ids.
        let legacy = #"{"name":"old","vcpus":1,"memory_mib":512,"probe":"dirty","disks":[{"path":"\#(q)"},{"path":"\#(r)"}],"nics":[],"restart_policy":"never"}"#
        let sql = "UPDATE vms SET definition = '\(legacy)' WHERE name = 'old';"
        #expect(system("sqlite3 \(d.dataDir)/inventory.db \"\(sql.replacingOccurrences(of: "\"", with: "\\\""))\"") == 0)
        try d.start()
        let vm = try d.vm("old")
        #expect(vm.disks.map(\.format) == [.qcow2, .raw])
        #expect(vm.disks.map(\.id) == ["disk0", "disk1"])
        #expect(vm.definition.configVersion == VMConfig.currentVersion)
        let events = try d.client.call("GET", "/v1/events?vm=old", as: EventList.self).events
        let migrated = events.filter { $0.type == "definition-migrated" }
        #expect(migrated.count == 1 && migrated.first?.message.contains("disk0=qcow2") == true, "\(events)")
        // Once: a second start of the daemon changes nothing.
        d.kill9()
        try d.start()
        #expect(try d.client.call("GET", "/v1/events?vm=old", as: EventList.self).events.filter { $0.type == "definition-migrated" }.count == 1)
    }
}
