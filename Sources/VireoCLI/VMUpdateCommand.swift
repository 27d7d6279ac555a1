import ArgumentParser
import VireoAPI
import VireoSupport

/// `vireo vm update NAME [--memory SIZE] [--cpus N] [--balloon SIZE] [--cmdline TEXT] [--restart POLICY]`:
/// changes a VM's stored definition (PATCH /v1/vms/{name}).
struct VMUpdateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "update",
        abstract: "Change a VM's memory, vCPUs, balloon, command line or restart policy.",
        discussion: """
            Memory, vCPUs, the balloon and the command line are what the VM's VMM starts with: they \
            change only while the VM is stopped (a running VM is refused; stop it, update it, start it). \
            The restart policy changes at any time. Example: vireo vm update web --memory 1G --cpus 2
            """)
    @OptionGroup var client: ClientOptions
    @Argument(help: "The VM's name.") var name: String
    @Option(help: "Guest RAM, like 512M or 2G (a bare number is MiB).") var memory: String?
    @Option(help: "Number of vCPUs.") var cpus: Int?
    @Option(help: "The balloon device's size at start, like 256M (0: an empty balloon). `vireo vm balloon` sets a running VM's target.") var balloon: String?
    @Option(help: "Kernel command line.") var cmdline: String?
    @Option(help: "never, on-failure or always.") var restart: String?

    func run() throws {
        try reportingErrors {
            var u = VMUpdate(vcpus: cpus, cmdline: cmdline)
            if let memory { u.memoryMiB = Int(try parseSize(memory, option: "--memory") >> 20) }
            if let balloon { u.balloonMiB = Int(try parseSize(balloon, option: "--balloon") >> 20) }
            if let restart {
                guard let p = RestartPolicy(rawValue: restart) else {
                    throw VireoError(.invalidArgument, "--restart '\(restart)' is not one of never, on-failure, always")
                }
                u.restartPolicy = p
            }
            guard u != VMUpdate() else {
                throw VireoError(.invalidArgument, "nothing to change", hint: "give --memory, --cpus, --balloon, --cmdline or --restart")
            }
            let vm = try client.makeClient().call("PATCH", "/v1/vms/\(pathSafe(name))", body: APIJSON.encode(u), as: VM.self)
            if client.json { print(String(decoding: APIJSON.encode(vm, pretty: true), as: UTF8.self)); return }
            var facts = [vcpuText(vm.vcpus), memoryText(vm.memoryMiB)]
            if let b = vm.balloonMiB { facts.append("balloon \(memoryText(b))") }
            facts.append("restart \(vm.restartPolicy.rawValue)")
            print("updated \(vm.name): \(facts.joined(separator: ", "))")
        }
    }
}
