import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif

public struct VireoCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "vireo",
        abstract: "Vireo: a KVM virtual machine monitor and virtualization toolkit.",
        discussion: "`vireo [--socket PATH] vm ...` talks to the host daemon at PATH (default $VIREO_SOCKET or /run/vireo/vireo.sock).",
        subcommands: [RunCommand.self, HostCommand.self, VMCommand.self, TemplateCommand.self, ImageCommand.self, NetworkCommand.self, EventsCommand.self, BenchCommand.self, DiskCommand.self, VsockProbeCommand.self, ControlCommand.self])
    public init() {}

    /// `vireo --socket PATH vm ...`: a --socket before the verb applies to every client verb
    /// (it becomes VIREO_SOCKET, which they read); everything else parses as usual.
    public static func main() {
        var args = Array(CommandLine.arguments.dropFirst())
        while let first = args.first {
            if first == "--socket", args.count >= 2 {
                setenv("VIREO_SOCKET", args[1], 1); args.removeFirst(2)
            } else if first.hasPrefix("--socket=") {
                setenv("VIREO_SOCKET", String(first.dropFirst(9)), 1); args.removeFirst()
            } else { break }
        }
        main(args)
    }
}
