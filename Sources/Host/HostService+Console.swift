import VireoAPI

extension HostService {
    /// The VMM's console socket (`vireo run --console-socket`): COM1 for any number of clients.
    func consoleSocketPath(_ name: String) -> String { vmDir(name) + "/console.sock" }

    /// Where to attach to `name`'s serial console: its VMM's console socket. 404 for an unknown
    /// VM, 409 when it has no VMM (stopped, failed) or is still starting.
    func consoleAttachTarget(_ name: String) throws -> String {
        guard VMLimits.isValidName(name), let r = try inventory.get(name) else { throw HTTPError.notFound(name) }
        guard r.state == .running || r.state == .paused else {
            throw HTTPError.conflict("VM '\(name)' is \(r.state.rawValue); its console can be attached only while it runs (`vireo vm start \(name)`; `vireo vm logs \(name)` prints the log)")
        }
        if let probe = r.definition.probe, !Self.probeHasConsole(probe, disks: r.definition.disks.count) {
            throw HTTPError.conflict("VM '\(name)' runs the built-in probe guest (workload \(probe.prefix(40))), which has no serial console to attach to: only the echo workload without disks has one. `vireo vm logs \(name)` prints its pass markers")
        }
        return consoleSocketPath(name)
    }

    /// Whether a probe VM's VMM serves a console: only the echo workload has a UART, and only
    /// without disks (probe images drive virtio instead); see Machine.swift.
    static func probeHasConsole(_ workload: String, disks: Int) -> Bool {
        workload.split(separator: ":").first == "echo" && disks == 0
    }
}
