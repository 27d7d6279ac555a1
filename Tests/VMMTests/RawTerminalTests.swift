import Testing
import VireoSupport
import VireoTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// `vireo run` on a real pseudo-terminal (util-linux `script` gives it one) with the echo probe:
/// raw mode (bytes reach the guest without a newline, Ctrl-C is a byte for the guest, not a
/// signal), Ctrl-A x quits with 130, and the terminal settings are the same afterwards.
@Suite(.enabled(if: VireoBinary.path != nil && access("/usr/bin/script", X_OK) == 0 && access("/dev/kvm", R_OK | W_OK) == 0))
struct RawTerminalTests {
    @Test func rawModeEscapeAndRestore() throws {
        let bin = try #require(VireoBinary.path)
        let out = "/tmp/vireo-rawterm-\(getpid()).out"
        defer { unlink(out) }
        let inner = "stty -g; \(bin) run --probe echo --memory 16M; echo rc=$?; stty -g"
        let rc = system("(sleep 1; printf 'abc\\003'; sleep 1.5; printf '\\001x') | timeout 30 script -qec '\(inner)' /dev/null | tr -d '\\r' > \(out)")
        #expect(rc == 0)
        let text = (try? OwnedFD.readFile(out)).map { String(decoding: $0, as: UTF8.self) } ?? ""
        let lines = text.split(separator: "\n").map(String.init)
        #expect(text.contains("ABC\u{3}"), "typed bytes reached the guest at once, Ctrl-C included: \(text)")
        #expect(text.contains("stopped by SIGINT") && text.contains("rc=130"), "Ctrl-A x quits with 130: \(text)")
        #expect(lines.count >= 2 && lines.first == lines.last, "the terminal settings are restored: \(text)")
    }
}
