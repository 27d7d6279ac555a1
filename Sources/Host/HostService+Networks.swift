import Synchronization
import VireoAPI
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// A network's host side as this daemon runs it.
struct NetworkRuntime: Sendable {
    var plan: NetworkPlan
    var createdAt: String
    var available = false
    var reason: String?
    var dnsmasqPID: pid_t?
    var dnsmasqStarts: [Double] = []
}

/// The dnsmasq processes the daemon runs, for its stop-signal path (which cannot wait for the actor).
enum NetworkHelpers {
    static let pids = Mutex<Set<pid_t>>([])

    /// SIGTERM to every dnsmasq, then reap them (up to a second).
    static func stopAll() {
        let all = pids.withLock { p in let copy = p; p.removeAll(); return copy }
        for pid in all { kill(pid, SIGTERM) }
        for pid in all {
            for _ in 0..<50 where VMMProcess.reap(pid) == nil && kill(pid, 0) == 0 { usleep(20_000) }
        }
    }
}

extension HostService {
    /// The subnets the `default` network may take, the first free one wins.
    static let defaultSubnets = (100..<200).map { "10.0.\($0).0/24" }

    func networkDir(_ name: String) -> String { "\(dataDir)/networks/\(name)" }

    // MARK: Start and stop of the daemon

    /// At daemon start: makes the `default` network if this inventory never had it (and the
    /// daemon wants one), then brings every network's host side up. A network the host cannot
    /// run (no bridge support, no nft or dnsmasq) stays defined and unavailable, with the reason;
    /// the daemon starts regardless. Returns a line per unavailable network.
    func restoreNetworks(createDefault: Bool) -> [String] {
        try? Self.makeDirectory(dataDir + "/networks")
        if createDefault, (try? inventory.setting("default_network")) == "pending" {
            let taken = ((try? inventory.networks()) ?? []).compactMap { $0.spec.subnet.flatMap(IPv4Subnet.init) }
            let routes = HostRoute.current().map(\.subnet)
            if let free = Self.defaultSubnets.compactMap(IPv4Subnet.init).first(where: { s in !(taken + routes).contains { $0.overlaps(s) } }) {
                let spec = NetworkCreate(name: "default", type: .bridge, subnet: free.description, uplink: Self.defaultUplink())
                try? inventory.insertNetwork(spec, createdAt: WallClock.now())
                event("default", kind: .network, "network-created", "the default network: \(free), NAT to \(spec.uplink ?? "no uplink (the host has no default route)")")
            }
            try? inventory.setSetting("default_network", "done")
        }
        var lines: [String] = []
        for (spec, createdAt) in (try? inventory.networks()) ?? [] {
            var rt = NetworkRuntime(plan: NetworkPlan(spec: spec, subnet: spec.subnet.flatMap(IPv4Subnet.init)), createdAt: createdAt)
            let bridgeExisted = NetworkHost.interfaceExists(rt.plan.bridge)
            do throws(NetworkHostError) {
                try bringUp(&rt)
            } catch {
                // Keep what VMs that lived through the restart still use; remove what this attempt made.
                if !bridgeExisted { _ = NetworkHost.remove(rt.plan, keepBridge: false) }
                rt.available = false
                rt.reason = error.message
                lines.append("network \(spec.name) is unavailable: \(error.message)")
                event(spec.name, kind: .network, "network-unavailable", error.message)
            }
            networks[spec.name] = rt
        }
        return lines
    }

    /// The interface of the host's default route (where the default network's NAT goes).
    static func defaultUplink() -> String? {
        guard let text = ProcFS.read("/proc/net/route") else { return nil }
        return HostRoute.parse(text).first { $0.subnet.prefix == 0 && !NetworkPlan.isVireoInterface($0.interface) }?.interface
    }

    /// Realizes the host side and starts dnsmasq; marks the network available.
    private func bringUp(_ rt: inout NetworkRuntime) throws(NetworkHostError) {
        let dir = networkDir(rt.plan.name)
        do { try Self.makeDirectory(dir) } catch { throw NetworkHostError(message: "cannot create \(dir): \(error)") }
        try NetworkHost.realize(rt.plan, ruleFile: dir + "/nat.nft")
        if rt.plan.subnet != nil {
            stopStaleDnsmasq(rt.plan.name)
            rt.dnsmasqPID = try startDnsmasq(rt.plan)
            rt.dnsmasqStarts = [WallClock.monotonicSeconds()]
        }
        rt.available = true
        rt.reason = nil
    }

