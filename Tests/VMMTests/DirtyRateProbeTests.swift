import Foundation
import Testing
import VMM
import VireoSupport
import VireoTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// The `dirty-rate:MIBPS` probe workload behind `vireo bench migrate`: its first pass writes
/// all of RAM at full speed, the passes after it are held to the set rate by the VMM.
@Suite(.serialized, .enabled(if: VireoBinary.path != nil && VireoBinary.hasKVM))
struct DirtyRateProbeTests {
    /// 66 MiB of RAM leaves 64 MiB to dirty; at 32 MiB/s a paced pass takes about 2 s, where an
    /// unpaced one takes milliseconds. Only the lower bound is checked (a loaded host may be slower).
    @Test func passesAfterTheFirstKeepToTheRate() throws {
        let bin = try #require(VireoBinary.path)
        let child = try ChildProcess([bin, "run", "--probe", "dirty-rate:32", "--memory", "66M", "--serial", "none"])
        defer { child.signal(SIGKILL); _ = child.wait() }
        var times: [Int: UInt64] = [:]
        while times[4] == nil, let line = ChildProcess.readLine(child.stdout) {
            if line.hasPrefix("probe_pass="), let n = Int(line.dropFirst("probe_pass=".count).prefix { $0.isNumber }) {
                times[n] = monotonicNanos()
            }
        }
        let t2 = try #require(times[2]), t4 = try #require(times[4])
        let perPassMs = Double(t4 - t2) / 2 / 1e6
        print("dirty-rate:32 on 64 MiB: \(Int(perPassMs)) ms per paced pass (2000 expected)")
        #expect(perPassMs > 1600, "a paced pass took \(perPassMs) ms: the pacer does not hold the guest to 32 MiB/s")
    }

    @Test func rateTextIsChecked() throws {
        #expect(try ProbeWorkload.parse("dirty-rate:100") == .dirtyRate(mibPerSecond: 100))
        #expect(try ProbeWorkload.parse("dirty-rate:100").dirtyBytesPerSecond == 100 << 20)
        for bad in ["dirty-rate:0", "dirty-rate:x", "dirty-rate:99999999999", "dirty-rate"] {
            let (status, _, err) = try VireoBinary.run(["run", "--probe", bad, "--memory", "16M", "--serial", "none"])
            #expect(status != 0 && err.contains("probe") && !err.contains("Fatal"), "\(bad): \(err)")
        }
    }
}
