import Devices
import Testing
import VireoSupport

@Suite struct BusTests {
    @Test func dispatchesWithOffsetAndWidth() throws {
        let bus = PortIOBus()
        let a = ProbeDevice(), b = ProbeDevice(fill: 0x10)
        try bus.register(a, port: 0x3F8, count: 8, name: "com1")
        try bus.register(b, port: 0x2F8, count: 8, name: "com2")
        bus.write(port: 0x3FB, width: 1, value: 0x83)
        bus.write(port: 0x2F8, width: 2, value: 0xBEEF)
        #expect(a.accesses == [.init(write: true, offset: 3, width: 1, value: 0x83)])
        #expect(b.accesses == [.init(write: true, offset: 0, width: 2, value: 0xBEEF)])
        #expect(bus.read(port: 0x3FC, width: 4) == 0xAE_AD_AC_AB)
        #expect(a.accesses.last == .init(write: false, offset: 4, width: 4, value: 0))
    }

    @Test func rejectsOverlapsButAllowsAdjacentRanges() throws {
        let bus = PortIOBus()
        try bus.register(ProbeDevice(), port: 0x70, count: 2, name: "rtc")
        try bus.register(ProbeDevice(), port: 0x72, count: 2, name: "next")   // adjacent: fine
        try bus.register(ProbeDevice(), port: 0x6E, count: 2, name: "before") // adjacent: fine
        for (p, c) in [(0x71, 1), (0x6F, 2), (0x60, 0x20), (0x73, 5)] as [(UInt16, UInt16)] {
            #expect(throws: VireoError.self) { try bus.register(ProbeDevice(), port: p, count: c, name: "clash") }
        }
        #expect(throws: VireoError.self) { try bus.register(ProbeDevice(), port: 0xFFFF, count: 2, name: "wraps") }
        #expect(throws: VireoError.self) { try bus.register(ProbeDevice(), port: 0x100, count: 0, name: "empty") }
        #expect(bus.core.entries.map(\.base) == [0x6E, 0x70, 0x72])
    }

    @Test func unknownPortsReadAllOnesAndAreCounted() throws {
        let bus = PortIOBus()
        let d = ProbeDevice()
        try bus.register(d, port: 0x80, count: 1, name: "post")
        #expect(bus.read(port: 0x81, width: 1) == 0xFF)
        #expect(bus.read(port: 0x1234, width: 4) == 0xFFFF_FFFF)
        bus.write(port: 0x1234, width: 2, value: 7)
        // A 2-byte access starting inside a 1-byte range but running past it is not decoded.
        #expect(bus.read(port: 0x80, width: 2) == 0xFFFF)
        #expect(d.accesses.isEmpty)
        let st = bus.statistics
        #expect(st.unhandledReads == 3 && st.unhandledWrites == 1 && st.lastUnhandledAddress == 0x80)
    }

    @Test func mmioBusSupportsEightByteAccessesAndUnregister() throws {
        let bus = MMIOBus()
        let d = ProbeDevice(fill: 1)
        try bus.register(d, address: 0xD000_0000, length: 0x1000, name: "bar")
        bus.write(address: 0xD000_0010, width: 8, value: 0x1122_3344_5566_7788)
        #expect(d.accesses == [.init(write: true, offset: 0x10, width: 8, value: 0x1122_3344_5566_7788)])
        #expect(bus.read(address: 0xD000_0FF8, width: 8) == 0x0807_0605_0403_0201)
        #expect(bus.read(address: 0xD000_0FFC, width: 8) == ~0)  // crosses the end of the range
        #expect(bus.unregister(address: 0xD000_0000))
        #expect(!bus.unregister(address: 0xD000_0000))
        #expect(bus.read(address: 0xD000_0010, width: 4) == 0xFFFF_FFFF)
        // Ranges reaching the top of the address space work (end wraps to 0).
        try bus.register(d, address: 0xFFFF_FFFF_FFFF_F000, length: 0x1000, name: "top")
        #expect(bus.read(address: 0xFFFF_FFFF_FFFF_FFF8, width: 8) == 0x0807_0605_0403_0201)
    }

    @Test func originLetsOneDeviceServeTwoRanges() throws {
        let bus = PortIOBus()
        let d = ProbeDevice()
        try bus.register(d, port: 0x60, count: 1, name: "i8042 data")
        try bus.register(d, port: 0x64, count: 1, origin: 0x60, name: "i8042 cmd")
        bus.write(port: 0x64, width: 1, value: 0xFE)
        bus.write(port: 0x60, width: 1, value: 0x01)
        #expect(d.accesses.map(\.offset) == [4, 0])
    }

    @Test func lookupScalesToManyRanges() throws {
        let bus = MMIOBus()
        let devices = (0..<200).map { _ in ProbeDevice() }
        for (i, d) in devices.enumerated().shuffled() {
            try bus.register(d, address: 0x1_0000 * UInt64(i + 1), length: 0x100, name: "d\(i)")
        }
        for i in stride(from: 0, to: 200, by: 7) {
            bus.write(address: 0x1_0000 * UInt64(i + 1) + 0x40, width: 4, value: UInt64(i))
            #expect(devices[i].accesses == [.init(write: true, offset: 0x40, width: 4, value: UInt64(i))])
        }
        #expect(bus.read(address: 0x1_0000 * 3 + 0x100, width: 4) == 0xFFFF_FFFF)
    }
}
