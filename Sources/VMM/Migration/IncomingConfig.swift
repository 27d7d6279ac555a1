import VireoConfig
import VireoSupport

extension RestoreSource {
    /// Why a configuration of the caller's own is given with the machine state.
    public enum Adoption: Sendable {
        /// A migration destination's (its daemon's: the disks at its paths, its TAPs). MAC
        /// addresses may not differ: the guest moves, it does not change.
        case migration
        /// A restore under another configuration (`vireo run --restore DIR --config FILE`): a
        /// clone's (its own disks, TAPs, MACs, vsock CID, generation ID, name) or a revert's
        /// (a new generation ID). A read-write disk at another path than the snapshot's is
        /// taken as it is: it must hold the disk as it was at the snapshot (the daemon makes a
        /// clone's disks from the snapshot's internal disk snapshots).
        case restore
    }

    /// Runs the machine the state brings under `local`, once it is shown to describe the same
    /// machine: vCPUs, memory, and the same devices with the same ids.
    public mutating func adoptConfig(_ local: VMConfig, for adoption: Adoption) throws {
        let what = adoption == .migration ? "incoming migration" : "restore"
        let there = adoption == .migration ? "at the source" : "in the snapshot"
        guard let remote = snapshot.config else {
            throw VireoError(.invalidArgument, "\(what): the machine state carries no VM configuration, so --config cannot be checked against it",
                             hint: "leave out --config: the machine comes whole with its state")
        }
        var differences: [String] = []
        func differ(_ item: String, _ a: String, _ b: String) { if a != b { differences.append("\(item) \(a) here, \(b) \(there)") } }
        differ("vCPUs", "\(local.vcpus)", "\(remote.vcpus)")
        differ("memory MiB", "\(local.memoryMiB)", "\(remote.memoryMiB)")
        differ("disks", local.disks.map { "\($0.id ?? "?")\($0.isReadOnly ? "(ro)" : "")" }.joined(separator: ","),
               remote.disks.map { "\($0.id ?? "?")\($0.isReadOnly ? "(ro)" : "")" }.joined(separator: ","))
        differ("NICs", local.nics.map { $0.id ?? "?" }.joined(separator: ","), remote.nics.map { $0.id ?? "?" }.joined(separator: ","))
        if adoption == .migration {
            for (l, r) in zip(local.nics, remote.nics) where l.mac != nil && r.mac != nil {
                differ("MAC of \(l.id ?? "?")", l.mac ?? "", r.mac ?? "")
            }
        }
        differ("rng", "\(local.rng == true)", "\(remote.rng == true)")
        differ("balloon", "\(local.balloonMiB != nil)", "\(remote.balloonMiB != nil)")
        differ("vsock", "\(local.vsockCID != nil)", "\(remote.vsockCID != nil)")
        differ("virtio console", "\(local.virtioConsole == true)", "\(remote.virtioConsole == true)")
        differ("boot", local.probe.map { "probe \($0)" } ?? "kernel", remote.probe.map { "probe \($0)" } ?? "kernel")
        guard differences.isEmpty else {
            throw VireoError(.invalidArgument, "\(what): --config describes another machine than the state holds: \(differences.joined(separator: "; "))",
                             hint: adoption == .migration ? "give the destination the source VM's configuration (only disk paths and TAP names may differ)"
                                 : "give the configuration the snapshot was taken with (disk paths, TAPs, MACs, the vsock CID and the generation ID may differ)")
        }
        if adoption == .restore {
            var saved: [String: String] = [:]
            for d in snapshot.disks ?? [] where saved[d.id] == nil { saved[d.id] = d.path }
            disksTakenAsGiven = Set(local.disks.compactMap { d in
                guard let id = d.id, !d.isReadOnly, let was = saved[id], was != d.path else { return nil }
                return id
            })
        }
        originalConfig = originalConfig ?? remote
        snapshot.config = local
    }
}
