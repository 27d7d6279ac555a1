import Testing
import X86Boot

/// What a snapshot's CPU features are compared with at restore: named features, register
/// bits without a name, bits that follow the guest's CR4 ignored, absent leaves as zero.
@Suite struct CPUFeaturesTests {
    static let host: [CPUIDEntry] = [
        CPUIDEntry(function: 1, index: 0, flags: 0, eax: 0, ebx: 0, ecx: (1 << 28) | (1 << 20) | (1 << 27), edx: 1 << 26),
        CPUIDEntry(function: 7, index: 0, flags: 1, eax: 0, ebx: 1 << 5, ecx: 1 << 4, edx: 0),
    ]

    @Test func aHostOffersWhatItWasGiven() {
        let f = CPUFeatures.of(Self.host)
        #expect(CPUFeatures.missing(saved: f, offered: f).isEmpty)
        #expect(f["1.ecx"] == (1 << 28) | (1 << 20), "OSXSAVE (CR4-driven) is not a CPU feature")
        #expect(f["7.0.ecx"] == 0, "OSPKE (CR4-driven) is not a CPU feature")
        #expect(f["0x80000001.edx"] == 0, "an absent leaf counts as zero")
    }

    @Test func lackingFeaturesAreNamed() {
        var saved = CPUFeatures.of(Self.host)
        saved["7.0.ebx"] = (1 << 5) | (1 << 16) | (1 << 30) | (1 << 1)
        saved["0x80000001.edx"] = 1 << 27
        let missing = CPUFeatures.missing(saved: saved, offered: CPUFeatures.of(Self.host))
        #expect(missing == ["7.0.ebx bit 1", "avx512f", "avx512bw", "rdtscp"])
    }

    @Test func aNewerHostIsFineAndUnknownRegistersAreIgnored() {
        var newer = Self.host
        newer[1].ebx |= 1 << 16
        let saved = CPUFeatures.of(Self.host).merging(["99.edx": 0xFFFF_FFFF]) { a, _ in a }
        #expect(CPUFeatures.missing(saved: saved, offered: CPUFeatures.of(newer)).isEmpty)
        #expect(!CPUFeatures.missing(saved: CPUFeatures.of(newer), offered: CPUFeatures.of(Self.host)).isEmpty)
    }
}
