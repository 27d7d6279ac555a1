/// The CPU features a guest was offered, as a snapshot records them, and what a host lacks of
/// them. A guest that saw AVX-512 and resumes on a host whose KVM cannot offer it faults on its
/// next AVX-512 instruction, so a restore or an incoming migration compares first.
public enum CPUFeatures {
    enum Register: Sendable { case eax, ebx, ecx, edx }

    static func value(_ e: CPUIDEntry, _ r: Register) -> UInt32 {
        switch r { case .eax: e.eax; case .ebx: e.ebx; case .ecx: e.ecx; case .edx: e.edx }
    }

    /// The feature registers compared, by "leaf[.subleaf].register", with the bits that say
    /// nothing about the CPU (OSXSAVE and OSPKE follow the guest's CR4) masked off.
    static let registers: [(key: String, function: UInt32, index: UInt32, register: Register, mask: UInt32)] = [
        ("1.ecx", 1, 0, .ecx, ~(UInt32(1) << 27)),
        ("1.edx", 1, 0, .edx, 0xFFFF_FFFF),
        ("7.0.ebx", 7, 0, .ebx, 0xFFFF_FFFF),
        ("7.0.ecx", 7, 0, .ecx, ~(UInt32(1) << 4)),
        ("7.0.edx", 7, 0, .edx, 0xFFFF_FFFF),
        ("7.1.eax", 7, 1, .eax, 0xFFFF_FFFF),
        ("0xd.0.eax", 0xD, 0, .eax, 0xFFFF_FFFF),
        ("0xd.1.eax", 0xD, 1, .eax, 0xFFFF_FFFF),
        ("0x80000001.ecx", 0x8000_0001, 0, .ecx, 0xFFFF_FFFF),
        ("0x80000001.edx", 0x8000_0001, 0, .edx, 0xFFFF_FFFF),
    ]

    /// Names of the bits people look for (Linux's /proc/cpuinfo spelling); others are named by
    /// register and bit.
    static let names: [String: [Int: String]] = [
        "1.ecx": [0: "sse3", 1: "pclmulqdq", 9: "ssse3", 12: "fma", 13: "cx16", 19: "sse4_1", 20: "sse4_2",
                  22: "movbe", 23: "popcnt", 25: "aes", 26: "xsave", 28: "avx", 29: "f16c", 30: "rdrand"],
        "1.edx": [25: "sse", 26: "sse2"],
        "7.0.ebx": [0: "fsgsbase", 3: "bmi1", 5: "avx2", 8: "bmi2", 9: "erms", 16: "avx512f", 17: "avx512dq",
                    18: "rdseed", 19: "adx", 21: "avx512ifma", 28: "avx512cd", 29: "sha_ni", 30: "avx512bw", 31: "avx512vl"],
        "7.0.ecx": [1: "avx512vbmi", 8: "gfni", 9: "vaes", 10: "vpclmulqdq", 11: "avx512_vnni", 22: "rdpid"],
        "0x80000001.ecx": [0: "lahf_lm", 5: "abm", 6: "sse4a"],
        "0x80000001.edx": [27: "rdtscp", 29: "lm"],
    ]

    /// The compared registers of `entries` (one vCPU's CPUID); absent leaves count as 0.
    public static func of(_ entries: [CPUIDEntry]) -> [String: UInt32] {
        var out: [String: UInt32] = [:]
        for r in registers {
            let e = entries.first { $0.function == r.function && $0.index == r.index }
            out[r.key] = (e.map { value($0, r.register) } ?? 0) & r.mask
        }
        return out
    }

    /// The features in `saved` that `offered` does not have, by name; empty when the host
    /// offers all of them. Registers `saved` has that this release does not compare are ignored.
    public static func missing(saved: [String: UInt32], offered: [String: UInt32]) -> [String] {
        var out: [String] = []
        for r in registers {
            guard let s = saved[r.key] else { continue }
            let lacking = s & r.mask & ~(offered[r.key] ?? 0)
            for bit in 0..<32 where lacking & (UInt32(1) << UInt32(bit)) != 0 {
                out.append(names[r.key]?[bit] ?? "\(r.key) bit \(bit)")
            }
        }
        return out
    }
}
