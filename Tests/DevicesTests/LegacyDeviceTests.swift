import Devices
import Testing
import VireoTestSupport

@Suite struct I8042Tests {
    @Test func selfTestAndReset() throws {
        let resets = Counter()
        let kbc = I8042(resetRequested: { resets.bump() })
        let bus = PortIOBus()
        try bus.register(kbc, port: 0x60, count: 1, name: "i8042 data")
        try bus.register(kbc, port: 0x64, count: 1, origin: 0x60, name: "i8042 command")
        #expect(bus.read(port: 0x64, width: 1) & 0x01 == 0)   // output buffer empty
        #expect(bus.read(port: 0x64, width: 1) & 0x10 != 0)   // keyboard not inhibited (no keylock)
        bus.write(port: 0x64, width: 1, value: 0xAA)
        #expect(bus.read(port: 0x64, width: 1) & 0x01 == 1)
        #expect(bus.read(port: 0x60, width: 1) == 0x55)
        #expect(bus.read(port: 0x64, width: 1) & 0x01 == 0)
        // Command byte round trip (Linux's i8042_command(CTR) read/write).
        bus.write(port: 0x64, width: 1, value: 0x60)
        bus.write(port: 0x60, width: 1, value: 0x47)
        bus.write(port: 0x64, width: 1, value: 0x20)
        #expect(bus.read(port: 0x60, width: 1) == 0x47)
        bus.write(port: 0x64, width: 1, value: 0xAB)
        #expect(bus.read(port: 0x60, width: 1) == 0x00)
        #expect(resets.value == 0)
        bus.write(port: 0x64, width: 1, value: 0xFE)
        #expect(resets.value == 1)
        #expect(kbc.resetCount == 1)
    }

    @Test func outputQueueIsBounded() {
        let kbc = I8042(resetRequested: {})
        for _ in 0..<1000 { [UInt8(0xAA)].withUnsafeBytes { kbc.write(offset: 4, data: $0) } }
        var n = 0
        var b: [UInt8] = [0]
        while true {
            b.withUnsafeMutableBytes { kbc.read(offset: 4, data: $0) }
            guard b[0] & 1 != 0, n < 1000 else { break }
            b.withUnsafeMutableBytes { kbc.read(offset: 0, data: $0) }
            n += 1
        }
        #expect(n == 16)
    }
}

@Suite struct CMOSRTCTests {
    // 2024-02-29 13:45:07 UTC, a Thursday.
    static let t: Int64 = 1_709_214_307

    func reg(_ rtc: CMOSRTC, _ bus: PortIOBus, _ r: UInt8) -> UInt8 {
        bus.write(port: 0x70, width: 1, value: UInt64(r))
        return UInt8(truncatingIfNeeded: bus.read(port: 0x71, width: 1))
    }

    func setup(_ clock: @escaping CMOSRTC.Clock = { CMOSRTCTests.t }) throws -> (CMOSRTC, PortIOBus) {
        let rtc = CMOSRTC(clock: clock)
        let bus = PortIOBus()
        try bus.register(rtc, port: 0x70, count: 2, name: "rtc")
        return (rtc, bus)
    }

    @Test func bcdTimeAndStatusRegisters() throws {
        let (rtc, bus) = try setup()
        #expect(reg(rtc, bus, 0x00) == 0x07)
        #expect(reg(rtc, bus, 0x02) == 0x45)
        #expect(reg(rtc, bus, 0x04) == 0x13)
        #expect(reg(rtc, bus, 0x06) == 0x05)   // Thursday = 5 (Sunday = 1)
        #expect(reg(rtc, bus, 0x07) == 0x29)
        #expect(reg(rtc, bus, 0x08) == 0x02)
        #expect(reg(rtc, bus, 0x09) == 0x24)
        #expect(reg(rtc, bus, 0x32) == 0x20)
        #expect(reg(rtc, bus, 0x0A) & 0x80 == 0)  // UIP clear
        #expect(reg(rtc, bus, 0x0B) == 0x02)      // 24h, BCD
        #expect(reg(rtc, bus, 0x0D) == 0x80)
        #expect(reg(rtc, bus, 0x0C) == 0x00)
    }

    @Test func binaryAnd12HourModes() throws {
        let (rtc, bus) = try setup()
        bus.write(port: 0x70, width: 1, value: 0x0B)
        bus.write(port: 0x71, width: 1, value: 0x04)   // binary, 12h
        #expect(reg(rtc, bus, 0x00) == 7)
        #expect(reg(rtc, bus, 0x04) == 0x80 | 1)      // 1 PM
        #expect(reg(rtc, bus, 0x09) == 24)
    }

    @Test func nmiBitAndNVRAM() throws {
        let (rtc, bus) = try setup()
        bus.write(port: 0x70, width: 1, value: 0x80 | 0x40)
        #expect(rtc.nmiDisabled)
        bus.write(port: 0x71, width: 1, value: 0xA5)
        #expect(reg(rtc, bus, 0x40) == 0xA5)
        #expect(!rtc.nmiDisabled)
        rtc.setMemorySize(belowFourGiB: 3 << 30, aboveFourGiB: 1 << 30)
        let above16 = UInt64(reg(rtc, bus, 0x34)) | UInt64(reg(rtc, bus, 0x35)) << 8
        #expect(above16 == ((3 << 30) - (16 << 20)) >> 16)
        let high = UInt64(reg(rtc, bus, 0x5B)) | UInt64(reg(rtc, bus, 0x5C)) << 8 | UInt64(reg(rtc, bus, 0x5D)) << 16
        #expect(high == (1 << 30) >> 16)
    }

    @Test func guestSetsTheClockWithTheSETBit() throws {
        let now = Mutex64(CMOSRTCTests.t)
        let (rtc, bus) = try setup({ now.value })
        func w(_ r: UInt8, _ v: UInt8) { bus.write(port: 0x70, width: 1, value: UInt64(r)); bus.write(port: 0x71, width: 1, value: UInt64(v)) }
        w(0x0B, 0x82)          // SET
        w(0x04, 0x08)          // 08:xx
        w(0x09, 0x30)          // 2030
        w(0x0B, 0x02)
        now.value += 10
        #expect(reg(rtc, bus, 0x04) == 0x08)
        #expect(reg(rtc, bus, 0x09) == 0x30)
        #expect(reg(rtc, bus, 0x00) == 0x17)   // 7 + 10 seconds later
    }

    @Test func civilTimeRoundTrips() {
        var rng = SplitMix(seed: 42)
        for _ in 0..<2000 {
            let t = Int64(bitPattern: rng.next() % 20_000_000_000) - 5_000_000_000
            #expect(CivilTime(unixSeconds: t).unixSeconds == t)
        }
        #expect(CivilTime(unixSeconds: 0) == CivilTime(year: 1970, month: 1, day: 1))
        _ = CivilTime(unixSeconds: .max)   // never traps
        _ = CivilTime(unixSeconds: .min)
    }
}

final class Mutex64: @unchecked Sendable {
    // Test-only: accessed from one thread.
    var value: Int64
    init(_ v: Int64) { value = v }
}

