import ArgumentParser
import VireoAPI
import VMM
import VireoSupport
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// `vireo vm ...`: VMs managed by the host daemon.
struct VMCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vm",
        abstract: "Create, run and inspect VMs managed by the host daemon (`vireo host`).",
        subcommands: [VMCreateCommand.self, VMListCommand.self, VMShowCommand.self, VMUpdateCommand.self,
                      VMActionCommand<Start>.self, VMStopCommand.self, VMActionCommand<Kill>.self,
                      VMActionCommand<Pause>.self, VMActionCommand<Resume>.self, VMActionCommand<Reboot>.self,
                      VMBalloonCommand.self, VMDeleteCommand.self, VMConsoleCommand.self, VMLogsCommand.self,
                      VMStatsCommand.self, VMConfigCommand.self, VMSnapshotCommand.self, VMActionCommand<Suspend>.self,
                      VMMigrateCommand.self, VMCloneCommand.self, VMSetCommand.self])
}

struct VMCreateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create", abstract: "Define a VM (it starts stopped; `vireo vm start NAME` boots it).",
        discussion: "Example: vireo vm create web --kernel out/guest/vmlinuz --initrd out/guest/initramfs.cpio.gz --cpus 2 --memory 512M")
    @OptionGroup var client: ClientOptions
    @Argument(help: "VM name: 1-63 of a-z, 0-9 and '-'.") var name: String
    @Option(help: "Guest kernel: an ELF vmlinux or a bzImage.") var kernel: String?
    @Option(help: "Initial ramdisk.") var initrd: String?
    @Option(help: "Kernel command line.") var cmdline: String?
    @Option(help: "Number of vCPUs.") var cpus: Int?
    @Option(help: "Guest RAM, like 512M or 2G (a bare number is MiB).") var memory: String?
    @Option(help: "A disk (repeatable): PATH or path=PATH (a file on the daemon's host) or image=NAME (a store image, `vireo image list`), then [,format=raw|qcow2][,readonly][,id=NAME][,backing=any|confined|forbidden][,bps=N][,iops=N]. Without format= the daemon detects it from the file's signature and records it.") var disk: [String] = []
    @Option(help: "A network interface (repeatable): network=NAME[,mac=MAC] (a daemon network, `vireo network list`; the daemon makes its TAP) or tap=NAME[,mac=MAC] (a TAP you made).") var net: [String] = []
    @Option(help: "Balloon target size, like 256M.") var balloon: String?
    @Flag(help: "virtio-rng: guest entropy from the host's getrandom.") var rng = false
    @Option(help: ArgumentHelp("virtio-vsock with this guest CID (3 and up); the host end is the VM's vsock socket (`vireo vm show`).", valueName: "cid")) var vsock: Int?
    @Option(help: "never, on-failure or always.") var restart: String?
    @Option(help: "Create from a template.") var fromTemplate: String?
    @Option(help: ArgumentHelp("Run the built-in probe guest: pio:N, mmio:N, dirty[:PASSES], compute:N.", visibility: .hidden)) var probe: String?
    @OptionGroup(title: "Shares, reservations, limits") var resources: ResourceOptions

    func run() throws {
        try reportingErrors {
            var c = VMCreate(name: name, vcpus: cpus, kernel: kernel.map(absolutePath), initrd: initrd.map(absolutePath),
                             cmdline: cmdline, probe: probe, template: fromTemplate)
            if let memory { c.memoryMiB = Int(try parseSize(memory, option: "--memory") >> 20) }
            if let balloon { c.balloonMiB = Int(try parseSize(balloon, option: "--balloon") >> 20) }
            if rng { c.rng = true }
            try resources.fill(&c)
            c.vsockCID = vsock
            if let restart {
                guard let p = RestartPolicy(rawValue: restart) else { throw VireoError(.invalidArgument, "--restart '\(restart)' is not one of never, on-failure, always") }
                c.restartPolicy = p
            }
            if !disk.isEmpty { c.disks = try disk.map(Self.diskSpec) }
            if !net.isEmpty {
                c.nics = try net.map(Self.netSpec)
            }
            let vm = try client.makeClient().call("POST", "/v1/vms", body: APIJSON.encode(c), as: VM.self)
            if client.json { print(String(decoding: APIJSON.encode(vm, pretty: true), as: UTF8.self)); return }
            print("created \(vm.name): \(vcpuText(vm.vcpus)), \(memoryText(vm.memoryMiB)); start it with `vireo vm start \(vm.name)`")
        }
    }
}