    /// Starts dnsmasq for `plan` (its output in the network's dnsmasq.log); waits a moment to
    /// catch one that fails at once (a busy port, a bad interface) and reports its last words.
    private func startDnsmasq(_ plan: NetworkPlan) throws(NetworkHostError) -> pid_t? {
        let dir = networkDir(plan.name)
        let id = NetworkHost.dnsmasqIdentity()
        guard let argv = plan.dnsmasqArguments(binary: try NetworkHost.tool("dnsmasq"), leaseFile: dir + "/leases", user: id.user, group: id.group) else { return nil }
        let log = dir + "/dnsmasq.log"
        let pid: pid_t
        do { pid = try VMMProcess.spawn(argv, logPath: log) } catch {
            throw NetworkHostError(message: "cannot start dnsmasq for network \(plan.name): \(error)")
        }
        for _ in 0..<15 {
            usleep(20_000)
            if let status = VMMProcess.reap(pid) {
                let said = ProcFS.read(log).map { $0.split(separator: "\n").suffix(2).joined(separator: "; ") } ?? ""
                throw NetworkHostError(message: "dnsmasq for network \(plan.name) exited at once (status \(status)): \(said.suffix(400)); its log is \(log)")
            }
        }
        NetworkHelpers.pids.withLock { _ = $0.insert(pid) }
        try? NetworkHost.writeFile(dir + "/dnsmasq.pid", "\(pid)\n")
        return pid
    }

    /// A dnsmasq of this network left running by a daemon that was killed: ended, so the new
    /// one can bind the network's ports.
    private func stopStaleDnsmasq(_ name: String) {
        let pidFile = networkDir(name) + "/dnsmasq.pid"
        guard let text = ProcFS.read(pidFile), let pid = pid_t(text.split(separator: "\n").first ?? ""), pid > 1,
              let cmd = ProcFS.read("/proc/\(pid)/cmdline"), cmd.contains("dnsmasq"), cmd.contains(networkDir(name) + "/leases") else { return }
        Glibc.kill(pid, SIGTERM)
        for _ in 0..<50 where Glibc.kill(pid, 0) == 0 { usleep(20_000) }
        unlink(pidFile)
    }

    private func stopDnsmasq(_ rt: inout NetworkRuntime) {
        guard let pid = rt.dnsmasqPID else { return }
        NetworkHelpers.pids.withLock { _ = $0.remove(pid) }
        Glibc.kill(pid, SIGTERM)
        for _ in 0..<100 where VMMProcess.reap(pid) == nil { usleep(10_000) }
        if Glibc.kill(pid, 0) == 0 { Glibc.kill(pid, SIGKILL); _ = VMMProcess.reap(pid) }
        rt.dnsmasqPID = nil
        unlink(networkDir(rt.plan.name) + "/dnsmasq.pid")
    }

    /// One supervision pass: a dnsmasq that ended is started again, unless it failed five
    /// times within a minute (then the network is unavailable, with its last words).
    func superviseNetworks() {
        for (name, var rt) in networks {
            guard let pid = rt.dnsmasqPID, let status = VMMProcess.reap(pid) else { continue }
            NetworkHelpers.pids.withLock { _ = $0.remove(pid) }
            rt.dnsmasqPID = nil
            let now = WallClock.monotonicSeconds()
            rt.dnsmasqStarts = rt.dnsmasqStarts.filter { now - $0 < 60 }
            if rt.dnsmasqStarts.count >= 5 {
                rt.available = false
                rt.reason = "dnsmasq (DHCP and DNS) exited \(rt.dnsmasqStarts.count) times within a minute, last with status \(status); see \(networkDir(name))/dnsmasq.log, then restart the daemon"
                event(name, kind: .network, "network-unavailable", rt.reason ?? "")
            } else {
                do throws(NetworkHostError) {
                    rt.dnsmasqPID = try startDnsmasq(rt.plan)
                    rt.dnsmasqStarts.append(now)
                    event(name, kind: .network, "dnsmasq-restarted", "dnsmasq exited with status \(status); started again, pid \(rt.dnsmasqPID ?? 0)")
                } catch {
                    rt.available = false
                    rt.reason = error.message
                    event(name, kind: .network, "network-unavailable", error.message)
                }
            }
            networks[name] = rt
        }
    }

    // MARK: API

    func view(_ rt: NetworkRuntime) -> Network {
        let s = rt.plan.spec
        let users = ((try? inventory.all()) ?? []).filter { $0.definition.nics.contains { $0.network == s.name } }.map(\.name)
        return Network(name: s.name, type: s.type, vlan: s.vlan, subnet: s.subnet, uplink: s.uplink, bridge: rt.plan.bridge,
                       gateway: rt.plan.gateway, dhcpRange: rt.plan.dhcpRange, available: rt.available, reason: rt.reason,
                       vms: users, createdAt: rt.createdAt)
    }

    func listNetworks() -> [Network] {
        networks.values.sorted { $0.plan.name < $1.plan.name }.map(view)
    }

