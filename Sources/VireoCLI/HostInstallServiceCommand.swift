import ArgumentParser
import Host
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// `vireo host install-service`: a systemd unit that runs the daemon (docs/host.md).
struct HostInstallServiceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "install-service",
        abstract: "Write a systemd unit that runs `vireo host serve --config FILE` as a system service.",
        discussion: """
        The unit restarts the daemon when it fails, starts it once the network is online, and stops
        only the daemon (KillMode=process): VMs keep running across a daemon restart or upgrade and
        the new daemon re-adopts them. Then: systemctl daemon-reload && systemctl enable --now vireo-host
        """)

    @Option(help: ArgumentHelp("Where to write the unit.", valueName: "path"))
    var unitPath: String = "/etc/systemd/system/vireo-host.service"

    @Option(help: ArgumentHelp("The config file the service's daemon reads (`vireo host serve --config`); written with the defaults if it does not exist.", valueName: "file"))
    var config: String = "/etc/vireo/host.toml"

    @Option(help: ArgumentHelp("The vireo binary the service runs (default: this one).", valueName: "path"))
    var binary: String?

    @Flag(help: "Print the unit instead of writing it.")
    var stdout = false

    @Flag(help: "Replace an existing unit file.")
    var force = false

    func run() throws {
        try reportingErrors {
            let bin = binary ?? ChildProcess.selfExecutable()
            guard bin.hasPrefix("/"), access(bin, X_OK) == 0 else {
                throw VireoError(.invalidArgument, "the service's binary \(bin) is not an executable file given by its absolute path", hint: "give --binary /usr/local/bin/vireo")
            }
            guard config.hasPrefix("/") else {
                throw VireoError(.invalidArgument, "--config \(config) must be an absolute path (systemd runs the daemon from /)")
            }
            for (what, path) in [("binary", bin), ("config", config)] where path.contains(where: { $0 == " " || $0 == "\"" || $0 == "\\" || $0 == "%" || $0 == "\n" || $0 == "$" }) {
                throw VireoError(.invalidArgument, "the \(what) path '\(path)' has a space, quote, backslash, % or $, which a unit's ExecStart would change; use a plain path")
            }
            let unit = SystemdUnit.hostService(binary: bin, config: config)
            if stdout { print(unit, terminator: ""); return }
            if access(unitPath, F_OK) == 0 && !force {
                throw VireoError(.conflict, "\(unitPath) exists", hint: "add --force to replace it, or --stdout to see the new one")
            }
            try SystemdUnit.write(unit, to: unitPath)
            print("wrote \(unitPath)")
            if access(config, F_OK) != 0 {
                try SystemdUnit.write(SystemdUnit.defaultConfig, to: config)
                print("wrote \(config) (the defaults; edit it, docs/host.md lists the keys)")
            }
            print("next: systemctl daemon-reload && systemctl enable --now \(unitPath.split(separator: "/").last.map(String.init) ?? "vireo-host.service")")
        }
    }
}
