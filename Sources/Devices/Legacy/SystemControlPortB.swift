import Synchronization

/// Port 0x61, "system control port B", for VMMs that do NOT let KVM handle it.
///
/// With `KVM_CREATE_PIT2` and `flags = KVM_PIT_SPEAKER_DUMMY`, KVM emulates port 0x61 in the
/// kernel (the speaker and PIT channel 2 gate/OUT2 that Linux's PIT/TSC calibration polls), and
/// this device must not be registered. Without that flag the port exits to user space; this device
/// then keeps the register's writable bits and toggles the refresh bit (4) on each read, and
/// reports OUT2 (bit 5) high, so a poll loop terminates (calibration then falls back to other clocks).
///
/// Concurrency: one `Mutex`.
public final class SystemControlPortB: BusDevice {
    private let state = Mutex<(value: UInt8, refresh: Bool)>((0, false))
    public init() {}

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        guard !data.isEmpty else { return }
        let v = state.withLock { s -> UInt8 in
            s.refresh.toggle()
            return (s.value & 0x0F) | (s.refresh ? 0x10 : 0) | 0x20
        }
        data[0] = v
        for i in 1..<data.count { data[i] = 0xFF }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard let v = data.first else { return }
        state.withLock { $0.value = v & 0x0F }
    }
}
