import Foundation
import Testing
import VireoAPI
import VireoSupport
import VireoTestSupport
import Host
#if canImport(Glibc)
import Glibc
#endif

/// `vireo host serve --config FILE` and `vireo host install-service` (docs/host.md).
@Suite(.serialized, .timeLimit(.minutes(2)), .enabled(if: VireoBinary.path != nil))
struct HostServiceConfigTests {
    @Test func configFileParsesEveryKindAndRefusesWhatItDoesNotKnow() throws {
        let c = try HostConfigFile.parse("""
            # a comment
            data-dir = "/srv/vireo"   # trailing comment
            socket = '/run/v.sock'
            pool = ["/a", "/b c"]
            active-memory-window = 5
            memory-overcommit = 1.25
            default-network = false

            """, path: "t.toml")
        #expect(c.string("data-dir") == "/srv/vireo" && c.string("socket") == "/run/v.sock")
        #expect(c.strings("pool") == ["/a", "/b c"] && c.uint32("active-memory-window") == 5)
        #expect(c.decimal("memory-overcommit") == 1.25 && c.bool("default-network") == false)

        for (text, says) in [("datadir = \"/x\"", "t.toml:1: unknown key 'datadir'"),
                             ("\n\ndata_dir = \"/x\"", "t.toml:3: unknown key 'data_dir' (spell it data-dir)"),
                             ("data-dir = /x", "'data-dir' needs a quoted string"),
                             ("data-dir = \"/x", "not closed"),
                             ("pool = [\"/a\" \"/b\"]", "expected ',' or ']'"),
                             ("active-memory-window = -1", "whole number"),
                             ("default-network = yes", "true or false"),
                             ("socket = \"/a\"\nsocket = \"/b\"", "t.toml:2: 'socket' is set twice"),
                             ("[host]", "tables"),
                             ("listen = \"a\" extra", "unexpected text")] {
            #expect(throws: VireoError.self, "\(text)") { try HostConfigFile.parse(text, path: "t.toml") }
            do { _ = try HostConfigFile.parse(text, path: "t.toml"); Issue.record("accepted: \(text)") } catch {
                #expect(error.description.contains(says), "\(text): \(error.description)")
            }
        }
    }

    /// The daemon takes what the file says, and a flag wins over the file.
    @Test func flagsWinOverTheConfigFile() throws {
        let bin = try #require(VireoBinary.path)
        let dir = "/tmp/vireo-cfg-\(getpid())"
        _ = system("rm -rf \(dir)")
        mkdir(dir, 0o755)
        defer { _ = system("rm -rf \(dir)") }
        try """
            socket = "\(dir)/from-file.sock"
            data-dir = "\(dir)/data-from-file"
            default-network = false
            memory-overcommit = 0.5
            """.write(toFile: dir + "/host.toml", atomically: true, encoding: .utf8)
        let child = try ChildProcess([bin, "host", "serve", "--config", dir + "/host.toml", "--socket", dir + "/from-flag.sock"])
        defer { child.signal(SIGKILL); child.wait() }
        let line = ChildProcess.readLine(child.stderr) ?? ""
        #expect(line.contains("listening on \(dir)/from-flag.sock, data in \(dir)/data-from-file") && line.contains("config \(dir)/host.toml"), "\(line)")
        let client = APIClient(socket: dir + "/from-flag.sock")
        var host: HostInfo?
        for _ in 0..<100 where host == nil {
            host = try? client.call("GET", "/v1/host", as: HostInfo.self)
            if host == nil { usleep(50_000) }
        }
        #expect(host?.dataDir == dir + "/data-from-file")
        #expect(access(dir + "/from-file.sock", F_OK) != 0, "the file's socket was used although --socket was given")
        #expect(try client.call("GET", "/v1/networks", as: NetworkList.self).networks.isEmpty, "default-network = false was not applied")

        // A bad file stops the daemon before it starts, saying where.
        try "memory-overcommit = lots\n".write(toFile: dir + "/bad.toml", atomically: true, encoding: .utf8)
        let bad = try ChildProcessRunner.run([bin, "host", "serve", "--config", dir + "/bad.toml", "--socket", dir + "/bad.sock", "--data-dir", dir + "/bad"])
        #expect(bad.status != 0 && bad.stderr.contains("\(dir)/bad.toml:1: 'memory-overcommit' needs a number"), "\(bad.stderr)")
        // A flag's value is checked as the file's would be.
        try "memory-overcommit = 500\n".write(toFile: dir + "/big.toml", atomically: true, encoding: .utf8)
        let big = try ChildProcessRunner.run([bin, "host", "serve", "--config", dir + "/big.toml", "--socket", dir + "/big.sock", "--data-dir", dir + "/big"])
        #expect(big.status != 0 && big.stderr.contains("memory-overcommit 500.0 is out of range"), "\(big.stderr)")
    }

    static let analyze: String? = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"].first { (p: String) in access(p, X_OK) == 0 }

    @Test func installServiceWritesAUnitThatSystemdAccepts() throws {
        let bin = try #require(VireoBinary.path)
        let dir = "/tmp/vireo-unit-\(getpid())"
        _ = system("rm -rf \(dir)")
        mkdir(dir, 0o755)
        defer { _ = system("rm -rf \(dir)") }
        let unit = dir + "/vireo-host.service"
        let r = try ChildProcessRunner.run([bin, "host", "install-service", "--unit-path", unit, "--config", dir + "/etc/host.toml", "--binary", bin])
        #expect(r.status == 0, "\(r.stderr)")
        let text = try String(contentsOfFile: unit, encoding: .utf8)
        for line in ["ExecStart=\(bin) host serve --config \(dir)/etc/host.toml", "Restart=on-failure", "KillMode=process",
                     "After=network-online.target", "Wants=network-online.target", "WantedBy=multi-user.target"] {
            #expect(text.contains("\n" + line + "\n"), "the unit lacks \(line)")
        }
        // The default config it wrote is one the daemon reads.
        let cfg = try HostConfigFile.load(dir + "/etc/host.toml")
        #expect(cfg.string("data-dir") == "/var/lib/vireo")
        // Not over an existing unit without --force.
        let again = try ChildProcessRunner.run([bin, "host", "install-service", "--unit-path", unit, "--config", dir + "/etc/host.toml", "--binary", bin])
        #expect(again.status != 0 && again.stderr.contains("--force"))

        guard let analyze = Self.analyze else {
            Issue.record("systemd-analyze is missing: scripts/setup.sh installs Debian's systemd package")
            return
        }
        let v = try ChildProcessRunner.run([analyze, "verify", unit])
        #expect(v.status == 0 && !v.stderr.contains("vireo-host.service:"), "systemd-analyze verify: \(v.stdout) \(v.stderr)")
        // A broken unit fails the same check (the check can fail).
        try text.replacingOccurrences(of: "KillMode=process", with: "KillMode=sometimes").write(toFile: dir + "/broken.service", atomically: true, encoding: .utf8)
        let broken = try ChildProcessRunner.run([analyze, "verify", dir + "/broken.service"])
        #expect(broken.stderr.contains("broken.service:") && broken.stderr.contains("Failed to parse kill mode"), "systemd-analyze did not notice a bad KillMode: \(broken.stderr)")
    }
}
