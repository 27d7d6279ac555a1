import VireoAPI
import VireoSupport

/// GET /v1/vms/{name}/stats: the actor only checks the VM and says where its VMM is; reading
/// /proc and asking the VMM happen outside it (a slow VMM never holds up other requests).
extension HostService {
    struct StatsTarget: Sendable {
        var name: String
        var state: VMState
        var pid: Int32
        var socket: String
        var memoryBytes: UInt64
    }

    func configureActiveMemory(window: UInt32?, sample: UInt32?) { activeMemoryWindow = window; activeMemorySample = sample }

    /// The memory overcommit ratio (`vireo host --memory-overcommit`; nil: the default).
    func configureAdmission(memoryOvercommit: Double?) { admission = MemoryAdmission.forThisHost(ratio: memoryOvercommit) }

    /// Whether this host's KVM is the PVM backend, and whether kernel VMs may start on it anyway.
    func configureKernelPolicy(kvmIsPVM: Bool, allowEmulatedKernels: Bool) {
        self.kvmIsPVM = kvmIsPVM
        self.allowEmulatedKernels = allowEmulatedKernels
    }

    /// 404 for an unknown VM, 409 for one without a VMM (stopped, failed).
    func statsTarget(_ name: String) throws -> StatsTarget {
        let vm = try show(name)
        guard vm.state.hasProcess, let pid = vm.pid else {
            throw HTTPError.conflict("VM '\(name)' is \(vm.state.rawValue); stats exist only while its VMM runs (`vireo vm start \(name)`)")
        }
        return StatsTarget(name: name, state: vm.state, pid: Int32(pid), socket: vm.apiSocket, memoryBytes: UInt64(vm.memoryMiB) << 20)
    }
}

enum VMStatsCollector {
    /// Reads /proc for consumed memory and per-vCPU times and asks the VMM for the rest.
    static func collect(_ t: HostService.StatsTarget) throws -> VMStats {
        guard let status = VMMStatus.fetch(socket: t.socket, timeoutSeconds: 2) else {
            throw HTTPError(500, "vmm-unresponsive", "VM '\(t.name)': its VMM did not answer a status request on \(t.socket) within 2 s")
        }
        let exits = Dictionary((status.vcpus ?? []).map { ($0.index, $0) }, uniquingKeysWith: { a, _ in a })
        let vcpus = ProcFS.vcpuTimes(pid: t.pid).map {
            VCPUStat(index: $0.vcpu, cpuSeconds: $0.cpuSeconds, readySeconds: $0.readySeconds,
                     pioExits: exits[$0.vcpu]?.pioExits, mmioExits: exits[$0.vcpu]?.mmioExits)
        }
        let m = status.memory
        let memory = VMMemoryStats(
            provisionedBytes: m?.provisionedBytes ?? t.memoryBytes, consumedBytes: ProcFS.statusBytes(pid: t.pid, key: "VmRSS"),
            activeBytes: m?.activeBytes, activeWindowSeconds: m?.activeWindowSeconds, activeSampleOneIn: m?.activeSampleOneIn,
            activeStatus: m?.activeStatus ?? "unknown: this VMM does not report an estimate (an older version)",
            guestReported: status.guestReport, balloonBytes: m?.balloonBytes)
        var mem = memory
        mem.sharedBytes = KSM.mergingPages(pid: t.pid).map { $0 &* KSM.pageSize }
        let r = status.reclaim
        mem.compressedBytes = r.compressed; mem.swappedBytes = r.swapped; mem.faultinMicrosP50 = r.p50; mem.faultinMicrosP99 = r.p99
        let state: VMState = status.state == "paused" ? .paused : t.state
        return VMStats(name: t.name, state: state, memory: mem, vcpus: vcpus, disks: status.diskStats, nics: status.nicStats)
    }
}