    func showNetwork(_ name: String) throws -> Network {
        guard let rt = networks[name] else { throw Self.noNetwork(name) }
        return view(rt)
    }

    static func noNetwork(_ name: String) -> HTTPError {
        HTTPError(404, "not-found", "no network named '\(name.prefix(80))'; `vireo network list` shows the networks")
    }

    private func otherVLANNetworks(than name: String) -> Bool {
        ((try? inventory.networks()) ?? []).contains { $0.spec.type == .vlan && $0.spec.name != name }
    }

    /// Checks a new network against the others and the host; throws the client's error before
    /// anything is made on the host. Returns its plan.
    func checkNewNetwork(_ c: NetworkCreate) throws -> NetworkPlan {
        guard VMLimits.isValidNetworkName(c.name) else {
            throw HTTPError(400, "invalid-name", "'\(c.name.prefix(80))' is not a valid network name: \(VMLimits.networkNameRule)")
        }
        let existing = (try inventory.networks()).map(\.spec)
        if existing.contains(where: { $0.name == c.name }) {
            throw HTTPError.conflict("a network named '\(c.name)' already exists; pick another name or delete it first (`vireo network delete \(c.name)`)")
        }
        switch c.type {
        case .bridge:
            if c.vlan != nil { throw HTTPError.invalid("invalid-vlan", "vlan applies to vlan networks; a bridge network has its own bridge (use --type vlan)") }
        case .vlan:
            guard let vid = c.vlan else { throw HTTPError.invalid("invalid-vlan", "a vlan network needs its VLAN ID (--vlan 1-4094)") }
            guard (1...4094).contains(vid) else { throw HTTPError.invalid("invalid-vlan", "VLAN \(vid) is out of range: VLAN IDs are 1 to 4094") }
            if let other = existing.first(where: { $0.type == .vlan && $0.vlan == vid }) {
                throw HTTPError.conflict("VLAN \(vid) belongs to network '\(other.name)' already; NICs that should share it join that network")
            }
        }
        var subnet: IPv4Subnet?
        if let text = c.subnet {
            let s = try IPv4Subnet.check(text).get()
            for o in existing {
                if let os = o.subnet.flatMap(IPv4Subnet.init), os.overlaps(s) {
                    throw HTTPError.invalid("subnet-overlap", "subnet \(s) overlaps the subnet of network '\(o.name)' (\(os)); pick another subnet")
                }
            }
            if let r = HostRoute.current().first(where: { $0.subnet.overlaps(s) }) {
                throw HTTPError.invalid("subnet-overlap", "subnet \(s) overlaps the host's route to \(r.subnet) on \(r.interface); pick another subnet")
            }
            subnet = s
        }
        if let up = c.uplink {
            guard subnet != nil else {
                throw HTTPError.invalid("uplink-needs-subnet", "--uplink is where the network's traffic leaves the host, masqueraded (NAT): give the network a --subnet too")
            }
            guard NetworkHost.interfaceExists(up) else {
                throw HTTPError.invalid("no-such-uplink", "uplink '\(up.prefix(40))' is not an interface of this host; `ip link` lists them")
            }
            guard !NetworkPlan.isVireoInterface(up) else {
                throw HTTPError.invalid("no-such-uplink", "uplink \(up) is one of Vireo's own interfaces; name the host's interface to the outside (its default route's)")
            }
        }
        let plan = NetworkPlan(spec: c, subnet: subnet)
        if c.type == .bridge, NetworkHost.interfaceExists(plan.bridge), access("/sys/class/net/\(plan.bridge)/bridge", F_OK) != 0 {
            throw HTTPError.conflict("the host has an interface named \(plan.bridge) that is not a bridge; remove it (ip link del \(plan.bridge)) or pick another network name")
        }
        return plan
    }

    func createNetwork(_ c: NetworkCreate) throws -> Network {
        let plan = try checkNewNetwork(c)
        try? Self.makeDirectory(dataDir + "/networks")
        var rt = NetworkRuntime(plan: plan, createdAt: WallClock.now())
        // What was there before stays if this fails: a bridge of that name, or the VLAN bridge other networks share.
        let keepBridge = NetworkHost.interfaceExists(plan.bridge) || (c.type == .vlan && otherVLANNetworks(than: c.name))
        do throws(NetworkHostError) {
            try bringUp(&rt)
        } catch {
            stopDnsmasq(&rt)
            let left = NetworkHost.remove(plan, keepBridge: keepBridge)
            Self.removeTree(networkDir(c.name))
            throw HTTPError(500, "network-setup-failed", "network \(c.name) could not be set up on this host, and nothing of it was kept: \(error.message)"
                            + (left.isEmpty ? "" : " (could not remove: \(left.joined(separator: ", ")))"))
        }
        do { try inventory.insertNetwork(c, createdAt: rt.createdAt) } catch {
            stopDnsmasq(&rt)
            _ = NetworkHost.remove(plan, keepBridge: keepBridge)
            throw error
        }
        networks[c.name] = rt
        event(c.name, kind: .network, "network-created", "\(c.type.rawValue)" + (c.vlan.map { " VLAN \($0)" } ?? "") + " on \(plan.bridge)"
              + (c.subnet.map { ", \($0)" } ?? "") + (c.uplink.map { ", NAT to \($0)" } ?? ""))
        return view(rt)
    }

