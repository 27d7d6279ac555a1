import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// The daemon's systemd unit and first config file (`vireo host install-service`).
public enum SystemdUnit {
    public static func hostService(binary: String, config: String) -> String {
        """
        # Written by `vireo host install-service` (docs/host.md).
        [Unit]
        Description=Vireo host daemon (VM inventory, VMM supervision, REST API, web console)
        Wants=network-online.target
        After=network-online.target

        [Service]
        Type=simple
        ExecStart=\(binary) host serve --config \(config)
        # A crash or an error exit starts the daemon again; it re-adopts the running VMs.
        Restart=on-failure
        RestartSec=2s
        # Stop the daemon only: each VM's VMM runs on (in its own session) and the next daemon
        # adopts it. control-group would kill every VM with the daemon.
        KillMode=process
        TimeoutStopSec=20s
        # VMMs lock guest memory for devices and open many files (disks, TAPs, sockets).
        LimitNOFILE=1048576
        LimitMEMLOCK=infinity

        [Install]
        WantedBy=multi-user.target

        """
    }

    public static let defaultConfig = """
        # vireo host serve --config: every key is a flag of `vireo host serve --help` without its
        # dashes; a flag given on the command line wins. docs/host.md describes them.
        data-dir = "/var/lib/vireo"
        socket = "/run/vireo/vireo.sock"
        # listen = "0.0.0.0:8443"          # the REST API and the web console over TCP
        # token-file = "/etc/vireo/token"   # needed with listen: head -c 32 /dev/urandom | base64 > /etc/vireo/token
        # pool = ["/srv/vireo"]
        # memory-overcommit = 1.5
        # default-network = true

        """

    /// Writes `text` to `path` (its directory made if missing), mode 0644, via a temporary file.
    public static func write(_ text: String, to path: String) throws {
        let dir = path.split(separator: "/").dropLast().joined(separator: "/")
        if !dir.isEmpty { try HostService.makeDirectory((path.hasPrefix("/") ? "/" : "") + dir) }
        let tmp = path + ".tmp"
        let fd = try OwnedFD.open(tmp, flags: O_WRONLY | O_CREAT | O_TRUNC, mode: 0o644, purpose: "write")
        let bytes = Array(text.utf8)
        // SAFETY: write reads exactly bytes.count bytes of the array's storage.
        let n = bytes.withUnsafeBytes { Glibc.write(fd.rawValue, $0.baseAddress, $0.count) }
        guard n == bytes.count else { unlink(tmp); throw VireoError.system("cannot write \(tmp)") }
        guard rename(tmp, path) == 0 else { unlink(tmp); throw VireoError.system("cannot rename \(tmp) to \(path)") }
    }
}
