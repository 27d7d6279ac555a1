import VireoAPI

/// The /metrics families that come from each VMM's status reply: active memory, the guest's
/// own memory figures, disk and NIC counters.
extension Metrics {
    static func renderDevices(_ statuses: [(VMSample, VMMStatus)], into out: inout String) {
        func family(_ name: String, _ type: String, _ help: String) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
        }
        family("vireo_vm_memory_active_bytes", "gauge",
               "Active memory estimate: bytes of guest pages written during the last full sampling window (KVM dirty-page logging). The written working set, a lower bound (pages only read are not seen); absent until the first window ends or when the estimate is off.")
        for (v, s) in statuses { if let a = s.memory?.activeBytes { out += "vireo_vm_memory_active_bytes{vm=\"\(label(v.name))\"} \(a)\n" } }
        family("vireo_vm_memory_active_window_seconds", "gauge", "Length of the active-memory sampling window (0: the estimate is off).")
        for (v, s) in statuses { if let w = s.memory?.activeWindowSeconds { out += "vireo_vm_memory_active_window_seconds{vm=\"\(label(v.name))\"} \(w)\n" } }
        family("vireo_vm_memory_balloon_bytes", "gauge", "Guest memory given back to the host through the balloon.")
        for (v, s) in statuses { if let b = s.memory?.balloonBytes { out += "vireo_vm_memory_balloon_bytes{vm=\"\(label(v.name))\"} \(b)\n" } }
        family("vireo_vm_memory_guest_bytes", "gauge",
               "The guest's own memory figures from the balloon's statistics queue (kind: total, free, available, disk_caches); only with a statistics balloon.")
        for (v, s) in statuses {
            for (key, value) in (s.memory?.guest ?? [:]).sorted(by: { $0.key < $1.key }) where key.hasSuffix("_bytes") {
                out += "vireo_vm_memory_guest_bytes{vm=\"\(label(v.name))\",kind=\"\(label(String(key.dropLast(6))))\"} \(value)\n"
            }
        }

        let disks = statuses.flatMap { v, s in s.diskStats.map { (v.name, $0) } }
        family("vireo_vm_disk_read_bytes_total", "counter", "Bytes the guest read from the virtio-blk disk (successful requests).")
        for (vm, d) in disks { out += "vireo_vm_disk_read_bytes_total{vm=\"\(label(vm))\",disk=\"\(label(d.name))\"} \(d.readBytes)\n" }
        family("vireo_vm_disk_write_bytes_total", "counter", "Bytes the guest wrote to the virtio-blk disk (successful requests).")
        for (vm, d) in disks { out += "vireo_vm_disk_write_bytes_total{vm=\"\(label(vm))\",disk=\"\(label(d.name))\"} \(d.writeBytes)\n" }
        family("vireo_vm_disk_requests_total", "counter", "virtio-blk requests completed, by operation (read, write, flush, other: discard, write-zeroes, get-id).")
        for (vm, d) in disks {
            for (op, n) in [("read", d.readRequests), ("write", d.writeRequests), ("flush", d.flushRequests), ("other", d.otherRequests)] {
                out += "vireo_vm_disk_requests_total{vm=\"\(label(vm))\",disk=\"\(label(d.name))\",op=\"\(op)\"} \(n)\n"
            }
        }
        family("vireo_vm_disk_errors_total", "counter", "virtio-blk requests answered with an error status (I/O error, out of range, unsupported).")
        for (vm, d) in disks { out += "vireo_vm_disk_errors_total{vm=\"\(label(vm))\",disk=\"\(label(d.name))\"} \(d.errors)\n" }

        let nics = statuses.flatMap { v, s in s.nicStats.map { (v.name, $0) } }
        family("vireo_vm_net_rx_bytes_total", "counter", "Ethernet bytes the VMM delivered to the guest (host to guest), without virtio headers.")
        for (vm, n) in nics { out += "vireo_vm_net_rx_bytes_total{vm=\"\(label(vm))\",nic=\"\(label(n.name))\"} \(n.rxBytes)\n" }
        family("vireo_vm_net_tx_bytes_total", "counter", "Ethernet bytes the guest sent (guest to host), without virtio headers.")
        for (vm, n) in nics { out += "vireo_vm_net_tx_bytes_total{vm=\"\(label(vm))\",nic=\"\(label(n.name))\"} \(n.txBytes)\n" }
        family("vireo_vm_net_rx_frames_total", "counter", "Frames the VMM delivered to the guest.")
        for (vm, n) in nics { out += "vireo_vm_net_rx_frames_total{vm=\"\(label(vm))\",nic=\"\(label(n.name))\"} \(n.rxFrames)\n" }
        family("vireo_vm_net_tx_frames_total", "counter", "Frames the guest sent that the VMM handed to the TAP.")
        for (vm, n) in nics { out += "vireo_vm_net_tx_frames_total{vm=\"\(label(vm))\",nic=\"\(label(n.name))\"} \(n.txFrames)\n" }
        family("vireo_vm_net_drops_total", "counter", "Frames the VMM dropped, by direction: rx runts or frames too large for the guest's buffers; tx runts, frames over 64 KiB, or a full TAP.")
        for (vm, n) in nics {
            out += "vireo_vm_net_drops_total{vm=\"\(label(vm))\",nic=\"\(label(n.name))\",direction=\"rx\"} \(n.rxDrops)\n"
            out += "vireo_vm_net_drops_total{vm=\"\(label(vm))\",nic=\"\(label(n.name))\",direction=\"tx\"} \(n.txDrops)\n"
        }
    }

    /// A Prometheus label value: backslash, double quote and newline escaped.
    static func label(_ s: String) -> String {
        var out = ""
        for c in s {
            switch c {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(c)
            }
        }
        return out
    }
}