    func deleteNetwork(_ name: String) throws {
        guard var rt = networks[name] else { throw Self.noNetwork(name) }
        let users = ((try? inventory.all()) ?? []).filter { $0.definition.nics.contains { $0.network == name } }.map(\.name)
        guard users.isEmpty else {
            throw HTTPError.conflict("network '\(name)' is used by the NICs of \(users.count == 1 ? "VM" : "VMs") \(users.joined(separator: ", ")); delete \(users.count == 1 ? "that VM" : "those VMs") first (`vireo vm delete NAME`)")
        }
        stopDnsmasq(&rt)
        let left = NetworkHost.remove(rt.plan, keepBridge: rt.plan.spec.type == .vlan && otherVLANNetworks(than: name))
        try inventory.deleteNetwork(name)
        networks[name] = nil
        Self.removeTree(networkDir(name))
        event(name, kind: .network, "network-deleted", left.isEmpty ? "" : "could not remove \(left.joined(separator: ", "))")
        if !left.isEmpty {
            throw HTTPError(500, "network-teardown-incomplete", "network \(name) is deleted, but the host kept \(left.joined(separator: ", ")); remove \(left.count == 1 ? "it" : "them") by hand")
        }
    }

    // MARK: NICs

    /// At VM create: every NIC naming a network gets checked (the network exists, the request
    /// left the TAP to the daemon) and gets a TAP name no other NIC on this host has.
    func assignNetworkTaps(_ config: inout VMConfig) throws {
        guard config.nics.contains(where: { $0.network != nil }) else { return }
        var taken = Set(((try? inventory.all()) ?? []).flatMap { $0.definition.nics.map(\.tap) })
        taken.formUnion(config.nics.filter { $0.network == nil }.map(\.tap))
        for i in config.nics.indices {
            guard let net = config.nics[i].network else { continue }
            guard networks[net] != nil else {
                throw HTTPError.invalid("no-such-network", "nics[\(i)].network: no network named '\(net.prefix(80))'; `vireo network list` shows them, `vireo network create` makes one")
            }
            guard config.nics[i].tap.isEmpty else {
                throw HTTPError.invalid("invalid-nic", "nics[\(i)] names both network \(net) and tap \(config.nics[i].tap.prefix(20)): the daemon makes a network NIC's TAP; give one of them")
            }
            var salt = 0
            var tap = NetworkPlan.tapName(vm: config.name, index: i, salt: salt)
            while taken.contains(tap) || NetworkHost.interfaceExists(tap) && salt < 1000 {
                salt += 1
                tap = NetworkPlan.tapName(vm: config.name, index: i, salt: salt)
            }
            config.nics[i].tap = tap
            taken.insert(tap)
        }
    }

    /// At VM start: makes the TAP of every network NIC and attaches it. On failure the TAPs
    /// made so far are removed and the reason thrown (the VMM is not started).
    func attachNetworkTaps(_ config: VMConfig) throws {
        var made: [String] = []
        for nic in config.nics {
            guard let net = nic.network else { continue }
            guard let rt = networks[net] else {
                made.forEach(NetworkHost.removeTap)
                throw HTTPError.invalid("no-such-network", "VM '\(config.name)': its NIC \(nic.id ?? nic.tap) is on network '\(net)', which no longer exists; `vireo network create \(net) ...` makes it again")
            }
            guard rt.available else {
                made.forEach(NetworkHost.removeTap)
                throw HTTPError.invalid("network-unavailable", "VM '\(config.name)': network \(net) is unavailable on this host: \(rt.reason ?? "unknown")")
            }
            do throws(NetworkHostError) { try NetworkHost.addTap(nic.tap, plan: rt.plan) } catch {
                made.forEach(NetworkHost.removeTap)
                throw HTTPError(500, "network-attach-failed", "VM '\(config.name)': \(error.message)")
            }
            made.append(nic.tap)
        }
    }

    /// After a VMM ends: the TAPs the daemon made for its network NICs go.
    func detachNetworkTaps(_ config: VMConfig) {
        for nic in config.nics where nic.network != nil { NetworkHost.removeTap(nic.tap) }
    }
}
