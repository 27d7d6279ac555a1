import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The MC146818-style CMOS real-time clock and NVRAM at ports 0x70 (index) / 0x71 (data).
///
/// Port 0x70: bits 6:0 select one of 128 registers, bit 7 is the NMI-disable bit (kept, readable
/// via `nmiDisabled`). Registers: seconds/minutes/hours/day-of-week/day/month/year (0x00-0x09)
/// and century (0x32), in BCD or binary and 24h or 12h per status B; alarms (0x01/0x03/0x05)
/// stored; status A (UIP always clear, divider 0x26), B (default 24h + BCD, writable, SET bit
/// freezes the clock while the guest writes a new time), C (no interrupt sources, reads 0), D
/// (valid RAM/time 0x80). The rest is NVRAM, with the PC's memory-size bytes filled by
/// `setMemorySize(belowFourGiB:aboveFourGiB:)`.
///
/// Time comes from the host's `CLOCK_REALTIME` plus an offset the guest sets by writing the
/// clock (hwclock --systohc); no periodic/alarm/update interrupts are generated (Linux does not
/// need them: it reads the RTC once at boot).
///
/// Concurrency: one `Mutex` (vCPU threads only).
public final class CMOSRTC: BusDevice {
    public typealias Clock = @Sendable () -> Int64

    struct State {
        var index: UInt8 = 0
        var nmiDisabled = false
        var ram = [UInt8](repeating: 0, count: 128)
        var offsetSeconds: Int64 = 0
        /// While status B's SET bit is on, the clock fields read back what the guest wrote.
        var frozen: Int64? = nil
    }

    let state = Mutex(State())
    private let clock: Clock

    /// `clock` returns seconds since the Unix epoch (UTC); the default is the host's realtime clock.
    public init(clock: @escaping Clock = CMOSRTC.hostRealtime) {
        self.clock = clock
        state.withLock { s in
            s.ram[0x0A] = 0x26
            s.ram[0x0B] = 0x02
            s.ram[0x0D] = 0x80
        }
    }

