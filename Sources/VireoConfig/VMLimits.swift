/// Limits and checks shared by the daemon (which enforces them) and the CLI (which explains them).
public enum VMLimits {
    public static let maxVCPUs = 254
    public static let minMemoryMiB = 4
    /// 64 TiB: the guest-physical space KVM maps; the daemon also checks the host's RAM + swap.
    public static let maxMemoryMiB = 64 << 20
    public static let defaultVCPUs = 1
    public static let defaultMemoryMiB = 512
    public static let maxCmdlineBytes = 2048
    public static let maxPathBytes = 4095
    /// Guest vsock CIDs: 0-2 are the hypervisor, local and host; u32 max is "any".
    public static let minVsockCID = 3
    public static let maxVsockCID = 0xFFFF_FFFE

    /// `[a-z0-9][a-z0-9-]{0,62}`
    public static func isValidName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard (1...63).contains(bytes.count) else { return false }
        func ok(_ c: UInt8, dash: Bool) -> Bool { (c >= 97 && c <= 122) || (c >= 48 && c <= 57) || (dash && c == 45) }
        guard ok(bytes[0], dash: false) else { return false }
        return bytes.dropFirst().allSatisfy { ok($0, dash: true) }
    }

    public static let nameRule = "names are 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit"

    /// Daemon networks: `[a-z][a-z0-9-]{0,11}`, short enough that the host interfaces named
    /// after them (bridge `vb-NAME`) fit Linux's 15 bytes.
    public static func isValidNetworkName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard (1...12).contains(bytes.count), bytes[0] >= 97 && bytes[0] <= 122 else { return false }
        return bytes.allSatisfy { ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 45 }
    }

    public static let networkNameRule = "network names are 1-12 characters of a-z, 0-9 and '-', starting with a letter"
}
