import Foundation
import Testing
import VireoTestSupport

/// `vireo host check` says what is true: KVM offering the capabilities snapshots and migration
/// would need is not "snapshots and live migration supported" (Vireo has snapshots, no migration).
@Suite(.enabled(if: VireoBinary.path != nil && VireoBinary.hasKVM))
struct HostCheckWordingTests {
    /// Before: "kvm optional capabilities: all present (snapshots and live migration supported)".
    @Test func optionalCapabilitiesAreNotCalledFeatures() throws {
        let (_, out, err) = try VireoBinary.run(["host", "check"])
        let line = out.split(separator: "\n").first { $0.contains("kvm optional capabilities") }.map(String.init) ?? ""
        #expect(!line.isEmpty, "no optional-capabilities line: \(out) \(err)")
        #expect(!out.contains("migration supported") && !out.contains("snapshots and live migration supported"), "\(out)")
        #expect(line.contains("live migration between VMMs") && line.contains("`vireo vm snapshot`"), "\(line)")
        #expect(!out.contains("(post-copy and memory compression)"), "userfaultfd is not a feature Vireo has: \(out)")
    }
}
