import KVM

/// What a machine's devices do with the exits that reach user space. Called on vCPU threads;
/// implementations synchronise their own state.
public protocol ExitHandler: AnyObject, Sendable {
    /// A port access. For reads, fill `io.data`. Returns false when no device owns the port.
    func handlePortIO(_ io: IOExit, vcpu: Int) -> Bool
    /// An MMIO access to guest-physical memory that is not RAM. Returns false when no device owns it.
    func handleMMIO(_ mmio: MMIOExit, vcpu: Int) -> Bool
}
