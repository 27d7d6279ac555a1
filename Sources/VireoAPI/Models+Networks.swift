// Daemon networks (GET/POST /v1/networks, GET/DELETE /v1/networks/{name}): docs/networks.md.

public enum NetworkType: String, Codable, Sendable, CaseIterable {
    /// Its own Linux bridge (`vb-NAME`).
    case bridge
    /// One VLAN (`vlan`) on the host's shared VLAN-filtering bridge (`vireo-vlan`): NICs on
    /// different VLANs share the bridge but cannot reach each other.
    case vlan
}

/// POST /v1/networks.
public struct NetworkCreate: Codable, Sendable, Equatable {
    public var name: String
    public var type: NetworkType
    /// The VLAN ID (1-4094) of a `vlan` network.
    public var vlan: Int?
    /// An IPv4 subnet (CIDR, /16 to /29) the host routes for the network: the host takes its
    /// first address on the network's interface and serves DHCP and DNS (dnsmasq) on it.
    public var subnet: String?
    /// The host interface the network's traffic leaves by, masqueraded (NAT, nftables).
    /// Needs `subnet`.
    public var uplink: String?

    public init(name: String, type: NetworkType, vlan: Int? = nil, subnet: String? = nil, uplink: String? = nil) {
        self.name = name; self.type = type; self.vlan = vlan; self.subnet = subnet; self.uplink = uplink
    }

    enum CodingKeys: String, CodingKey, CaseIterable { case name, type, vlan, subnet, uplink }
    public static let fields = Set(CodingKeys.allCases.map(\.rawValue))
}

/// A network as the daemon keeps and shows it.
public struct Network: Codable, Sendable, Equatable {
    public var name: String
    public var type: NetworkType
    public var vlan: Int?
    public var subnet: String?
    public var uplink: String?
    /// The bridge NICs' TAPs join (`vb-NAME`, or `vireo-vlan` for every vlan network).
    public var bridge: String
    /// The host's address on the network (the subnet's first address), its gateway and DNS server.
    public var gateway: String?
    /// What DHCP hands out, "FIRST-LAST" (with a subnet).
    public var dhcpRange: String?
    /// Whether the host side is up now (`available`), and if not why (`reason`): a host without
    /// bridge support, nft or dnsmasq keeps the network defined but unusable.
    public var available: Bool
    public var reason: String?
    /// The VMs whose NICs join the network.
    public var vms: [String]
    public var createdAt: String

    public init(name: String, type: NetworkType, vlan: Int?, subnet: String?, uplink: String?, bridge: String, gateway: String?,
                dhcpRange: String?, available: Bool, reason: String?, vms: [String], createdAt: String) {
        self.name = name; self.type = type; self.vlan = vlan; self.subnet = subnet; self.uplink = uplink; self.bridge = bridge
        self.gateway = gateway; self.dhcpRange = dhcpRange; self.available = available; self.reason = reason; self.vms = vms
        self.createdAt = createdAt
    }

    enum CodingKeys: String, CodingKey {
        case name, type, vlan, subnet, uplink, bridge, gateway, dhcpRange = "dhcp_range", available, reason, vms
        case createdAt = "created_at"
    }
}

public struct NetworkList: Codable, Sendable, Equatable {
    public var networks: [Network]
    public init(networks: [Network]) { self.networks = networks }
}
