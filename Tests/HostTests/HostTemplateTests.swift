import DiskImage
import Foundation
import Testing
import VireoTestSupport
import VireoAPI
#if canImport(Glibc)
import Glibc
#endif

/// Templates and linked clones with the real disk-image library: a VM from a template with a
/// base disk gets a qcow2 overlay whose backing file is the base, thin and independent.
@Suite(.serialized, .timeLimit(.minutes(2)), .enabled(if: VireoBinary.path != nil))
struct HostTemplateTests {
    @Test func vmFromTemplateGetsALinkedCloneOfTheBaseDisk() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        let kernel = d.dir + "/vmlinuz"
        FileManager.default.createFile(atPath: kernel, contents: Data(repeating: 0, count: 4096))
        let base = d.dir + "/base.qcow2"
        try Qcow2Image.create(path: base, size: 64 << 20)

        let t = try d.req("POST", "/v1/templates", json: #"{"name":"debian","kernel":"\#(kernel)","cmdline":"console=ttyS0","base_disk":"\#(base)","vcpus":2,"memory_mib":256}"#)
        #expect(t.status == 201, "\(t.text)")
        let template = try JSONDecoder().decode(Template.self, from: Data(t.body))
        #expect(template.baseFormat == "qcow2")
        #expect(try d.req("POST", "/v1/templates", json: #"{"name":"debian","kernel":"\#(kernel)"}"#).status == 409)
        #expect(try d.req("POST", "/v1/templates", json: #"{"name":"t2","kernel":"\#(kernel)","base_disk":"/nope.qcow2"}"#).status == 422)
        #expect(try d.req("POST", "/v1/templates", json: #"{"name":"t3","kernel":"\#(kernel)","colour":1}"#).status == 400)

        let r = try d.req("POST", "/v1/vms", json: #"{"name":"web","template":"debian","memory_mib":512}"#)
        #expect(r.status == 201, "\(r.text)")
        let vm = try d.vm("web")
        #expect(vm.kernel == kernel && vm.cmdline == "console=ttyS0" && vm.vcpus == 2 && vm.memoryMiB == 512 && vm.template == "debian")
        let clone = try #require(vm.disks.first?.path)
        #expect(clone == d.dataDir + "/vms/web/disk.qcow2")

        // The clone is a qcow2 whose backing file is the base, and it is thin.
        let img = try DiskImage.open(path: clone, format: nil, readOnly: true, options: OpenOptions())
        #expect(img.virtualSize == 64 << 20)
        #expect(img.backing != nil)
        try img.close()
        var st = stat()
        #expect(stat(clone, &st) == 0 && st.st_blocks * 512 < 1 << 20)
        let header = try #require(FileManager.default.contents(atPath: clone))
        #expect(String(decoding: header, as: UTF8.self).contains(base))

        // A VM from a template may not name its own kernel; unknown templates are 404.
        #expect(try d.req("POST", "/v1/vms", json: #"{"name":"w2","template":"debian","kernel":"\#(kernel)"}"#).status == 422)
        #expect(try d.req("POST", "/v1/vms", json: #"{"name":"w3","template":"nope"}"#).status == 404)
        #expect(access(d.dataDir + "/vms/w2/disk.qcow2", F_OK) != 0)

        // In use: the template stays. Deleting the VM removes its clone; then the template goes.
        #expect(try d.req("DELETE", "/v1/templates/debian").status == 409)
        #expect(try d.req("DELETE", "/v1/vms/web").status == 204)
        #expect(access(clone, F_OK) != 0)
        #expect(access(base, F_OK) == 0)
        #expect(try d.req("DELETE", "/v1/templates/debian").status == 204)
        #expect(try d.client.call("GET", "/v1/templates", as: TemplateList.self).templates.isEmpty)
    }
}
