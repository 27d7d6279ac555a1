import DiskImage
import Foundation
import Testing
import VireoTestSupport
import VireoAPI
#if canImport(Glibc)
import Glibc
#endif

/// Storage pools: the daemon uses files only inside its data directory and the `--pool`
/// directories; /etc/shadow, a symlink out of a pool, or an image whose backing file lies
/// outside its pool is refused with 422 and nothing changes. Its files are 0600 in 0700 dirs.
@Suite(.serialized, .timeLimit(.minutes(2)), .enabled(if: VireoBinary.path != nil))
struct HostPoolTests {
    func expectRefused(_ d: TestDaemon, _ method: String, _ path: String, _ body: String, mentioning: String) throws {
        let r = try d.req(method, path, json: body)
        let text = r.text.replacingOccurrences(of: "\\/", with: "/")
        #expect(r.status == 422 && text.contains("outside-pools") && text.contains(mentioning), "\(method) \(path) \(body): \(r.status) \(r.text)")
    }

    @Test func filesOutsideThePoolsAreRefusedAndNothingChanges() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        let kernel = d.dir + "/vmlinuz"
        FileManager.default.createFile(atPath: kernel, contents: Data(repeating: 0, count: 4096))
        // A symlink inside the pool that leads out of it.
        symlink("/etc/passwd", d.dir + "/innocent.raw")
        // A qcow2 inside the pool whose backing file is outside it (absolute, and climbing out).
        try Qcow2Image.create(path: d.dir + "/evil-abs.qcow2", size: nil, options: Qcow2CreateOptions(backingFile: "/etc/passwd", backingFormat: .raw))
        try Qcow2Image.create(path: d.dir + "/evil-rel.qcow2", size: nil, options: Qcow2CreateOptions(backingFile: "../../../../../../etc/passwd", backingFormat: .raw))
        // And one whose backing file is beside it: fine.
        let base = d.dir + "/base.raw"
        FileManager.default.createFile(atPath: base, contents: Data(repeating: 0, count: 1 << 20))
        try Qcow2Image.create(path: d.dir + "/good.qcow2", size: nil, options: Qcow2CreateOptions(backingFile: "base.raw", backingFormat: .raw))

        let vm = #"{"name":"x","probe":"dirty","disks":[{"path":"%@"}]}"#
        try expectRefused(d, "POST", "/v1/vms", vm.replacingOccurrences(of: "%@", with: "/etc/shadow"), mentioning: "/etc/shadow")
        try expectRefused(d, "POST", "/v1/vms", vm.replacingOccurrences(of: "%@", with: d.dir + "/innocent.raw"), mentioning: "resolves to /etc/passwd")
        try expectRefused(d, "POST", "/v1/vms", vm.replacingOccurrences(of: "%@", with: d.dir + "/evil-abs.qcow2"), mentioning: "backing file")
        try expectRefused(d, "POST", "/v1/vms", vm.replacingOccurrences(of: "%@", with: d.dir + "/evil-rel.qcow2"), mentioning: "backing file")
        try expectRefused(d, "POST", "/v1/vms", #"{"name":"x","kernel":"/etc/shadow"}"#, mentioning: "kernel")
        try expectRefused(d, "POST", "/v1/vms", #"{"name":"x","kernel":"\#(kernel)","initrd":"/etc/shadow"}"#, mentioning: "initrd")
        try expectRefused(d, "POST", "/v1/images", #"{"name":"stolen","source":"/etc/shadow"}"#, mentioning: "source")
        try expectRefused(d, "POST", "/v1/images", #"{"name":"stolen","source":"\#(d.dir)/evil-abs.qcow2"}"#, mentioning: "backing file")
        try expectRefused(d, "POST", "/v1/templates", #"{"name":"t","kernel":"/etc/shadow"}"#, mentioning: "kernel")
        try expectRefused(d, "POST", "/v1/templates", #"{"name":"t","kernel":"\#(kernel)","base_disk":"/etc/shadow"}"#, mentioning: "base")
        #expect(try d.client.call("GET", "/v1/vms", as: VMList.self).vms.isEmpty)
        #expect(try d.client.call("GET", "/v1/images", as: ImageList.self).images.isEmpty)
        #expect(try d.client.call("GET", "/v1/templates", as: TemplateList.self).templates.isEmpty)

        // Inside the pool, with its backing beside it, it is accepted (and its real path kept).
        let ok = try d.req("POST", "/v1/vms", json: vm.replacingOccurrences(of: "%@", with: d.dir + "/good.qcow2"))
        #expect(ok.status == 201, "\(ok.text)")
        // The CLI exits non-zero with the reason.
        let cli = try ChildProcessRunner.run([VireoBinary.path ?? "vireo", "--socket", d.socket, "vm", "create", "y", "--probe", "dirty", "--disk", "path=/etc/shadow"])
        #expect(cli.status != 0 && cli.stderr.contains("outside the daemon's storage pools"), "\(cli.stderr)")
    }

    @Test(.enabled(if: VireoBinary.hasKVM)) func theDaemonsFilesAreItsOwn() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        _ = try d.createProbe("p")
        #expect(try d.action("p", "start").status == 200)
        #expect(try d.req("POST", "/v1/images", json: #"{"name":"img","size_bytes":1048576}"#).status == 201)
        func mode(_ path: String) -> mode_t { var st = stat(); return stat(path, &st) == 0 ? st.st_mode & 0o777 : 0o7777 }
        for dir in [d.dataDir, d.dataDir + "/vms", d.dataDir + "/images", d.dataDir + "/vms/p"] { #expect(mode(dir) == 0o700, "\(dir)") }
        for file in ["/vms/p/console.log", "/vms/p/vmm.log", "/vms/p/config.json", "/images/img.qcow2", "/inventory.db"] {
            #expect(mode(d.dataDir + file) == 0o600, "\(file): \(String(mode(d.dataDir + file), radix: 8))")
        }
        _ = try d.action("p", "kill")
    }

    @Test func aPoolOfTheWholeHostIsRefused() throws {
        let r = try ChildProcessRunner.run([VireoBinary.path ?? "vireo", "host", "--socket", "/tmp/vireo-pool-\(getpid()).sock",
                                            "--data-dir", "/tmp/vireo-pool-\(getpid())", "--pool", "/"])
        #expect(r.status != 0 && r.stderr.contains("--pool /"), "\(r.stderr)")
        _ = system("rm -rf /tmp/vireo-pool-\(getpid())")
    }
}
