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
        return consoleSocketPath(name)
    }
}