    public static let hostRealtime: Clock = {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec)
    }

    public var nmiDisabled: Bool { state.withLock { $0.nmiDisabled } }

    /// Fills the memory-size NVRAM bytes the way PC firmware does: 0x15/0x16 base memory (640 KiB),
    /// 0x17/0x18 and 0x30/0x31 KiB above 1 MiB (capped at 0xFFFF), 0x34/0x35 64 KiB units above
    /// 16 MiB (below 4 GiB), 0x5B-0x5D 64 KiB units above 4 GiB.
    public func setMemorySize(belowFourGiB: UInt64, aboveFourGiB: UInt64) {
        state.withLock { s in
            s.ram[0x15] = 0x80; s.ram[0x16] = 0x02
            let extKiB = min(belowFourGiB > 0x10_0000 ? (belowFourGiB - 0x10_0000) / 1024 : 0, 0xFFFF)
            s.ram[0x17] = UInt8(truncatingIfNeeded: extKiB); s.ram[0x18] = UInt8(truncatingIfNeeded: extKiB >> 8)
            s.ram[0x30] = s.ram[0x17]; s.ram[0x31] = s.ram[0x18]
            let above16 = min(belowFourGiB > 0x100_0000 ? (belowFourGiB - 0x100_0000) >> 16 : 0, 0xFFFF)
            s.ram[0x34] = UInt8(truncatingIfNeeded: above16); s.ram[0x35] = UInt8(truncatingIfNeeded: above16 >> 8)
            let high = min(aboveFourGiB >> 16, 0xFF_FFFF)
            s.ram[0x5B] = UInt8(truncatingIfNeeded: high)
            s.ram[0x5C] = UInt8(truncatingIfNeeded: high >> 8)
            s.ram[0x5D] = UInt8(truncatingIfNeeded: high >> 16)
        }
    }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        guard !data.isEmpty else { return }
        let now = clock()
        let v: UInt8 = state.withLock { s in
            switch offset {
            case 0: return s.index | (s.nmiDisabled ? 0x80 : 0)
            case 1: return Self.readRegister(&s, now: now)
            default: return 0xFF
            }
        }
        data[0] = v
        for i in 1..<data.count { data[i] = 0xFF }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard let v = data.first else { return }
        let now = clock()
        state.withLock { s in
            switch offset {
            case 0:
                s.index = v & 0x7F
                s.nmiDisabled = v & 0x80 != 0
            case 1:
                Self.writeRegister(&s, v, now: now)
            default:
                break
            }
        }
    }

    // MARK: Registers

    private static let timeRegisters: Set<UInt8> = [0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32]

    private static func readRegister(_ s: inout State, now: Int64) -> UInt8 {
        let r = s.index
        switch r {
        case 0x0A: return s.ram[0x0A] & 0x7F          // UIP never set: reads are always consistent
        case 0x0C: let v = s.ram[0x0C]; s.ram[0x0C] = 0; return v
        case 0x0D: return 0x80
        default: break
        }
        guard timeRegisters.contains(r) else { return s.ram[Int(r)] }
        let t = s.frozen ?? (now &+ s.offsetSeconds)
        let c = CivilTime(unixSeconds: t)
        let b = s.ram[0x0B]
        let binary = b & 0x04 != 0
        func enc(_ v: Int) -> UInt8 { binary ? UInt8(truncatingIfNeeded: v) : toBCD(v) }
        switch r {
        case 0x00: return enc(c.second)
        case 0x02: return enc(c.minute)
        case 0x04:
            if b & 0x02 != 0 { return enc(c.hour) }
            let h12 = c.hour % 12 == 0 ? 12 : c.hour % 12
            return enc(h12) | (c.hour >= 12 ? 0x80 : 0)
        case 0x06: return enc(c.weekday + 1)
        case 0x07: return enc(c.day)
        case 0x08: return enc(c.month)
        case 0x09: return enc(c.year % 100)
        case 0x32: return enc(c.year / 100)
        default: return 0
        }
    }

    private static func writeRegister(_ s: inout State, _ v: UInt8, now: Int64) {
        let r = s.index
        switch r {
        case 0x0A:
            s.ram[0x0A] = v & 0x7F
        case 0x0B:
            let wasSet = s.ram[0x0B] & 0x80 != 0
            let isSet = v & 0x80 != 0
            if !wasSet && isSet { s.frozen = now &+ s.offsetSeconds }
            s.ram[0x0B] = v
            if wasSet && !isSet, let t = s.frozen {
                s.offsetSeconds = t &- now
                s.frozen = nil
            }
        case 0x0C, 0x0D:
            break   // read-only
        default:
            guard timeRegisters.contains(r) else { s.ram[Int(r)] = v; return }
            // Writing a clock field: apply it to the (frozen, or current) time.
            let base = s.frozen ?? (now &+ s.offsetSeconds)
            var c = CivilTime(unixSeconds: base)
            let binary = s.ram[0x0B] & 0x04 != 0
            var value = binary ? Int(v & 0x7F) : fromBCD(v & 0x7F)
            switch r {
            case 0x00: c.second = min(value, 59)
            case 0x02: c.minute = min(value, 59)
            case 0x04:
                if s.ram[0x0B] & 0x02 == 0 {
                    value %= 12
                    if v & 0x80 != 0 { value += 12 }
                }
                c.hour = min(value, 23)
            case 0x06: return
            case 0x07: c.day = max(1, min(value, 31))
            case 0x08: c.month = max(1, min(value, 12))
            case 0x09: c.year = c.year / 100 * 100 + min(value, 99)
            case 0x32: c.year = min(value, 99) * 100 + c.year % 100
            default: return
            }
            let t = c.unixSeconds
            if s.frozen != nil { s.frozen = t } else { s.offsetSeconds = t &- now }
        }
    }

    static func toBCD(_ v: Int) -> UInt8 {
        let x = ((v % 100) + 100) % 100
        return UInt8(((x / 10) << 4) | (x % 10))
    }

    static func fromBCD(_ v: UInt8) -> Int { Int(v >> 4) * 10 + Int(v & 0x0F) }
}
