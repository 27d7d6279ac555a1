import VireoConfig
import VireoSupport

extension RestoreSource {
    /// A migration destination with a VM configuration of its own (its daemon's: the disks at
    /// its paths, its TAPs) runs the machine the stream brings under that configuration, once
    /// it is shown to describe the same machine: vCPUs, memory, and the same devices with the
    /// same ids (disk paths and TAP names may differ; MAC addresses may not).
    public mutating func adoptLocalConfig(_ local: VMConfig) throws {
        guard let remote = snapshot.config else {
            throw VireoError(.invalidArgument, "incoming migration: the source's machine carries no VM configuration, so --config cannot be checked against it",
                             hint: "leave out --config: the machine comes whole from the source")
        }
        var differences: [String] = []
        func differ(_ what: String, _ a: String, _ b: String) { if a != b { differences.append("\(what) \(a) here, \(b) at the source") } }
        differ("vCPUs", "\(local.vcpus)", "\(remote.vcpus)")
        differ("memory MiB", "\(local.memoryMiB)", "\(remote.memoryMiB)")
        differ("disks", local.disks.map { "\($0.id ?? "?")\($0.isReadOnly ? "(ro)" : "")" }.joined(separator: ","),
               remote.disks.map { "\($0.id ?? "?")\($0.isReadOnly ? "(ro)" : "")" }.joined(separator: ","))
        differ("NICs", local.nics.map { $0.id ?? "?" }.joined(separator: ","), remote.nics.map { $0.id ?? "?" }.joined(separator: ","))
        for (l, r) in zip(local.nics, remote.nics) where l.mac != nil && r.mac != nil {
            differ("MAC of \(l.id ?? "?")", l.mac ?? "", r.mac ?? "")
        }
        differ("rng", "\(local.rng == true)", "\(remote.rng == true)")
        differ("balloon", "\(local.balloonMiB != nil)", "\(remote.balloonMiB != nil)")
        differ("vsock", "\(local.vsockCID != nil)", "\(remote.vsockCID != nil)")
        differ("virtio console", "\(local.virtioConsole == true)", "\(remote.virtioConsole == true)")
        differ("boot", local.probe.map { "probe \($0)" } ?? "kernel", remote.probe.map { "probe \($0)" } ?? "kernel")
        guard differences.isEmpty else {
            throw VireoError(.invalidArgument, "incoming migration: --config describes another machine than the source runs: \(differences.joined(separator: "; "))",
                             hint: "give the destination the source VM's configuration (only disk paths and TAP names may differ)")
        }
        snapshot.config = local
    }
}
