import Foundation
import Testing
import VireoTestSupport
import Host
import VireoAPI
#if canImport(Glibc)
import Glibc
#endif

/// The `vireo vm` / `vireo host info` CLI against a real daemon: tables by default, JSON with
/// --json, the daemon's errors as one line with what to do.
@Suite(.serialized, .timeLimit(.minutes(2)), .enabled(if: VireoBinary.path != nil))
struct HostCLITests {
    func vireo(_ d: TestDaemon, _ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        try ChildProcessRunner.run([VireoBinary.path ?? "vireo", "--socket", d.socket] + args)
    }

    @Test func createListShowJSONAndErrors() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        let created = try vireo(d, ["vm", "create", "cli-1", "--probe", "dirty", "--memory", "64M", "--cpus", "2", "--restart", "on-failure"])
        #expect(created.status == 0, "\(created.stderr)")
        #expect(created.stdout.contains("created cli-1: 2 vCPUs, 64 MiB"))

        let list = try vireo(d, ["vm", "list"])
        #expect(list.stdout.split(separator: "\n").first?.hasPrefix("NAME") == true)
        #expect(list.stdout.contains("cli-1") && list.stdout.contains("stopped"))

        let json = try vireo(d, ["vm", "list", "--json"])
        let parsed = try JSONDecoder().decode(VMList.self, from: Data(json.stdout.utf8))
        #expect(parsed.vms.first?.restartPolicy == .onFailure && parsed.vms.first?.vcpus == 2)

        let show = try vireo(d, ["vm", "show", "cli-1"])
        #expect(show.stdout.contains("restart policy:") && show.stdout.contains("on-failure"))

        let dup = try vireo(d, ["vm", "create", "cli-1", "--probe", "dirty"])
        #expect(dup.status == 1)
        #expect(dup.stderr.contains("already exists") && dup.stderr.contains("[conflict]"))

        let bad = try vireo(d, ["vm", "create", "Bad!", "--probe", "dirty"])
        #expect(bad.status == 1 && bad.stderr.contains("not a valid VM name"))

        let missing = try vireo(d, ["vm", "start", "nope"])
        #expect(missing.status == 1 && missing.stderr.contains("vireo vm list"))

        let relative = try vireo(d, ["vm", "create", "k1", "--kernel", "no-such-vmlinuz"])
        #expect(relative.status == 1 && relative.stderr.contains("does not exist"))

        let info = try vireo(d, ["host", "info"])
        #expect(info.status == 0 && info.stdout.contains("pCPUs:") && info.stdout.contains("vCPU:pCPU overcommit"))
    }

    @Test(.enabled(if: VireoBinary.hasKVM)) func startLogsStopDeleteThroughTheCLI() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        #expect(try vireo(d, ["vm", "create", "cli-2", "--probe", "dirty", "--memory", "32M"]).status == 0)
        let start = try vireo(d, ["vm", "start", "cli-2"])
        #expect(start.status == 0 && start.stdout.contains("cli-2: running (pid "), "\(start.stderr)")
        // The VMM runs with its console, control socket and exit file in the VM's directory.
        let pid = try #require(try d.vm("cli-2").pid)
        let argv = try String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8).split(separator: "\0").map(String.init)
        #expect(argv.contains("file=\(d.dataDir)/vms/cli-2/console.log") && argv.contains("\(d.dataDir)/vms/cli-2/api.sock"), "\(argv)")
        var logs = ""
        for _ in 0..<50 {
            logs = try vireo(d, ["vm", "logs", "cli-2"]).stdout
            if logs.contains("pass 1 done") { break }
            usleep(100_000)
        }
        #expect(logs.contains("probe: dirty pass 1 done"))
        let running = try vireo(d, ["vm", "delete", "cli-2"])
        #expect(running.status == 1 && running.stderr.contains("vireo vm stop cli-2"))
        #expect(try vireo(d, ["vm", "pause", "cli-2"]).stdout.contains("paused"))
        #expect(try vireo(d, ["vm", "stop", "cli-2"]).stdout.contains("stopped"))
        #expect(try vireo(d, ["vm", "delete", "cli-2"]).stdout.contains("deleted cli-2"))
        #expect(try vireo(d, ["vm", "list", "--json"]).stdout.contains(#""vms":[]"#))
    }
}

/// The daemon's VMM command line carries only this run's wiring; the VM's description goes
/// whole into the configuration file, which reads back equal, field by field.
@Test func vmmGetsTheDefinitionWholeAsAFile() throws {
    var def = VMDefinition(name: "web", vcpus: 2, memoryMiB: 512, kernel: "/k", initrd: "/i", cmdline: "console=ttyS0",
                           disks: [DiskSpec(path: "/d.qcow2", format: .qcow2, readonly: true, backing: .forbidden,
                                            rateLimit: RateLimit(bytesPerSecond: 5 << 20, opsPerSecond: 300)),
                                   DiskSpec(path: "/e.raw", format: .raw)],
                           nics: [NICSpec(tap: "tap0", mac: "52:54:00:12:34:56", rateLimit: RateLimit(opsPerSecond: 1000))],
                           balloonMiB: 128, rng: true, vsockCID: 42)
    def.config.assignDeviceIDs()
    def.config.balloonDeflateOnOOM = true
    let argv = VMMCommand.arguments(vmmBinary: "/bin/vireo", configPath: "/vm/config.json", console: "/c.log", apiSocket: "/a.sock",
                                    exitFile: "/x", vsockSocket: "/v.sock")
    #expect(argv == ["/bin/vireo", "run", "--config", "/vm/config.json", "--serial", "file=/c.log", "--api-socket", "/a.sock",
                     "--exit-file", "/x", "--vsock-socket", "/v.sock"])
    let dir = "/tmp/vireo-cfg-\(getpid())"
    mkdir(dir, 0o700)
    defer { unlink(dir + "/config.json"); rmdir(dir) }
    try VMMCommand.writeConfig(def.config, to: dir + "/config.json")
    var st = stat()
    #expect(stat(dir + "/config.json", &st) == 0 && st.st_mode & 0o777 == 0o600)
    let fd = open(dir + "/config.json", O_RDONLY)
    var bytes = [UInt8](repeating: 0, count: 1 << 16)
    let n = read(fd, &bytes, bytes.count)
    close(fd)
    let back = try VMConfig.decode(Array(bytes[0..<max(0, n)]), source: "config.json")
    #expect(back == def.config)
    #expect(back.disks[0].rateLimit?.bytesPerSecond == 5 << 20 && back.disks[0].backing == .forbidden && back.disks[0].id == "disk0")
    #expect(back.nics[0].id == "net0" && back.balloonDeflateOnOOM == true)
}
