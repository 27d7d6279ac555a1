/// Shares, reservations and limits (docs/memory.md): what any holder of a configuration can
/// check without knowing the host. The daemon adds what depends on the host (more reserved than
/// it has) and applies them through the VM's cgroup.
extension VMConfig {
    /// Shares are relative weights between VMs, in cgroup v2's `cpu.weight` units: 100 is the
    /// default, 200 gets twice the CPU (or is reclaimed from half as eagerly) under contention.
    public static let sharesRange = 1...10000
    public static let defaultShares = 100

    /// The CPU one VM can use at most: its vCPUs, in percent of one core.
    public var maxCPUPct: Int { vcpus.multipliedReportingOverflow(by: 100).overflow ? Int.max : vcpus * 100 }

    public func validateResources() throws(ConfigProblem) {
        for (key, value) in [("cpu_shares", cpuShares), ("memory_shares", memoryShares)] {
            if let v = value, !Self.sharesRange.contains(v) {
                throw ConfigProblem(key, "out-of-range", "\(key) \(v) is out of range: give \(Self.sharesRange.lowerBound) to \(Self.sharesRange.upperBound) (\(Self.defaultShares) is the default; 200 weighs twice as much)")
            }
        }
        for (key, value) in [("cpu_limit_pct", cpuLimitPct), ("cpu_reservation_pct", cpuReservationPct)] {
            if let v = value, !(1...maxCPUPct).contains(v) {
                throw ConfigProblem(key, "out-of-range", "\(key) \(v) is out of range: give 1 to \(maxCPUPct) (percent of one core; the VM's \(vcpus) vCPU\(vcpus == 1 ? "" : "s") cannot use more than \(maxCPUPct)%), or leave it out for none")
            }
        }
        if let r = cpuReservationPct, let l = cpuLimitPct, r > l {
            throw ConfigProblem("cpu_reservation_pct", "limit-below-reservation", "cpu_limit_pct \(l) is below cpu_reservation_pct \(r): the VM could never get what is reserved for it. Raise the limit or lower the reservation")
        }
        for (key, value) in [("memory_reservation_mib", memoryReservationMiB), ("memory_limit_mib", memoryLimitMiB)] {
            if let v = value, !(1...memoryMiB).contains(v) {
                throw ConfigProblem(key, "out-of-range", "\(key) \(v) is out of range: give 1 to memory_mib (\(memoryMiB)), or leave it out for none")
            }
        }
        if let r = memoryReservationMiB, let l = memoryLimitMiB, r > l {
            throw ConfigProblem("memory_reservation_mib", "limit-below-reservation", "memory_limit_mib \(l) is below memory_reservation_mib \(r): the VM would be held below the memory it is promised. Raise the limit or lower the reservation")
        }
    }

    /// Whether any control is set (a VM without any still gets a cgroup, best effort).
    public var hasResourceControls: Bool {
        cpuShares != nil || cpuLimitPct != nil || cpuReservationPct != nil || memoryReservationMiB != nil
            || memoryLimitMiB != nil || memoryShares != nil
    }
}
