import VireoAPI
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// POST /v1/vms/{name}/balloon: the seeds' ballooning, on demand. The actor checks the VM; the
/// VMM is asked outside it (a slow VMM never holds up other requests). The new target is not
/// stored in the definition: `balloon_mib` stays the size the VM starts with (like libvirt's
/// `setmem --live` without `--config`).
extension HostService {
    struct BalloonTarget: Sendable {
        var name: String
        var socket: String
        var memoryMiB: Int
    }

    /// 404 for an unknown VM; 409 for one without a VMM or without a balloon device.
    func balloonTarget(_ name: String) throws -> BalloonTarget {
        let vm = try show(name)
        guard vm.state.hasProcess else {
            throw HTTPError.conflict("VM '\(name)' is \(vm.state.rawValue); its balloon can be set only while it runs (`vireo vm start \(name)`)")
        }
        guard vm.balloonMiB != nil else {
            throw HTTPError.conflict("VM '\(name)' has no balloon device: stop it (`vireo vm stop \(name)`), give it one (`vireo vm update \(name) --balloon SIZE`), then start it again")
        }
        return BalloonTarget(name: name, socket: vm.apiSocket, memoryMiB: vm.memoryMiB)
    }
}

enum BalloonControl {
    /// Sets (or with nil, reads) the balloon target through the VMM's control socket.
    static func apply(_ t: HostService.BalloonTarget, targetMiB: Int?) throws -> BalloonState {
        if let m = targetMiB, !(0...t.memoryMiB).contains(m) {
            throw HTTPError.invalid("out-of-range", "target_mib \(m) is out of range: give 0 (deflated) to \(t.memoryMiB) (all of the VM's memory)")
        }
        let command = targetMiB.map { "balloon \($0)" } ?? "balloon"
        guard let reply = VMMProcess.control(t.socket, command, timeoutSeconds: 2) else {
            throw HTTPError(500, "vmm-unresponsive", "VM '\(t.name)': its VMM did not answer on \(t.socket) within 2 s")
        }
        struct Reply: Decodable { var ok: Bool; var error: String?; var target_mib: Int?; var actual_mib: Int? }
        guard let r = try? JSONDecoder().decode(Reply.self, from: Data(reply.utf8)) else {
            throw HTTPError(500, "vmm-bad-reply", "VM '\(t.name)': its VMM answered the balloon request with something unreadable")
        }
        guard r.ok, let target = r.target_mib, let actual = r.actual_mib else {
            throw HTTPError.conflict("VM '\(t.name)': \(r.error ?? "the VMM refused the balloon request")")
        }
        return BalloonState(targetMiB: target, actualMiB: actual)
    }
}
