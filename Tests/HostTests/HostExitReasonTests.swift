import Foundation
import Testing
import VireoAPI
import VireoSupport
import VireoTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// How a VMM that ended while the daemon was down is recorded: from its exit file, or "unknown";
/// never the last line of vmm.log (which is any output of any run: a probe's `probe_pass=1`).
@Suite(.serialized, .timeLimit(.minutes(2)), .enabled(if: VireoBinary.path != nil && VireoBinary.hasKVM))
struct HostExitReasonTests {
    func waitGone(_ pid: Int) {
        for _ in 0..<100 where processAlive(pid) { usleep(50_000) }
    }

    /// Before: "gone" was marked failed with the reason "probe_pass=1" (its vmm.log's last line).
    @Test func aVMMThatDiedWhileTheDaemonWasDownGetsItsTrueEnd() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        for name in ["gone", "termed"] {
            _ = try d.createProbe(name)
            #expect(try d.action(name, "start").status == 200)
        }
        // The probe says probe_pass=1 on the VMM's stdout once its machine runs, (and the VMM
        // handles SIGTERM): vmm.log ends with it.
        for name in ["gone", "termed"] {
            let log = d.dataDir + "/vms/\(name)/vmm.log"
            var text = ""
            for _ in 0..<100 {
                text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
                if text.contains("probe_pass=1") { break }
                usleep(100_000)
            }
            // (and probe_pass=2, 4, 8, ... after it as the guest goes on)
            let last = text.split(separator: "\n").last ?? ""
            #expect(last.hasPrefix("probe_pass="), "\(name)'s vmm.log: \(text)")
        }
        let gonePID = try #require(try d.vm("gone").pid)
        let termedPID = try #require(try d.vm("termed").pid)

        d.kill9()
        kill(pid_t(gonePID), SIGKILL)    // no exit file: how it ended cannot be known later
        kill(pid_t(termedPID), SIGTERM)  // the VMM stops the guest and writes its exit file
        waitGone(gonePID)
        waitGone(termedPID)
        #expect(!processAlive(gonePID) && !processAlive(termedPID))
        let exitFile = (try? String(contentsOfFile: d.dataDir + "/vms/termed/exit", encoding: .utf8)) ?? ""
        let exitLines = exitFile.split(separator: "\n")
        #expect(exitLines.count == 2, "exit file: \(exitFile)")

        try d.start()
        let gone = try d.vm("gone")
        #expect(gone.state == .failed && gone.pid == nil)
        let reason = gone.reason ?? ""
        #expect(reason.contains("unknown") && reason.contains("no exit file"), "\(reason)")
        #expect(!reason.contains("probe_pass"), "\(reason)")
        let termed = try d.vm("termed")
        #expect(termed.reason == exitLines.last.map(String.init), "\(termed.reason ?? "nil") vs the exit file \(exitFile)")
        let events = try d.client.call("GET", "/v1/events?vm=gone", as: EventList.self).events
        #expect(events.contains { $0.type == "failed" && $0.message.contains("while the daemon was down") && $0.message.contains("unknown") }, "\(events)")
    }
}
