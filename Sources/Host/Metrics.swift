import VireoAPI

/// GET /metrics: Prometheus text exposition, in the seeds' vocabulary.
enum Metrics {
    struct VMSample: Sendable {
        var name: String
        var state: VMState
        var vcpus: Int
        var memoryBytes: UInt64
        var pid: Int32?
        var socket: String
    }

    static func render(_ snapshot: (HostInfo, [VMSample])) -> String { render(host: snapshot.0, vms: snapshot.1) }

    static func render(host: HostInfo, vms: [VMSample]) -> String {
        var out = ""
        func family(_ name: String, _ type: String, _ help: String) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
        }
        func fmt(_ d: Double) -> String { d.isFinite ? String(d) : "0" }

        family("vireo_host_pcpus", "gauge", "Online physical CPUs of this host.")
        out += "vireo_host_pcpus \(host.pcpus)\n"
        family("vireo_host_vcpus_provisioned", "gauge", "vCPUs of the VMs that are running or paused.")
        out += "vireo_host_vcpus_provisioned \(host.vcpusProvisioned)\n"
        family("vireo_host_vcpu_overcommit_ratio", "gauge", "Provisioned vCPUs per physical CPU.")
        out += "vireo_host_vcpu_overcommit_ratio \(fmt(host.vcpuOvercommitRatio))\n"
        family("vireo_host_memory_provisioned_bytes", "gauge", "Guest RAM configured for the VMs that are running or paused.")
        out += "vireo_host_memory_provisioned_bytes \(host.memoryProvisionedBytes)\n"
        family("vireo_host_memory_physical_bytes", "gauge", "Physical RAM of this host.")
        out += "vireo_host_memory_physical_bytes \(host.memoryPhysicalBytes)\n"
        if let l = host.memoryLadder {
            family("vireo_host_memory_state", "gauge", "1 for the host's memory state now (high, clear, soft, hard, low; docs/memory.md), 0 for the others.")
            for st in HostMemoryState.allCases { out += "vireo_host_memory_state{state=\"\(st.rawValue)\"} \(st == l.state ? 1 : 0)\n" }
            family("vireo_host_memory_state_changes_total", "counter", "Changes of the host memory state since the daemon started.")
            out += "vireo_host_memory_state_changes_total \(l.stateChanges)\n"
            family("vireo_host_memory_free_bytes", "gauge", "Free memory the states are measured on (MemAvailable, or the daemon's memory cgroup's limit less its working set).")
            out += "vireo_host_memory_free_bytes \(l.freeBytes)\n"
            family("vireo_host_memory_min_free_bytes", "gauge", "The minFree reserve the states' thresholds are fractions of.")
            out += "vireo_host_memory_min_free_bytes \(l.minFreeBytes)\n"
            family("vireo_host_memory_saved_bytes", "gauge", "What each step of the ladder holds back now: step = ksm (pages_sharing), balloon, compressed, swapped.")
            for (step, v) in [("ksm", l.ksmSavedBytes), ("balloon", l.balloonBytes), ("compressed", l.compressedBytes), ("swapped", l.swappedBytes)] {
                out += "vireo_host_memory_saved_bytes{step=\"\(step)\"} \(v)\n"
            }
            if let run = l.ksmRun {
                family("vireo_host_ksm_run", "gauge", "/sys/kernel/mm/ksm/run (1: merging).")
                out += "vireo_host_ksm_run \(run)\n"
            }
        }
        family("vireo_host_vms", "gauge", "VMs in the inventory by state.")
        for s in VMState.allCases {
            out += "vireo_host_vms{state=\"\(s.rawValue)\"} \(vms.filter { $0.state == s }.count)\n"
        }

        family("vireo_vm_up", "gauge", "1 if the VM's VMM process is running (or paused).")
        for v in vms { out += "vireo_vm_up{vm=\"\(v.name)\"} \(v.pid == nil ? 0 : 1)\n" }
        family("vireo_vm_memory_provisioned_bytes", "gauge", "Guest RAM configured for the VM.")
        for v in vms { out += "vireo_vm_memory_provisioned_bytes{vm=\"\(v.name)\"} \(v.memoryBytes)\n" }
        family("vireo_vm_memory_consumed_bytes", "gauge", "Host memory resident for the VM's VMM process (VmRSS: guest pages touched plus the VMM's own).")
        var times: [(VMSample, [ProcFS.ThreadTimes])] = []
        for v in vms {
            guard let pid = v.pid else { continue }
            if let rss = ProcFS.statusBytes(pid: pid, key: "VmRSS") { out += "vireo_vm_memory_consumed_bytes{vm=\"\(v.name)\"} \(rss)\n" }
            times.append((v, ProcFS.vcpuTimes(pid: pid)))
        }
        family("vireo_vm_memory_shared_bytes", "gauge", "Guest pages KSM merged with identical ones (/proc/PID/ksm_merging_pages; only shareable VMs have any).")
        for (v, _) in times {
            if let pid = v.pid, let pages = KSM.mergingPages(pid: pid) { out += "vireo_vm_memory_shared_bytes{vm=\"\(v.name)\"} \(pages &* KSM.pageSize)\n" }
        }
        family("vireo_vm_vcpu_cpu_seconds_total", "counter", "CPU time of each vCPU thread (schedstat run time).")
        for (v, ts) in times { for t in ts { out += "vireo_vm_vcpu_cpu_seconds_total{vm=\"\(v.name)\",vcpu=\"\(t.vcpu)\"} \(fmt(t.cpuSeconds))\n" } }
        family("vireo_vm_vcpu_ready_seconds_total", "counter", "Time each vCPU thread was runnable but waiting for a CPU (CPU ready; schedstat run-queue wait).")
        for (v, ts) in times { for t in ts { out += "vireo_vm_vcpu_ready_seconds_total{vm=\"\(v.name)\",vcpu=\"\(t.vcpu)\"} \(fmt(t.readySeconds))\n" } }
        // One status request per live VM; its reply feeds every family below.
        let statuses: [(VMSample, VMMStatus)] = vms.compactMap { v in
            guard v.pid != nil, let s = VMMStatus.fetch(socket: v.socket, timeoutSeconds: 1) else { return nil }
            return (v, s)
        }
        family("vireo_vm_vcpu_exits_total", "counter", "VM exits handled in user space, per vCPU and kind (from the VMM's control socket).")
        for (v, s) in statuses {
            for c in s.vcpus ?? [] {
                out += "vireo_vm_vcpu_exits_total{vm=\"\(v.name)\",vcpu=\"\(c.index)\",kind=\"pio\"} \(c.pioExits ?? 0)\n"
                out += "vireo_vm_vcpu_exits_total{vm=\"\(v.name)\",vcpu=\"\(c.index)\",kind=\"mmio\"} \(c.mmioExits ?? 0)\n"
            }
        }
        family("vireo_vm_memory_compressed_bytes", "gauge", "Guest memory the VMM holds compressed (VMMs that can compress).")
        for (v, s) in statuses { if let b = s.reclaim.compressed { out += "vireo_vm_memory_compressed_bytes{vm=\"\(v.name)\"} \(b)\n" } }
        family("vireo_vm_memory_swapped_bytes", "gauge", "Guest memory the VMM wrote to its swap file.")
        for (v, s) in statuses { if let b = s.reclaim.swapped { out += "vireo_vm_memory_swapped_bytes{vm=\"\(v.name)\"} \(b)\n" } }
        renderDevices(statuses, into: &out)
        return out
    }
}
