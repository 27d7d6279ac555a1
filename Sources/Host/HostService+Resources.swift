import VireoAPI
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// Shares, reservations and limits (docs/memory.md): each VMM runs in its own cgroup
/// (VMCgroup.swift), made when the VM starts and removed when its VMM ends; admission control
/// refuses a start that would promise more CPU or memory than the host has.
extension HostService {
    func cgroup(_ name: String) -> Result<VMCgroup, VireoError> { VMCgroup.forVM(name, dataDir: dataDir) }

    /// Puts a just-spawned VMM into its VM's cgroup with the VM's controls. A VM with controls
    /// that cannot be applied must not run without them: the caller stops it. A VM without any
    /// is placed best effort (an event says why not).
    func placeInCgroup(_ name: String, _ config: VMConfig, pid: Int32) throws(VireoError) {
        do throws(VireoError) {
            let cg = try cgroup(name).get()
            try cg.create()
            try cg.apply(config)
            try cg.attach(pid: pid)
        } catch {
            if config.hasResourceControls { throw error }
            event(name, "cgroup-unavailable", "the VM runs without its own cgroup: \(error)")
        }
    }

    func removeCgroup(_ name: String) {
        if case let .success(cg) = cgroup(name) { cg.remove() }
    }

    /// What the host can promise: CPU in percent of one core, memory in MiB (its RAM, or the
    /// daemon's memory cgroup's limit, less the minFree reserve).
    func reservableCapacity() -> (cpuPct: Int, memoryMiB: Int) {
        let m = HostMemory.sample()
        let minFree = m.minFree(override: memoryMinFree)
        let mem = m.totalBytes > minFree ? (m.totalBytes - minFree) >> 20 : 0
        return (ProcFS.onlineCPUs * 100, Int(clamping: mem))
    }

    /// At create and update: the VM's reservations alone must fit the host.
    func checkReservationsFit(_ c: VMConfig) throws {
        let cap = reservableCapacity()
        if let r = c.cpuReservationPct, r > cap.cpuPct {
            throw HTTPError.invalid("reservation-exceeds-host", "cpu_reservation_pct \(r) reserves more CPU than this host has: \(ProcFS.onlineCPUs) CPUs = \(cap.cpuPct)%. Give at most \(cap.cpuPct)")
        }
        if let r = c.memoryReservationMiB, r > cap.memoryMiB {
            throw HTTPError.invalid("reservation-exceeds-host", "memory_reservation_mib \(r) reserves more memory than this host has: \(cap.memoryMiB) MiB (its memory less the \(MemoryAdmission.mib(Int(clamping: HostMemory.sample().minFree(override: memoryMinFree) >> 20))) minFree reserve). Give at most \(cap.memoryMiB)")
        }
    }

    /// At start (and when a running VM's reservations grow): its reservations plus those of every
    /// other VM with a VMM must fit the host. 422 `insufficient-reservation` with the numbers.
    func admitReservations(_ name: String, _ c: VMConfig) throws {
        guard c.cpuReservationPct != nil || c.memoryReservationMiB != nil else { return }
        let others = try inventory.all().filter { $0.state.hasProcess && $0.name != name }
        let cpuHeld = others.reduce(0) { $0 &+ ($1.definition.config.cpuReservationPct ?? 0) }
        let memHeld = others.reduce(0) { $0 &+ ($1.definition.config.memoryReservationMiB ?? 0) }
        let holders = { (kp: KeyPath<VMConfig, Int?>) in others.filter { $0.definition.config[keyPath: kp] != nil }.count }
        let cap = reservableCapacity()
        if let r = c.cpuReservationPct, r &+ cpuHeld > cap.cpuPct {
            let n = holders(\.cpuReservationPct)
            throw HTTPError.invalid("insufficient-reservation", "VM '\(name)' reserves \(r)% CPU; this host has \(cap.cpuPct)% (\(ProcFS.onlineCPUs) CPUs), of which \(n) running VM\(n == 1 ? "" : "s") reserve \(cpuHeld)%: \(max(0, cap.cpuPct - cpuHeld))% is left. Stop another VM, or lower a reservation (`vireo vm set NAME --cpu-reservation PCT`)")
        }
        if let r = c.memoryReservationMiB, r &+ memHeld > cap.memoryMiB {
            let n = holders(\.memoryReservationMiB)
            throw HTTPError.invalid("insufficient-reservation", "VM '\(name)' reserves \(MemoryAdmission.mib(r)) of memory; this host can reserve \(MemoryAdmission.mib(cap.memoryMiB)) (its memory less the minFree reserve), of which \(n) running VM\(n == 1 ? "" : "s") reserve \(MemoryAdmission.mib(memHeld)): \(MemoryAdmission.mib(max(0, cap.memoryMiB - memHeld))) is left. Stop another VM, or lower a reservation (`vireo vm set NAME --memory-reservation SIZE`)")
        }
    }

