import VireoAPI

/// The `vireo run` command line that runs one VM's VMM.
public enum VMMCommand {
    public static func arguments(vmmBinary: String, definition d: VMDefinition, console: String,
                                 apiSocket: String, exitFile: String, consoleSocket: String? = nil,
                                 vsockSocket: String? = nil) -> [String] {
        var argv = [vmmBinary, "run", "--cpus", String(d.vcpus), "--memory", "\(d.memoryMiB)M",
                    "--serial", "file=\(console)", "--api-socket", apiSocket, "--exit-file", exitFile]
        if let consoleSocket { argv += ["--console-socket", consoleSocket] }
        if let probe = d.probe {
            argv += ["--probe", probe]
        } else if let kernel = d.kernel {
            argv += ["--kernel", kernel]
            if let initrd = d.initrd { argv += ["--initrd", initrd] }
            if let cmdline = d.cmdline { argv += ["--cmdline", cmdline] }
        }
        // `vireo run`'s device specs: --disk path=FILE[,readonly=on], --net tap=NAME[,mac=MAC], --balloon size=MIB,stats=on.
        for disk in d.disks { argv += ["--disk", "path=\(disk.path)" + (disk.readonly == true ? ",readonly=on" : "")] }
        for nic in d.nics { argv += ["--net", "tap=\(nic.tap)" + (nic.mac.map { ",mac=\($0)" } ?? "")] }
        // stats=on: the guest's own free/available memory reaches `vireo vm stats` and /metrics.
        if let b = d.balloonMiB { argv += ["--balloon", "size=\(b),stats=on"] }
        if d.rng == true { argv.append("--rng") }
        if let cid = d.vsockCID, let vsockSocket { argv += ["--vsock", "cid=\(cid),socket=\(vsockSocket)"] }
        return argv
    }
}
