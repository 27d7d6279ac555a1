/// The paravirtual (virtio-pci) devices of a machine, as the CLI gives them.
public struct VirtioConfig: Sendable, Equatable {
    public struct Disk: Sendable, Equatable {
        public enum Format: String, Sendable { case raw, qcow2 }
        public var path: String
        public var readOnly = false
        public var format = Format.raw
        public var id: String?
        public var rateLimit = RateLimitConfig()
        public init(path: String) { self.path = path }
    }

    public struct Net: Sendable, Equatable {
        public var tap: String
        /// Six bytes; nil derives a stable MAC from the VM (see `Machine.derivedMAC`).
        public var mac: [UInt8]?
        public var rateLimit = RateLimitConfig()
        public init(tap: String) { self.tap = tap }
    }

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

/// Token-bucket limits of one device (0 = unlimited). Bursts default to one second's worth.
public struct RateLimitConfig: Sendable, Equatable {
    public var bytesPerSecond: UInt64 = 0
    public var bytesBurst: UInt64 = 0
    public var opsPerSecond: UInt64 = 0
    public var opsBurst: UInt64 = 0
    public init() {}
    public var isUnlimited: Bool { bytesPerSecond == 0 && opsPerSecond == 0 }
}