    /// A running VM's new controls, applied to its cgroup before they are stored.
    func applyLive(_ name: String, _ c: VMConfig) throws {
        do throws(VireoError) {
            let cg = try cgroup(name).get()
            try cg.create()
            // A limit below what the VM holds now would make the kernel reclaim it at once, and
            // without swap (or on v2, whose memory.max OOM-kills) kill the VMM: refused instead.
            if let limit = c.memoryLimitMiB, let usage = cg.usageBytes, (UInt64(limit) << 20) + VMCgroup.vmmOverheadBytes < usage {
                throw VireoError(.conflict, "the VM holds \(ByteSize.format(usage)) of host memory now (its VMM's 64 MiB allowance included), more than a \(limit) MiB limit allows",
                                 hint: "shrink the guest first (`vireo vm balloon \(name) SIZE`), or give a limit of at least \((usage - min(usage, VMCgroup.vmmOverheadBytes)) >> 20) MiB")
            }
            try cg.apply(c)
        } catch {
            throw HTTPError.invalid("cgroup-refused", "VM '\(name)': its cgroup refused the new settings: \(error)")
        }
    }

    /// PATCH's resource fields into a configuration: 0 removes a limit or a reservation.
    static func applyResourceUpdate(_ u: VMUpdate, to c: inout VMConfig) {
        func set(_ v: Int?, _ kp: WritableKeyPath<VMConfig, Int?>, zeroClears: Bool) {
            guard let v else { return }
            c[keyPath: kp] = zeroClears && v == 0 ? nil : v
        }
        set(u.cpuShares, \.cpuShares, zeroClears: false)
        set(u.cpuLimitPct, \.cpuLimitPct, zeroClears: true)
        set(u.cpuReservationPct, \.cpuReservationPct, zeroClears: true)
        set(u.memoryReservationMiB, \.memoryReservationMiB, zeroClears: true)
        set(u.memoryLimitMiB, \.memoryLimitMiB, zeroClears: true)
        set(u.memoryShares, \.memoryShares, zeroClears: false)
        if let v = u.shareable { c.shareable = v }
    }

    /// "cpu_shares 100 -> 200" for each control that changed (the `updated` event).
    static func resourceChanges(_ a: VMConfig, _ b: VMConfig) -> [String] {
        let keys: [(String, KeyPath<VMConfig, Int?>)] = [("cpu_shares", \.cpuShares), ("cpu_limit_pct", \.cpuLimitPct),
            ("cpu_reservation_pct", \.cpuReservationPct), ("memory_reservation_mib", \.memoryReservationMiB),
            ("memory_limit_mib", \.memoryLimitMiB), ("memory_shares", \.memoryShares)]
        var out: [String] = []
        for (key, kp) in keys where a[keyPath: kp] != b[keyPath: kp] {
            out.append("\(key) \(a[keyPath: kp].map(String.init) ?? "none") -> \(b[keyPath: kp].map(String.init) ?? "none")")
        }
        if a.shareable != b.shareable { out.append("shareable \(a.shareable ?? false) -> \(b.shareable ?? false)") }
        return out
    }
}

extension HostService {
    func configureMemoryPolicy(minFree: UInt64?) { memoryMinFree = minFree }
}
