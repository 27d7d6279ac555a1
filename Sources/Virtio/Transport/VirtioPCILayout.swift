/// Where things live in a virtio-pci device's BAR 0 (one 64-bit, 32 KiB memory BAR).
public enum VirtioPCILayout {
    public static let bar = 0
    public static let barSize: UInt64 = 0x8000
    public static let commonOffset: UInt64 = 0x0000
    public static let commonLength: UInt64 = 0x40
    public static let isrOffset: UInt64 = 0x1000
    public static let isrLength: UInt64 = 0x4
    public static let deviceConfigOffset: UInt64 = 0x2000
    public static let deviceConfigMaxLength: UInt64 = 0x1000
    public static let notifyOffset: UInt64 = 0x3000
    /// queue_notify_off is the queue index; the doorbell of queue q is notifyOffset + 4 * q.
    public static let notifyOffMultiplier: UInt64 = 4
    public static let maxQueues = 0x1000 / 4
    public static let msixTableOffset: UInt64 = 0x4000
    public static let msixPBAOffset: UInt64 = 0x5000
    public static let maxVectors = 64

    /// virtio_pci_cap cfg_type values.
    public enum CapabilityType {
        public static let common: UInt8 = 1, notify: UInt8 = 2, isr: UInt8 = 3, device: UInt8 = 4, pciConfig: UInt8 = 5
    }

    /// Common configuration register offsets (virtio 1.2 section 4.1.4.3).
    public enum Common {
        public static let deviceFeatureSelect = 0x00, deviceFeature = 0x04
        public static let driverFeatureSelect = 0x08, driverFeature = 0x0C
        public static let msixConfig = 0x10, numQueues = 0x12, deviceStatus = 0x14, configGeneration = 0x15
        public static let queueSelect = 0x16, queueSize = 0x18, queueMSIXVector = 0x1A, queueEnable = 0x1C
        public static let queueNotifyOff = 0x1E, queueDesc = 0x20, queueDriver = 0x28, queueDevice = 0x30
        public static let queueNotifyData = 0x38, queueReset = 0x3A
    }
}
