import ArgumentParser
import VireoAPI
import VireoSupport

/// Shares, reservations, limits and page sharing, for `vireo vm create` and `vireo vm set`.
struct ResourceOptions: ParsableArguments {
    @Option(help: "CPU shares: weight against other VMs under contention (1-10000, default 100; 200 gets twice the CPU).") var cpuShares: Int?
    @Option(help: ArgumentHelp("The most CPU the VM gets, in percent of one core: 150% is 1.5 cores (0: no limit).", valueName: "pct")) var cpuLimit: String?
    @Option(help: ArgumentHelp("CPU reserved for the VM, in percent of one core; a start that would reserve more than the host has is refused (0: none).", valueName: "pct")) var cpuReservation: String?
    @Option(help: ArgumentHelp("Memory never reclaimed from the VM, like 256M (0: none).", valueName: "size")) var memoryReservation: String?
    @Option(help: ArgumentHelp("The most host memory the VM gets, like 1G (0: no limit).", valueName: "size")) var memoryLimit: String?
    @Option(help: "Memory shares: under pressure, VMs with fewer shares per MiB are reclaimed from first (1-10000, default 100).") var memoryShares: Int?
    @Flag(inversion: .prefixedNo, help: "Let KSM merge the VM's identical pages with other shareable VMs' (off by default: shared pages are a side channel between tenants). Takes effect at the next start.") var shareable: Bool?

    /// "150%", "150" -> 150; "0" -> 0.
    static func percent(_ text: String, option: String) throws -> Int {
        let digits = text.hasSuffix("%") ? String(text.dropLast()) : text
        guard let v = Int(digits), v >= 0 else {
            throw VireoError(.invalidArgument, "\(option) '\(text)' is not a percentage", hint: "give percent of one core, like 50% or 150% (1.5 cores)")
        }
        return v
    }

    static func mib(_ text: String, option: String) throws -> Int {
        Int(try parseSize(text, option: option) >> 20)
    }

    var isEmpty: Bool {
        cpuShares == nil && cpuLimit == nil && cpuReservation == nil && memoryReservation == nil && memoryLimit == nil
            && memoryShares == nil && shareable == nil
    }

    func fill(_ u: inout VMUpdate) throws {
        u.cpuShares = cpuShares
        u.cpuLimitPct = try cpuLimit.map { try Self.percent($0, option: "--cpu-limit") }
        u.cpuReservationPct = try cpuReservation.map { try Self.percent($0, option: "--cpu-reservation") }
        u.memoryReservationMiB = try memoryReservation.map { try Self.mib($0, option: "--memory-reservation") }
        u.memoryLimitMiB = try memoryLimit.map { try Self.mib($0, option: "--memory-limit") }
        u.memoryShares = memoryShares
        u.shareable = shareable
    }

    func fill(_ c: inout VMCreate) throws {
        var u = VMUpdate()
        try fill(&u)
        c.cpuShares = u.cpuShares; c.cpuLimitPct = u.cpuLimitPct; c.cpuReservationPct = u.cpuReservationPct
        c.memoryReservationMiB = u.memoryReservationMiB; c.memoryLimitMiB = u.memoryLimitMiB; c.memoryShares = u.memoryShares
        c.shareable = u.shareable
    }

    /// "cpu shares 200, cpu limit 150%, ..." for what a VM has.
    static func summary(_ vm: VM) -> String {
        var facts: [String] = ["cpu shares \(vm.cpuShares ?? VMConfig.defaultShares)"]
        if let v = vm.cpuLimitPct { facts.append("cpu limit \(v)%") }
        if let v = vm.cpuReservationPct { facts.append("cpu reservation \(v)%") }
        if let v = vm.memoryReservationMiB { facts.append("memory reservation \(memoryText(v))") }
        if let v = vm.memoryLimitMiB { facts.append("memory limit \(memoryText(v))") }
        facts.append("memory shares \(vm.memoryShares ?? VMConfig.defaultShares)")
        if vm.shareable == true { facts.append("shareable") }
        return facts.joined(separator: ", ")
    }
}

/// `vireo vm set NAME --cpu-shares N --cpu-limit 150% --memory-reservation 256M ...`: a VM's
/// shares, reservations and limits, at once on a running VM (PATCH /v1/vms/{name}).
struct VMSetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "set",
        abstract: "Change a VM's CPU and memory shares, reservations and limits (also while it runs).",
        discussion: """
            A running VM's cgroup takes the new values at once; a reservation that no longer fits \
            beside the other running VMs' is refused (422) and nothing changes. 0 removes a limit or a \
            reservation. Example: vireo vm set web --cpu-shares 200 --cpu-limit 150% --memory-reservation 256M
            """)
    @OptionGroup var client: ClientOptions
    @Argument(help: "The VM's name.") var name: String
    @OptionGroup var resources: ResourceOptions

    func run() throws {
        try reportingErrors {
            guard !resources.isEmpty else {
                throw VireoError(.invalidArgument, "nothing to change", hint: "give --cpu-shares, --cpu-limit, --cpu-reservation, --memory-reservation, --memory-limit, --memory-shares or --shareable")
            }
            var u = VMUpdate()
            try resources.fill(&u)
            let vm = try client.makeClient().call("PATCH", "/v1/vms/\(pathSafe(name))", body: APIJSON.encode(u), as: VM.self)
            if client.json { print(String(decoding: APIJSON.encode(vm, pretty: true), as: UTF8.self)); return }
            print("set \(vm.name): \(ResourceOptions.summary(vm))")
        }
    }
}