extension VMCreateCommand {
    /// `--net` for the daemon: `network=NAME[,mac=MAC]`, or `vireo run`'s `tap=NAME,...`.
    static func netSpec(_ text: String) throws -> NICSpec {
        guard text.hasPrefix("network=") || text.contains(",network=") else {
            do { return try DeviceOptions.net(text) } catch let e as DeviceOptions.ParseError { throw VireoError(.invalidArgument, e.description) }
        }
        var nic = NICSpec(tap: "")
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let kv = part.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            switch (kv.first, kv.count) {
            case ("network", 2) where nic.network == nil: nic.network = kv[1]
            case ("mac", 2) where nic.mac == nil:
                do { _ = try DeviceOptions.mac(kv[1]) } catch let e as DeviceOptions.ParseError { throw VireoError(.invalidArgument, e.description) }
                nic.mac = kv[1]
            case ("tap", _):
                throw VireoError(.invalidArgument, "--net '\(text)': give network=NAME or tap=NAME, not both (the daemon makes a network NIC's TAP)")
            default:
                throw VireoError(.invalidArgument, "--net '\(text)': '\(part)' is not one of network=NAME, mac=MAC (each once)")
            }
        }
        guard let n = nic.network, VMLimits.isValidNetworkName(n) else {
            throw VireoError(.invalidArgument, "--net '\(text)': network=\(nic.network ?? "") is not a network name (\(VMLimits.networkNameRule))")
        }
        return nic
    }

    /// `--disk` for the daemon: `vireo run`'s disk keys (DeviceOptions.disk), a bare PATH
    /// first, `readonly` alone, and `image=NAME` for a store image.
    static func diskSpec(_ text: String) throws -> DiskSpec {
        var parts = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        if let first = parts.first, !first.contains("=") { parts[0] = "path=" + first }
        parts = parts.map { $0 == "readonly" ? "readonly=on" : $0 }
        var image: String?
        if let i = parts.firstIndex(where: { $0.hasPrefix("image=") }) {
            image = String(parts[i].dropFirst(6))
            guard !parts.contains(where: { $0.hasPrefix("path=") }) else {
                throw VireoError(.invalidArgument, "--disk '\(text)': give either a path or image=NAME, not both")
            }
            parts[i] = "path=-"
        }
        var d: DiskSpec
        do { d = try DeviceOptions.disk(parts.joined(separator: ",")) } catch let e as DeviceOptions.ParseError {
            throw VireoError(.invalidArgument, e.description)
        }
        if let image { d.image = image; d.path = "" } else { d.path = absolutePath(d.path) }
        return d
    }
}

struct VMListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the VMs.")
    @OptionGroup var client: ClientOptions
    func run() throws {
        try reportingErrors {
            let r = try client.makeClient().request("GET", "/v1/vms")
            try APIClient.check(r)
            if client.json { print(r.text); return }
            let list = try client.decode(VMList.self, r)
            var rows = [["NAME", "STATE", "VCPUS", "MEMORY", "PID", "BOOT", "REASON"]]
            for v in list.vms {
                rows.append([v.name, v.state.rawValue, String(v.vcpus), memoryText(v.memoryMiB), v.pid.map(String.init) ?? "-",
                             v.probe.map { "probe \($0)" } ?? v.kernel.map { String($0.split(separator: "/").last ?? "") } ?? "-",
                             v.reason ?? ""])
            }
            printTable(rows)
        }
    }
}

