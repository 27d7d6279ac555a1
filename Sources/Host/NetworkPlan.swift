import VireoAPI
#if canImport(Glibc)
import Glibc
#endif

/// An IPv4 subnet in CIDR form. Pure: parsing, overlap, the addresses a network hands out.
struct IPv4Subnet: Equatable, Sendable, CustomStringConvertible {
    let network: UInt32
    let prefix: Int

    /// The prefixes a network may have: /16 (65534 hosts) to /29 (6).
    static let prefixes = 16...29

    init(network: UInt32, prefix: Int) {
        self.prefix = prefix
        self.network = network & Self.mask(prefix)
    }

    /// "10.0.100.0/24". Nil for anything else (host bits set are refused by `check`).
    init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let a = Self.parseAddress(String(parts[0])), let p = Int(parts[1]), (0...32).contains(p) else { return nil }
        network = a
        prefix = p
    }

    /// `text` as a network's subnet, or the reason it cannot be one.
    static func check(_ text: String) -> Result<IPv4Subnet, HTTPError> {
        guard let s = IPv4Subnet(text) else {
            return .failure(.invalid("invalid-subnet", "subnet '\(text.prefix(40))' is not an IPv4 CIDR like 10.0.50.0/24"))
        }
        guard prefixes.contains(s.prefix) else {
            return .failure(.invalid("invalid-subnet", "subnet \(text) has a /\(s.prefix) prefix; a network's is /16 to /29"))
        }
        let normal = IPv4Subnet(network: s.network, prefix: s.prefix)
        guard normal.network == s.network else {
            return .failure(.invalid("invalid-subnet", "subnet \(text) has host bits set; did you mean \(normal)?"))
        }
        return .success(normal)
    }

    static func mask(_ prefix: Int) -> UInt32 { prefix <= 0 ? 0 : prefix >= 32 ? .max : ~(UInt32.max >> UInt32(prefix)) }
    var mask: UInt32 { Self.mask(prefix) }
    var broadcast: UInt32 { network | ~mask }
    /// The host's address on the network: the first one.
    var gateway: UInt32 { network &+ 1 }
    /// DHCP hands out the second address to the last before the broadcast.
    var dhcpFirst: UInt32 { network &+ 2 }
    var dhcpLast: UInt32 { broadcast &- 1 }

    func overlaps(_ o: IPv4Subnet) -> Bool {
        let m = Self.mask(min(prefix, o.prefix))
        return network & m == o.network & m
    }

    var description: String { "\(Self.format(network))/\(prefix)" }

    static func parseAddress(_ text: String) -> UInt32? {
        let octets = text.split(separator: ".", omittingEmptySubsequences: false)
        guard octets.count == 4 else { return nil }
        var v: UInt32 = 0
        for o in octets {
            guard !o.isEmpty, o.count <= 3, o.allSatisfy(\.isNumber), let n = UInt32(o), n <= 255 else { return nil }
            v = v << 8 | n
        }
        return v
    }

    static func format(_ a: UInt32) -> String { "\(a >> 24).\(a >> 16 & 255).\(a >> 8 & 255).\(a & 255)" }
}

/// The host's IPv4 routes (/proc/net/route), to keep a network's subnet off them.
struct HostRoute: Sendable, Equatable {
    var interface: String
    var subnet: IPv4Subnet

    /// Every route but default routes and those on Vireo's own interfaces.
    static func current() -> [HostRoute] {
        guard let text = ProcFS.read("/proc/net/route") else { return [] }
        return parse(text).filter { $0.subnet.prefix > 0 && !NetworkPlan.isVireoInterface($0.interface) }
    }

    /// /proc/net/route: Iface Destination Gateway Flags RefCnt Use Metric Mask ...; addresses
    /// in hex, in the host's (little-endian) byte order.
    static func parse(_ text: String) -> [HostRoute] {
        text.split(separator: "\n").dropFirst().compactMap { line in
            let f = line.split(whereSeparator: { $0 == "\t" || $0 == " " })
            guard f.count >= 8, let dest = UInt32(f[1], radix: 16), let mask = UInt32(f[7], radix: 16) else { return nil }
            let d = dest.byteSwapped, m = mask.byteSwapped
            return HostRoute(interface: String(f[0]), subnet: IPv4Subnet(network: d, prefix: m.nonzeroBitCount))
        }
    }
}

