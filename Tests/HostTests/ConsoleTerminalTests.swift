import Foundation
import Testing
import VireoTestSupport
import VireoAPI
#if canImport(Glibc)
import Glibc
#endif

/// `vireo vm console NAME` on a real pseudo-terminal (util-linux `script`): interactive attach
/// to the echo probe through the daemon, Ctrl-] detaches (status 0, the VM keeps running), the
/// terminal settings are the same afterwards.
@Suite(.serialized, .timeLimit(.minutes(2)),
       .enabled(if: VireoBinary.path != nil && VireoBinary.hasKVM && access("/usr/bin/script", X_OK) == 0))
struct ConsoleTerminalTests {
    @Test func interactiveAttachAndDetach() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        _ = try d.createProbe("tty-1", workload: "echo", memory: 16)
        #expect(try d.action("tty-1", "start").status == 200)
        let bin = try #require(VireoBinary.path)
        let out = d.dir + "/tty.out"
        let inner = "stty -g; \(bin) vm console tty-1 --socket \(d.socket); echo rc=$?; stty -g"
        let rc = system("(sleep 1.5; printf 'keys'; sleep 1.5; printf '\\035') | timeout 30 script -qec '\(inner)' /dev/null | tr -d '\\r' > \(out)")
        #expect(rc == 0)
        let text = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
        let lines = text.split(separator: "\n").map(String.init)
        #expect(text.contains("Ctrl-] detaches"), "\(text)")
        #expect(text.contains("KEYS"), "keystrokes went through the guest: \(text)")
        #expect(text.contains("detached from tty-1") && text.contains("rc=0"), "\(text)")
        #expect(lines.count >= 2 && lines.first == lines.last, "the terminal settings are restored: \(text)")
        #expect(try d.vm("tty-1").state == .running, "detaching leaves the VM running")
    }
}
