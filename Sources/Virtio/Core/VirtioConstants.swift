/// Virtio device types (virtio 1.2 section 5) this VMM knows about.
public enum VirtioDeviceType: UInt16, Sendable {
    case network = 1
    case block = 2
    case console = 3
    case entropy = 4
    case balloon = 5
    case vsock = 19

    /// PCI device id of a modern (non-transitional) device: 0x1040 + type.
    public var pciDeviceID: UInt16 { 0x1040 &+ rawValue }

    /// PCI class/subclass/prog-if for the type (what `lspci` shows; drivers match on ids only).
    public var pciClass: (base: UInt8, sub: UInt8, progIF: UInt8) {
        switch self {
        case .network: return (0x02, 0x00, 0)
        case .block: return (0x01, 0x80, 0)
        case .console: return (0x07, 0x80, 0)
        default: return (0xFF, 0x00, 0)
        }
    }
}

/// Feature bits defined by the virtio core (device-independent).
public enum VirtioFeature {
    public static let indirectDescriptors: UInt64 = 1 << 28   // VIRTIO_F_INDIRECT_DESC
    public static let eventIndex: UInt64 = 1 << 29            // VIRTIO_F_EVENT_IDX
    public static let version1: UInt64 = 1 << 32              // VIRTIO_F_VERSION_1
    public static let accessPlatform: UInt64 = 1 << 33        // VIRTIO_F_ACCESS_PLATFORM (never offered)
    public static let ringPacked: UInt64 = 1 << 34
    /// What the transport always offers on top of a device's own features.
    public static let transportOffered: UInt64 = version1 | eventIndex | indirectDescriptors
}

/// The device status register bits (virtio 1.2 section 2.1).
public enum VirtioStatus {
    public static let acknowledge: UInt8 = 1
    public static let driver: UInt8 = 2
    public static let driverOK: UInt8 = 4
    public static let featuresOK: UInt8 = 8
    public static let needsReset: UInt8 = 0x40
    public static let failed: UInt8 = 0x80
}

/// "No MSI-X vector" in msix_config / queue_msix_vector.
public let virtioNoVector: UInt16 = 0xFFFF