/// What the host needs for one network: the names of its interfaces and nft table, its
/// addresses, the dnsmasq arguments and the nftables ruleset. Pure, so tests can read it.
struct NetworkPlan: Sendable, Equatable {
    var spec: NetworkCreate
    var subnet: IPv4Subnet?

    /// The bridge every vlan network shares, VLAN filtering on.
    static let vlanBridge = "vireo-vlan"
    static let bridgePrefix = "vb-"
    static let tapPrefix = "vt"

    /// Interfaces Vireo makes (their routes are its own; the overlap check skips them).
    static func isVireoInterface(_ name: String) -> Bool {
        name.hasPrefix(bridgePrefix) || name.hasPrefix(vlanBridge) || name.hasPrefix(tapPrefix) && name.utf8.count == 10
    }

    var name: String { spec.name }
    var bridge: String { spec.type == .vlan ? Self.vlanBridge : Self.bridgePrefix + spec.name }
    /// Where the host's address, dnsmasq and NAT live: the bridge itself, or for a vlan network
    /// the bridge's VLAN interface (`vireo-vlan.ID`).
    var l3Interface: String { spec.type == .vlan ? "\(Self.vlanBridge).\(spec.vlan ?? 0)" : bridge }
    var nftTable: String { "vireo-" + spec.name }
    var gateway: String? { subnet.map { IPv4Subnet.format($0.gateway) } }
    var dhcpRange: String? { subnet.map { "\(IPv4Subnet.format($0.dhcpFirst))-\(IPv4Subnet.format($0.dhcpLast))" } }

    /// NAT to the uplink: masquerade what leaves by it from the subnet; from the uplink into
    /// the network, only replies (the guests are not reachable from outside, as behind a home router).
    func nftRuleset() -> String? {
        guard let subnet, let uplink = spec.uplink else { return nil }
        let s = subnet.description, l3 = l3Interface
        return """
        table ip \(nftTable) {
            chain postrouting {
                type nat hook postrouting priority srcnat; policy accept;
                ip saddr \(s) ip daddr != \(s) oifname "\(uplink)" masquerade
            }
            chain forward {
                type filter hook forward priority filter; policy accept;
                iifname "\(l3)" oifname "\(uplink)" ip saddr \(s) accept
                iifname "\(uplink)" oifname "\(l3)" ct state established,related accept
                iifname "\(uplink)" oifname "\(l3)" drop
            }
        }

        """
    }

    /// dnsmasq for DHCP and DNS on the network's interface only, in the foreground (the daemon
    /// supervises it), with no configuration but this.
    func dnsmasqArguments(binary: String, leaseFile: String, user: String, group: String) -> [String]? {
        guard let subnet, let gateway else { return nil }
        return [binary, "--keep-in-foreground", "--conf-file=/dev/null", "--pid-file", "--bind-interfaces",
                "--interface=\(l3Interface)", "--except-interface=lo", "--listen-address=\(gateway)",
                "--dhcp-range=\(IPv4Subnet.format(subnet.dhcpFirst)),\(IPv4Subnet.format(subnet.dhcpLast)),\(IPv4Subnet.format(subnet.mask)),1h",
                "--dhcp-authoritative", "--dhcp-leasefile=\(leaseFile)", "--log-facility=-", "--user=\(user)", "--group=\(group)",
                "--strict-order", "--domain-needed", "--bogus-priv"]
    }

    /// A NIC's TAP name: `vt` and 8 hex digits of a hash of the VM, the NIC's index and a salt
    /// (raised when the name is taken).
    static func tapName(vm: String, index: Int, salt: Int) -> String {
        var h: UInt32 = 0x811c_9dc5   // FNV-1a
        for b in "\(vm)/\(index)/\(salt)".utf8 { h = (h ^ UInt32(b)) &* 0x0100_0193 }
        let hex = String(h, radix: 16)
        return tapPrefix + String(repeating: "0", count: 8 - hex.count) + hex
    }
}
