#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import VireoAPI

/// GET /v1/vms/{name}/config: the configuration the daemon stored for a VM and, while its VMM
/// runs, the one the VMM reports it runs (its control command `config`). They are the same
/// unless something went wrong on the way; `in_sync` says which.
extension HostService {
    struct ConfigTarget: Sendable {
        var stored: VMConfig
        var socket: String?
    }

    func configTarget(_ name: String) throws -> ConfigTarget {
        let vm = try show(name)
        return ConfigTarget(stored: vm.definition.config, socket: vm.state.hasProcess ? vm.apiSocket : nil)
    }
}

enum VMConfigCollector {
    /// Asks the VMM (off the service actor: a slow VMM holds up nothing else).
    static func collect(_ t: HostService.ConfigTarget) throws -> VMConfigReport {
        guard let socket = t.socket else { return VMConfigReport(stored: t.stored, running: nil) }
        guard let reply = VMMProcess.control(socket, "config", timeoutSeconds: 2) else {
            throw HTTPError(500, "vmm-unresponsive", "the VMM did not answer on \(socket)")
        }
        struct Reply: Decodable { var ok: Bool; var config: VMConfig?; var error: String? }
        guard let r = try? JSONDecoder().decode(Reply.self, from: Data(reply.utf8)), r.ok, let running = r.config else {
            throw HTTPError(500, "vmm-unresponsive", "the VMM's answer to 'config' is not a configuration: \(reply.prefix(200))")
        }
        return VMConfigReport(stored: t.stored, running: running)
    }
}
