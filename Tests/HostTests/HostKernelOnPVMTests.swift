import Foundation
import Testing
import VireoAPI
import VireoSupport
import VireoTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// A Linux-kernel VM on a host whose KVM is the PVM backend (this test machine is one) is refused
/// at start with the reason and the way out, unless the daemon runs with --allow-emulated-kernels.
/// The testbed scenarios run their daemon in a nested L1 whose KVM is not PVM; they are unaffected.
@Suite(.serialized, .timeLimit(.minutes(2)),
       .enabled(if: VireoBinary.path != nil && access("/sys/module/kvm_pvm", F_OK) == 0, "needs a PVM host (/sys/module/kvm_pvm)"))
struct HostKernelOnPVMTests {
    static func kernel(_ d: TestDaemon) -> String {
        let p = d.dir + "/vmlinuz"
        FileManager.default.createFile(atPath: p, contents: Data(repeating: 0, count: 4096))
        return p
    }

    /// Before: the start went on to the VMM (here it fails on the dummy kernel with the VMM's
    /// own reason; with a real kernel the VM showed "running" with an empty console forever).
    @Test func startOfAKernelVMIsRefusedWithTheWayOut() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        #expect(try d.req("POST", "/v1/vms", json: #"{"name":"lin","kernel":"\#(Self.kernel(d))","memory_mib":64}"#).status == 201)
        let r = try d.action("lin", "start")
        #expect(r.status == 422, "\(r.text)")
        let body = try JSONDecoder().decode(APIErrorBody.self, from: Data(r.body))
        #expect(body.code == "kvm-cannot-boot-kernels", "\(body)")
        #expect(body.message.contains("PVM") && body.message.contains("scripts/testbed.sh")
                && body.message.contains("VT-x/AMD-V") && body.message.contains("--allow-emulated-kernels"), "\(body.message)")
        let vm = try d.vm("lin")
        #expect(vm.state == .stopped && vm.pid == nil, "nothing was started: \(vm)")
        // Probe VMs still run here.
        if VireoBinary.hasKVM {
            _ = try d.createProbe("p")
            #expect(try d.action("p", "start").status == 200)
        }
    }

    @Test(.enabled(if: VireoBinary.hasKVM)) func theDaemonsOptInLetsItStart() throws {
        let d = try TestDaemon(extra: ["--allow-emulated-kernels"])
        defer { d.shutdown() }
        #expect(try d.req("POST", "/v1/vms", json: #"{"name":"lin","kernel":"\#(Self.kernel(d))","memory_mib":64}"#).status == 201)
        // The start reaches the VMM, which refuses the dummy kernel with its own reason.
        let r = try d.action("lin", "start")
        #expect(!r.text.contains("kvm-cannot-boot-kernels"), "\(r.text)")
        #expect(try d.vm("lin").state != .stopped || r.status == 200, "the VMM was started: \(r.text)")
    }
}
