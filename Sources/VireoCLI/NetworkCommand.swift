import ArgumentParser
import VireoAPI
import VireoSupport

/// `vireo network ...`: the daemon's networks (docs/networks.md).
struct NetworkCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "network",
        abstract: "Networks: bridges and VLANs the daemon makes; a VM's NIC joins one with `vireo vm create ... --net network=NAME`.",
        subcommands: [NetworkCreateCommand.self, NetworkListCommand.self, NetworkShowCommand.self, NetworkDeleteCommand.self])
}

struct NetworkCreateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create", abstract: "Make a network (its bridge, address, DHCP/DNS and NAT on this host).",
        discussion: """
            Examples: vireo network create lab --type bridge --subnet 10.0.60.0/24 --uplink eth0
                      vireo network create blue --type vlan --vlan 10
            """)
    @OptionGroup var client: ClientOptions
    @Argument(help: "Network name: 1-12 of a-z, 0-9 and '-', starting with a letter.") var name: String
    @Option(help: "bridge (its own bridge) or vlan (one VLAN on the shared VLAN-filtering bridge).") var type: String = "bridge"
    @Option(help: "The VLAN ID of a vlan network, 1-4094.") var vlan: Int?
    @Option(help: "An IPv4 subnet like 10.0.60.0/24: the host takes its first address and serves DHCP and DNS on it.") var subnet: String?
    @Option(help: "The host interface the network's traffic leaves by, masqueraded (NAT); needs --subnet.") var uplink: String?

    func run() throws {
        try reportingErrors {
            guard let t = NetworkType(rawValue: type) else {
                throw VireoError(.invalidArgument, "--type '\(type)' is not one of \(NetworkType.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            let c = NetworkCreate(name: name, type: t, vlan: vlan, subnet: subnet, uplink: uplink)
            let n = try client.makeClient().call("POST", "/v1/networks", body: APIJSON.encode(c), as: Network.self)
            if client.json { print(String(decoding: APIJSON.encode(n, pretty: true), as: UTF8.self)); return }
            print("created network \(n.name): \(networkSummary(n)); attach a VM with `vireo vm create NAME ... --net network=\(n.name)`")
        }
    }
}

func networkSummary(_ n: Network) -> String {
    var parts = [n.type == .vlan ? "VLAN \(n.vlan ?? 0) on bridge \(n.bridge)" : "bridge \(n.bridge)"]
    if let s = n.subnet { parts.append("subnet \(s), host \(n.gateway ?? "?")") }
    if let r = n.dhcpRange { parts.append("DHCP \(r)") }
    if let u = n.uplink { parts.append("NAT to \(u)") }
    return parts.joined(separator: ", ")
}

struct NetworkListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the networks.")
    @OptionGroup var client: ClientOptions
    func run() throws {
        try reportingErrors {
            let r = try client.makeClient().request("GET", "/v1/networks")
            try APIClient.check(r)
            if client.json { print(r.text); return }
            var rows = [["NAME", "TYPE", "VLAN", "BRIDGE", "SUBNET", "UPLINK", "STATE", "VMS"]]
            for n in try client.decode(NetworkList.self, r).networks {
                rows.append([n.name, n.type.rawValue, n.vlan.map(String.init) ?? "-", n.bridge, n.subnet ?? "-", n.uplink ?? "-",
                             n.available ? "available" : "unavailable: \(n.reason ?? "")", n.vms.isEmpty ? "-" : n.vms.joined(separator: ",")])
            }
            printTable(rows)
        }
    }
}

struct NetworkShowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show one network (--json: the daemon's JSON).")
    @OptionGroup var client: ClientOptions
    @Argument var name: String
    func run() throws {
        try reportingErrors {
            let r = try client.makeClient().request("GET", "/v1/networks/\(pathSafe(name))")
            try APIClient.check(r)
            if client.json { print(r.text); return }
            let n = try client.decode(Network.self, r)
            var rows: [(String, String)] = [("name", n.name), ("type", n.type.rawValue)]
            if let v = n.vlan { rows.append(("vlan", String(v))) }
            rows.append(("bridge", n.bridge))
            if let s = n.subnet { rows.append(("subnet", s)) }
            if let g = n.gateway { rows.append(("host address", g)) }
            if let d = n.dhcpRange { rows.append(("dhcp", d)) }
            if let u = n.uplink { rows.append(("uplink (NAT)", u)) }
            rows.append(("state", n.available ? "available" : "unavailable: \(n.reason ?? "")"))
            rows.append(("vms", n.vms.isEmpty ? "-" : n.vms.joined(separator: ", ")))
            rows.append(("created", n.createdAt))
            printKeyValues(rows)
        }
    }
}

struct NetworkDeleteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "delete", abstract: "Delete a network no VM's NIC uses (its bridge, NAT rules and dnsmasq go too).")
    @OptionGroup var client: ClientOptions
    @Argument var name: String
    func run() throws {
        try reportingErrors {
            let r = try client.makeClient().request("DELETE", "/v1/networks/\(pathSafe(name))")
            try APIClient.check(r)
            if !client.json { print("deleted network \(name)") }
        }
    }
}
