import ArgumentParser

public struct VireoCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "vireo",
        abstract: "Vireo: a KVM virtual machine monitor and virtualization toolkit.",
        subcommands: [RunCommand.self, HostCommand.self, BenchCommand.self, DiskCommand.self, VsockProbeCommand.self])
    public init() {}
}
