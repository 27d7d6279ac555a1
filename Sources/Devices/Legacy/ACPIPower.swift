import Synchronization

/// The hardware-reduced ACPI sleep registers (FADT SLEEP_CONTROL_REG / SLEEP_STATUS_REG), two
/// byte-wide ports: offset 0 is control, offset 1 is status.
///
/// Linux powers off by writing `SLP_EN (bit 5) | SLP_TYP << 2` to the control register, with
/// SLP_TYP from `\_S5_`. A write with SLP_EN set calls `sleepRequested(SLP_TYP)` once; the VMM
/// treats the soft-off type as "the guest powered off". Every other access is harmless: the
/// status register reads 0 (no wake event) and its write-1-to-clear bits have nothing to clear.
///
/// Concurrency: one atomic flag (a power-off is reported once even if several vCPUs race).
public final class ACPISleepControl: BusDevice {
    public static let sleepEnable: UInt8 = 1 << 5
    private let sleepRequested: @Sendable (UInt8) -> Void
    private let reported = Atomic<Bool>(false)

    public init(sleepRequested: @escaping @Sendable (UInt8) -> Void) {
        self.sleepRequested = sleepRequested
    }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        data.storeLittleEndian(0)
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard offset == 0, let v = data.first, v & Self.sleepEnable != 0 else { return }
        guard !reported.exchange(true, ordering: .sequentiallyConsistent) else { return }
        sleepRequested((v >> 2) & 0x7)
    }
}

/// The power button behind the Generic Event Device: `press()` pulses the GED's edge-triggered
/// interrupt, so the guest's `_EVT` method runs and notifies its PNP0C0C button — the ACPI
/// shutdown request that QEMU's `system_powerdown` and libvirt's `virsh shutdown` send.
public final class ACPIPowerButton: Sendable {
    private let line: any InterruptLine
    private let presses = Atomic<Int>(0)

    public init(line: any InterruptLine) { self.line = line }

    /// Times the button was pressed.
    public var pressCount: Int { presses.load(ordering: .relaxed) }

    public func press() {
        presses.add(1, ordering: .relaxed)
        line.pulse()
    }
}
