import Devices
import Synchronization
import Testing

/// The ACPI sleep registers and the power button behind the Generic Event Device.
@Suite struct ACPIPowerTests {
    final class Requests: Sendable {
        private let s = Mutex<[UInt8]>([])
        func add(_ t: UInt8) { s.withLock { $0.append(t) } }
        var types: [UInt8] { s.withLock { $0 } }
    }

    func write(_ d: ACPISleepControl, offset: UInt64, _ v: UInt8) {
        withUnsafeBytes(of: v) { d.write(offset: offset, data: $0) }
    }

    @Test func onlyASleepEnableWriteToTheControlRegisterRequestsSleep() {
        let r = Requests()
        let d = ACPISleepControl { r.add($0) }
        write(d, offset: 0, 5 << 2)                  // SLP_TYP without SLP_EN: nothing yet
        write(d, offset: 1, 0x80)                    // status: clear WAK_STS
        write(d, offset: 1, 0xFF)
        #expect(r.types.isEmpty)
        write(d, offset: 0, 0x20 | 5 << 2)           // SLP_EN | SLP_TYP=5: soft off
        #expect(r.types == [5])
        write(d, offset: 0, 0x20 | 5 << 2)           // a second vCPU racing: reported once
        #expect(r.types == [5])
    }

    @Test func theSleepTypeIsPassedOnAndStatusReadsZero() {
        let r = Requests()
        let d = ACPISleepControl { r.add($0) }
        write(d, offset: 0, 0x20 | 3 << 2 | 0x03)    // other bits ignored
        #expect(r.types == [3])
        var buf: [UInt8] = [0xAA, 0xAA]
        buf.withUnsafeMutableBytes { d.read(offset: 1, data: $0) }
        #expect(buf == [0, 0])
        // An empty access (cannot come from a vCPU, but must not trap) changes nothing.
        d.write(offset: 0, data: UnsafeRawBufferPointer(start: nil, count: 0))
        #expect(r.types == [3])
    }

    @Test func pressingThePowerButtonIsOneEdgePerPress() {
        let line = RecordingLine()
        let button = ACPIPowerButton(line: line)
        button.press()
        button.press()
        #expect(line.history == [true, false, true, false])
        #expect(!line.level)
        #expect(button.pressCount == 2)
    }
}