struct VMShowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show one VM's definition and state.")
    @OptionGroup var client: ClientOptions
    @Argument var name: String
    func run() throws {
        try reportingErrors {
            let r = try client.makeClient().request("GET", "/v1/vms/\(pathSafe(name))")
            try APIClient.check(r)
            if client.json { print(r.text); return }
            let v = try client.decode(VM.self, r)
            var rows: [(String, String)] = [("name", v.name), ("state", v.state.rawValue)]
            if let reason = v.reason { rows.append(("reason", reason)) }
            if let pid = v.pid { rows.append(("pid", String(pid))) }
            rows += [("vcpus", String(v.vcpus)), ("memory", memoryText(v.memoryMiB))]
            if let k = v.kernel { rows.append(("kernel", k)) }
            if let i = v.initrd { rows.append(("initrd", i)) }
            if let c = v.cmdline { rows.append(("cmdline", c)) }
            if let p = v.probe { rows.append(("probe", p)) }
            for d in v.disks {
                var attrs = [d.format?.rawValue ?? "format not recorded"]
                if d.readonly == true { attrs.append("read-only") }
                if let image = d.image { attrs.append("image \(image)") }
                if let b = d.backing, b != .any { attrs.append("backing \(b.rawValue)") }
                if let r = d.rateLimit, !r.isUnlimited { attrs.append("limit \(r.bytesPerSecond) B/s, \(r.opsPerSecond) IOPS") }
                rows.append(("disk \(d.id ?? "")", "\(d.path) (\(attrs.joined(separator: ", ")))"))
            }
            for n in v.nics { rows.append(("nic", (n.network.map { "network=\($0) " } ?? "") + "tap=\(n.tap)" + (n.mac.map { " mac=\($0)" } ?? ""))) }
            if let b = v.balloonMiB { rows.append(("balloon", memoryText(b))) }
            if v.rng == true { rows.append(("rng", "virtio-rng")) }
            if let cid = v.vsockCID { rows.append(("vsock", "cid \(cid), host socket \(v.vsockSocket ?? "?")")) }
            rows += [("restart policy", v.restartPolicy.rawValue), ("restarts", String(v.restartCount)),
                     ("console log", v.consoleLog), ("api socket", v.apiSocket), ("created", v.createdAt)]
            if let e = v.exitStatus { rows.append(("last exit status", String(e))) }
            printKeyValues(rows)
        }
    }
}

protocol VMAction { static var verb: String { get }; static var abstract: String { get } }
enum Start: VMAction { static let verb = "start"; static let abstract = "Start a VM (one VMM process)." }
enum Kill: VMAction { static let verb = "kill"; static let abstract = "Kill a VM's VMM process at once (SIGKILL)." }
enum Pause: VMAction { static let verb = "pause"; static let abstract = "Pause a running VM (its vCPUs stop)." }
enum Resume: VMAction { static let verb = "resume"; static let abstract = "Resume a paused VM." }
enum Reboot: VMAction { static let verb = "reboot"; static let abstract = "Stop and start a VM's VMM." }
enum Suspend: VMAction { static let verb = "suspend"; static let abstract = "Save a running VM's state to disk and end its VMM; `vireo vm start` resumes it where it was." }

struct VMActionCommand<A: VMAction>: ParsableCommand {
    static var configuration: CommandConfiguration { CommandConfiguration(commandName: A.verb, abstract: A.abstract) }
    @OptionGroup var client: ClientOptions
    @Argument var name: String
    func run() throws {
        try reportingErrors {
            let vm = try client.makeClient().call("POST", "/v1/vms/\(pathSafe(name))/\(A.verb)", as: VM.self)
            printActionResult(vm, json: client.json)
        }
    }
}

func printActionResult(_ vm: VM, json: Bool) {
    if json { print(String(decoding: APIJSON.encode(vm, pretty: true), as: UTF8.self)); return }
    print("\(vm.name): \(vm.state.rawValue)" + (vm.pid.map { " (pid \($0))" } ?? "") + (vm.reason.map { " - \($0)" } ?? ""))
}

struct VMStopCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stop",
        abstract: "Stop a VM: ask its guest to shut down (ACPI power button), then end its VMM.",
        discussion: """
            The guest gets --timeout seconds to power itself off; if it does not (or has no ACPI, like \
            the probe guest, or is paused), its VMM stops it at once, still flushing its disks. \
            --force skips the request. `vireo vm kill` sends SIGKILL instead.
            """)
    @OptionGroup var client: ClientOptions
    @Argument var name: String
    @Flag(help: "Stop at once, without asking the guest to shut down first.") var force = false
    @Option(help: "Seconds the guest gets to power off (0-3600).") var timeout = 30

    func validate() throws {
        guard (0...3600).contains(timeout) else { throw ValidationError("--timeout must be 0 to 3600 seconds") }
    }

    func run() throws {
        try reportingErrors {
            var c = try client.makeClient()
            c.timeout = timeout + 30
            // Only a running guest is asked (a paused one is stopped at once); a VM without a
            // VMM gets the daemon's 409 at once, with nothing printed before it.
            if !force && !client.json, try c.call("GET", "/v1/vms/\(pathSafe(name))", as: VM.self).state == .running {
                printError("asking \(name)'s guest to shut down (up to \(timeout) s)...")
            }
            let vm = try c.call("POST", "/v1/vms/\(pathSafe(name))/stop?force=\(force)&timeout=\(timeout)", as: VM.self)
            printActionResult(vm, json: client.json)
        }
    }
}

