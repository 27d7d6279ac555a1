import ArgumentParser

public struct VireoCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "vireo",
        abstract: "Vireo: a KVM virtual machine monitor and virtualization toolkit.",
        subcommands: [RunCommand.self, HostCommand.self, VMCommand.self, BenchCommand.self, DiskCommand.self])
    public init() {}
}
