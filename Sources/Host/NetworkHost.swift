import VireoAPI
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// A host step of a network that failed: the command, what it said, and what to do.
struct NetworkHostError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

/// Makes, checks and removes a network's host side with the host's own tools: iproute2's `ip`
/// and `bridge`, `nft`, and `dnsmasq` (Debian packages iproute2, nftables, dnsmasq-base;
/// scripts/setup.sh installs them). Every step is idempotent, so a daemon that starts again
/// re-creates what is missing and keeps what exists (TAPs of VMs that ran on stay attached).
enum NetworkHost {
    /// Where host tools are looked for: $PATH, then the sbin directories a non-root PATH lacks.
    static func find(_ tool: String) -> String? {
        let path = (getenv("PATH").map { String(cString: $0) } ?? "").split(separator: ":").map(String.init)
        for dir in path + ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"] where !dir.isEmpty {
            let p = dir + "/" + tool
            if access(p, X_OK) == 0 { return p }
        }
        return nil
    }

    static let packages = ["ip": "iproute2", "bridge": "iproute2", "nft": "nftables", "dnsmasq": "dnsmasq-base"]

    static func tool(_ name: String) throws(NetworkHostError) -> String {
        guard let p = find(name) else {
            throw NetworkHostError(message: "`\(name)` is not installed on this host: install Debian's \(packages[name] ?? name) package (scripts/setup.sh does)")
        }
        return p
    }

    /// Runs a host tool; returns its status and what it wrote (stdout, then stderr).
    static func run(_ argv: [String]) throws(NetworkHostError) -> (status: Int32, output: String) {
        guard let first = argv.first else { return (0, "") }
        let path = try tool(first)
        let child: ChildProcess
        do { child = try ChildProcess([path] + argv.dropFirst()) } catch {
            throw NetworkHostError(message: "cannot run \(path): \(error)")
        }
        var out: [UInt8] = []
        for fd in [child.stdout, child.stderr] {
            var buf = [UInt8](repeating: 0, count: 4096)
            while out.count < 1 << 20 {
                let n = buf.withUnsafeMutableBytes { read(fd.rawValue, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                out += buf[0..<n]
            }
        }
        let status = child.wait()
        let text = String(decoding: out, as: UTF8.self).split(separator: "\n").joined(separator: "; ")
        return (status, text)
    }

    /// Runs a host tool that must succeed.
    static func must(_ argv: [String], _ what: String) throws(NetworkHostError) {
        let r = try run(argv)
        guard r.status == 0 else {
            throw NetworkHostError(message: "cannot \(what): `\(argv.joined(separator: " "))` exited \(r.status): \(r.output.prefix(400))")
        }
    }

    static func interfaceExists(_ name: String) -> Bool {
        !name.isEmpty && !name.contains("/") && name != "." && name != ".." && access("/sys/class/net/\(name)", F_OK) == 0
    }

    static func nftTableExists(_ table: String) -> Bool {
        (try? run(["nft", "list", "table", "ip", table]).status) == 0
    }

    // MARK: A network's host side

    /// Makes what `plan` needs on the host but dnsmasq (the caller supervises that): the bridge
    /// (VLAN filtering for vlan networks), the VLAN interface of a vlan network with a subnet,
    /// the host's address, and the nft table for NAT. Idempotent.
    static func realize(_ plan: NetworkPlan, ruleFile: String) throws(NetworkHostError) {
        let br = plan.bridge
        if !interfaceExists(br) {
            if plan.spec.type == .vlan {
                // No default PVID: a port belongs to no VLAN until the daemon gives it one.
                try must(["ip", "link", "add", br, "type", "bridge", "vlan_filtering", "1", "vlan_default_pvid", "0"],
                         "create the VLAN-filtering bridge \(br) (vlan networks need a kernel with bridge VLAN filtering, CONFIG_BRIDGE_VLAN_FILTERING, and the bridge module: modprobe bridge)")
            } else {
                try must(["ip", "link", "add", br, "type", "bridge"], "create the bridge \(br) (does this kernel have bridge support? modprobe bridge)")
            }
        }
        try must(["ip", "link", "set", br, "up"], "bring up \(br)")
        guard let subnet = plan.subnet, let gateway = plan.gateway else { return }
        let l3 = plan.l3Interface
        if plan.spec.type == .vlan, let vid = plan.spec.vlan {
            try must(["bridge", "vlan", "add", "dev", br, "vid", String(vid), "self"], "let the bridge \(br) itself join VLAN \(vid)")
            if !interfaceExists(l3) {
                try must(["ip", "link", "add", "link", br, "name", l3, "type", "vlan", "id", String(vid)],
                         "create the VLAN interface \(l3) (does this kernel have 802.1Q support? modprobe 8021q)")
            }
            try must(["ip", "link", "set", l3, "up"], "bring up \(l3)")
        }
        try must(["ip", "addr", "replace", "\(gateway)/\(subnet.prefix)", "dev", l3], "give \(l3) the address \(gateway)/\(subnet.prefix)")
        if let rules = plan.nftRuleset() {
            // One transaction: the table (made if missing), emptied, then filled: never half a table.
            let text = "table ip \(plan.nftTable)\ndelete table ip \(plan.nftTable)\n" + rules
            try writeFile(ruleFile, text)
            try must(["nft", "-f", ruleFile], "load the NAT rules of network \(plan.name) (is nf_tables in this kernel? modprobe nf_tables)")
            // Routing between the network and the uplink (libvirt's NAT networks turn it on too).
            if ProcFS.read("/proc/sys/net/ipv4/ip_forward")?.hasPrefix("1") != true {
                let fd = open("/proc/sys/net/ipv4/ip_forward", O_WRONLY | O_CLOEXEC)
                let ok = fd >= 0 && write(fd, "1", 1) == 1
                if fd >= 0 { close(fd) }
                guard ok else { throw NetworkHostError(message: "cannot turn on IPv4 forwarding (/proc/sys/net/ipv4/ip_forward) for network \(plan.name)'s NAT") }
            }
        }
    }

    /// Removes what `realize` made for `plan`, but the bridge when `keepBridge` (it was there
    /// before, or other vlan networks share it). Best effort and idempotent: whatever is already
    /// gone is fine. Returns what could not be removed.
    static func remove(_ plan: NetworkPlan, keepBridge: Bool) -> [String] {
        var left: [String] = []
        if nftTableExists(plan.nftTable), (try? run(["nft", "delete", "table", "ip", plan.nftTable]).status) != 0 {
            left.append("nft table ip \(plan.nftTable)")
        }
        var links: [String] = []
        if plan.spec.type == .vlan {
            if plan.subnet != nil { links.append(plan.l3Interface) }
            if let vid = plan.spec.vlan, keepBridge, interfaceExists(plan.bridge) {
                _ = try? run(["bridge", "vlan", "del", "dev", plan.bridge, "vid", String(vid), "self"])
            }
        } else if plan.subnet != nil && keepBridge, let gw = plan.gateway, let s = plan.subnet {
            _ = try? run(["ip", "addr", "del", "\(gw)/\(s.prefix)", "dev", plan.bridge])
        }
        if !keepBridge { links.append(plan.bridge) }
        for l in links where interfaceExists(l) {
            if (try? run(["ip", "link", "del", l]).status) != 0 { left.append("interface \(l)") }
        }
        return left
    }

    // MARK: TAPs

    /// Makes a NIC's TAP (multi-queue, vnet header: what the VMM opens), puts it in the
    /// network's bridge (on the network's VLAN, untagged, for a vlan network) and brings it up.
    /// A TAP of that name left from before is replaced. On failure nothing is left.
    static func addTap(_ tap: String, plan: NetworkPlan) throws(NetworkHostError) {
        if interfaceExists(tap) { _ = try? run(["ip", "link", "del", tap]) }
        try must(["ip", "tuntap", "add", "dev", tap, "mode", "tap", "multi_queue", "vnet_hdr"], "create the TAP \(tap) (is /dev/net/tun there? modprobe tun)")
        do {
            try must(["ip", "link", "set", tap, "master", plan.bridge], "put the TAP \(tap) in the bridge \(plan.bridge)")
            if plan.spec.type == .vlan, let vid = plan.spec.vlan {
                _ = try? run(["bridge", "vlan", "del", "dev", tap, "vid", "1"])
                try must(["bridge", "vlan", "add", "dev", tap, "vid", String(vid), "pvid", "untagged"], "put the TAP \(tap) on VLAN \(vid)")
            }
            try must(["ip", "link", "set", tap, "up"], "bring up the TAP \(tap)")
        } catch {
            _ = try? run(["ip", "link", "del", tap])
            throw error
        }
    }

    static func removeTap(_ tap: String) {
        guard interfaceExists(tap) else { return }
        _ = try? run(["ip", "link", "del", tap])
    }

    /// The user and group dnsmasq drops to: `dnsmasq` or `nobody` if the host has them, else root.
    static func dnsmasqIdentity() -> (user: String, group: String) {
        for name in ["dnsmasq", "nobody"] {
            if let pw = getpwnam(name) {
                let group = getgrgid(pw.pointee.pw_gid).map { String(cString: $0.pointee.gr_name) } ?? "root"
                return (name, group)
            }
        }
        return ("root", "root")
    }

    static func writeFile(_ path: String, _ text: String) throws(NetworkHostError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw NetworkHostError(message: "cannot create \(path): \(VireoError.strerror(errno))") }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        var off = 0
        while off < bytes.count {
            // SAFETY: write reads at most the remaining bytes of `bytes`' own storage.
            let n = bytes[off...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw NetworkHostError(message: "cannot write \(path): \(VireoError.strerror(errno))") }
            off += n
        }
    }
}