struct VMDeleteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "delete", abstract: "Delete a stopped VM and its logs.")
    @OptionGroup var client: ClientOptions
    @Argument var name: String
    func run() throws {
        try reportingErrors {
            let r = try client.makeClient().request("DELETE", "/v1/vms/\(pathSafe(name))")
            try APIClient.check(r)
            if !client.json { print("deleted \(name)") }
        }
    }
}

struct VMLogsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "logs", abstract: "Print the guest's serial output so far.")
    @OptionGroup var client: ClientOptions
    @Argument var name: String
    func run() throws {
        try reportingErrors { _ = try streamConsole(client: client.makeClient(), name: name, from: 0, follow: false) }
    }
}

struct VMConsoleCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "console", abstract: "Attach to a VM's serial console (on a terminal; Ctrl-] detaches), or print and follow its output.",
        discussion: "See docs/console.md. Example: echo 'uname -a' | vireo vm console web --attach --drain 3")
    @OptionGroup var client: ClientOptions
    @Argument var name: String
    @Flag(help: "Print what is there and return.") var noFollow = false
    @Flag(help: "Only print and follow the output (read-only), even on a terminal.") var follow = false
    @Flag(help: "Attach even when stdin is not a terminal: stdin goes to the guest, its output to stdout.") var attach = false
    @Option(help: "With --attach and piped stdin: once stdin ends, exit after this many seconds without guest output.") var drain: Double = 2
    func run() throws {
        try reportingErrors {
            let c = try client.makeClient()
            if attach || (!follow && !noFollow && isatty(0) == 1) { try attachConsole(client: c, name: name, drainSeconds: drain); return }
            _ = try streamConsole(client: c, name: name, from: 0, follow: !noFollow)
        }
    }
}

/// Copies the console log to stdout from `from`; with `follow`, keeps polling while the VM runs.
func streamConsole(client: APIClient, name: String, from: Int, follow: Bool) throws -> Int {
    var offset = from
    var idle = 0
    while true {
        let r = try client.request("GET", "/v1/vms/\(pathSafe(name))/console?offset=\(offset)")
        try APIClient.check(r)
        if !r.body.isEmpty { _ = r.body.withUnsafeBytes { write(1, $0.baseAddress, $0.count) } }
        let next = r.headers["x-vireo-next-offset"].flatMap(Int.init) ?? offset + r.body.count
        let advanced = next > offset
        offset = next
        if advanced { continue }
        if !follow { return offset }
        // Following: stop once the VM has no VMM any more (its log is complete).
        idle += 1
        if idle % 10 == 0, let vm = try? client.call("GET", "/v1/vms/\(pathSafe(name))", as: VM.self), !vm.state.hasProcess {
            printError("vireo: \(name) is \(vm.state.rawValue)" + (vm.reason.map { " (\($0))" } ?? ""))
            return offset
        }
        usleep(200_000)
    }
}

/// A VM name as a path segment: names are validated by the daemon; this only stops a client
/// from building a different route out of '/' or '?'.
func pathSafe(_ name: String) -> String {
    String(name.map { $0 == "/" || $0 == "?" || $0 == "#" || $0 == "%" || $0 == " " ? "_" : $0 })
}

/// "1 vCPU", "2 vCPUs".
func vcpuText(_ n: Int) -> String { n == 1 ? "1 vCPU" : "\(n) vCPUs" }

/// A size in MiB as people read it: 512 MiB, 10 GiB, 1.5 GiB.
func memoryText(_ mib: Int) -> String {
    let (bytes, overflow) = UInt64(clamping: mib).multipliedReportingOverflow(by: 1 << 20)
    return overflow ? "\(mib) MiB" : ByteSize.format(bytes)
}

func printTable(_ rows: [[String]]) {
    guard let first = rows.first else { return }
    var widths = first.map(\.count)
    for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
    for r in rows {
        var line = ""
        for (i, c) in r.enumerated() {
            line += i == r.count - 1 ? c : c + String(repeating: " ", count: widths[i] - c.count + 2)
        }
        print(line)
    }
}
