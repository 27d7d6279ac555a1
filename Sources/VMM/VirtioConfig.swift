import VireoConfig

/// The paravirtual (virtio-pci) devices of a machine, as the CLI gives them.
public struct VirtioConfig: Sendable, Equatable {
    /// A disk and a NIC are the VM configuration's own types (VireoConfig): what the daemon
    /// stored is what the device is built from. A disk's format may be nil only until
    /// `Machine` opens it (it detects it then and says so).
    public typealias Disk = VMConfig.Disk
    public typealias Net = VMConfig.NIC

    public struct Balloon: Sendable, Equatable {
        /// Initial target (MiB the balloon should hold).
        public var targetMiB: UInt64 = 0
        public var stats = false
        public var deflateOnOOM = false
        public var reporting = false
        /// A FIFO (created when missing) the VMM reads target changes from at run time.
        public var control: String?
        public init() {}
    }

    public struct Vsock: Sendable, Equatable {
        public var cid: UInt64
        public var socketPath: String
        public init(cid: UInt64, socketPath: String) { self.cid = cid; self.socketPath = socketPath }
    }

    public enum Console: Sendable, Equatable { case stdout, file(String) }

    public var disks: [Disk] = []
    public var nets: [Net] = []
    public var rng = false
    public var console: Console?
    public var balloon: Balloon?
    public var vsock: Vsock?

    public init() {}

    public var isEmpty: Bool {
        disks.isEmpty && nets.isEmpty && !rng && console == nil && balloon == nil && vsock == nil
    }
}

/// Token-bucket limits of one device (VireoConfig's `RateLimit`).
public typealias RateLimitConfig = RateLimit
