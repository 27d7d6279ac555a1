import Devices
import Testing

@Suite struct Serial16550Tests {
    let line = RecordingLine()
    let out = ByteSink()
    let bus = PortIOBus()
    let uart: Serial16550

    init() throws {
        uart = Serial16550(interrupt: line, inputCapacity: 32, output: out.sink)
        try bus.register(uart, port: 0x3F8, count: 8, name: "com1")
    }

    func inb(_ off: UInt16) -> UInt8 { UInt8(truncatingIfNeeded: bus.read(port: 0x3F8 + off, width: 1)) }
    func outb(_ off: UInt16, _ v: UInt8) { bus.write(port: 0x3F8 + off, width: 1, value: UInt64(v)) }

    /// The sequence of Linux's 8250 `autoconfig()` / `autoconfig_16550a()` and the startup THRE test.
    @Test func linuxAutoconfigDetects16550A() {
        // IER probe: all-zero then low nibble must read back.
        let saved = inb(1)
        outb(1, 0); #expect(inb(1) & 0x0F == 0)
        outb(1, 0x0F); #expect(inb(1) & 0x0F == 0x0F)
        outb(1, saved)
        // Loopback check: MCR = LOOP | RTS | OUT2 must give MSR high nibble CTS | DCD.
        let saveMCR = inb(4), saveLCR = inb(3)
        outb(4, 0x10 | 0x0A)
        #expect(inb(6) & 0xF0 == 0x90)
        outb(4, saveMCR)
        // EFR probe (LCR = 0xBF, write 0 at offset 2), then FIFO enable and IIR bits 7:6 == 3.
        outb(3, 0xBF); outb(2, 0); outb(3, 0)
        outb(2, 0x01)
        #expect(inb(2) >> 6 == 3)
        // 16550A variants: with DLAB set, "EFR" (IIR) must not read 0 (that would be a ST16C650V1).
        outb(3, 0x80); #expect(inb(2) != 0)
        outb(3, 0xBF); #expect(inb(2) != 0)
        outb(3, 0)
        // XScale UUE bit must not stick in IER.
        outb(1, 0x40); #expect(inb(1) & 0x40 == 0); outb(1, 0)
        // 16750 test: 64-byte FIFO bit (IIR bit 5) must not appear in either DLAB state.
        outb(2, 0x21); let s1 = inb(2) >> 5; outb(2, 0x01)
        outb(3, 0x80); outb(2, 0x21); let s2 = inb(2) >> 5; outb(2, 0x01); outb(3, 0)
        #expect(!(s1 == 6 && s2 == 7))
        #expect(s1 == 6)
        outb(3, saveLCR)
        // Scratch register.
        outb(7, 0x5A); #expect(inb(7) == 0x5A)
        // serial8250_do_startup's THRE test: enabling THRI with THR empty must raise THRE in IIR.
        outb(1, 0x02)
        #expect(inb(2) & 0x0F == 0x02)
        outb(1, 0); outb(1, 0x02)
        #expect(inb(2) & 0x0F == 0x02)
        #expect(inb(5) & 0x60 == 0x60)
    }

    @Test func divisorLatchIsBehindDLAB() {
        outb(1, 0x05)                 // IER
        outb(3, 0x83)                 // DLAB + 8N1
        outb(0, 0x01); outb(1, 0x00)  // 115200 baud
        #expect(inb(0) == 0x01 && inb(1) == 0x00)
        outb(3, 0x03)
        #expect(inb(1) == 0x05)       // IER untouched by the divisor write
        #expect(out.bytes.isEmpty)    // the DLL write was not transmitted
        outb(3, 0x83); #expect(inb(0) == 0x01); outb(3, 0x03)
    }

    @Test func transmitGoesToTheSink() {
        for c in "hi\n".utf8 { outb(0, c) }
        #expect(out.bytes == Array("hi\n".utf8))
        #expect(inb(5) & 0x60 == 0x60)
    }

    @Test func receiveRaisesAndClearsTheInterrupt() {
        outb(1, 0x01)   // RDA interrupt
        #expect(!line.level)
        #expect(inb(2) & 0x01 == 0x01)  // nothing pending
        #expect(uart.enqueueInput([0x41, 0x42]) == 2)
        #expect(line.level)
        #expect(inb(2) & 0x0F == 0x04)
        #expect(inb(5) & 0x01 == 0x01)
        #expect(inb(0) == 0x41)
        #expect(line.level)
        #expect(inb(0) == 0x42)
        #expect(!line.level)
        #expect(inb(5) & 0x01 == 0)
        #expect(line.history == [true, false])
    }

    @Test func thrEmptyInterruptIsAcknowledgedByReadingIIR() {
        outb(1, 0x02)
        #expect(line.level)
        #expect(inb(2) & 0x0F == 0x02)   // acknowledges
        #expect(!line.level)
        outb(0, 0x55)                    // a write empties instantly and re-raises
        #expect(line.level)
        outb(1, 0)
        #expect(!line.level)
    }

    @Test func rdaHasPriorityOverThre() {
        outb(1, 0x03)
        uart.enqueueInput([1])
        #expect(inb(2) & 0x0F == 0x04)
        _ = inb(0)
        #expect(inb(2) & 0x0F == 0x02)
    }

    @Test func inputBufferIsBounded() {
        let accepted = uart.enqueueInput([UInt8](repeating: 7, count: 100))
        #expect(accepted == 32)
        #expect(uart.pendingInput == 32)
        #expect(uart.droppedInput == 68)
        var n = 0
        while inb(5) & 0x01 != 0 { _ = inb(0); n += 1; if n > 1000 { break } }
        #expect(n == 32)
        #expect(uart.enqueueInput([1, 2, 3]) == 3)
    }

    @Test func loopbackEchoesTransmitAndModemLines() {
        outb(4, 0x10)                 // loopback, all outputs low
        _ = inb(6)
        outb(4, 0x10 | 0x01 | 0x04)   // DTR + OUT1 -> DSR + RI
        let msr = inb(6)
        #expect(msr & 0xF0 == 0x20 | 0x40)
        #expect(msr & 0x02 != 0)      // delta DSR
        #expect(inb(6) & 0x0F == 0)   // deltas clear on read
        outb(0, 0x99)
        #expect(out.bytes.isEmpty)
        #expect(inb(5) & 0x01 == 1)
        #expect(inb(0) == 0x99)
        outb(4, 0x0B)
        #expect(inb(6) & 0xF0 == 0xB0)  // back to a connected terminal
    }

    @Test func fifoResetDropsInput() {
        outb(2, 0x01)
        uart.enqueueInput([1, 2, 3])
        outb(2, 0x03)
        #expect(inb(5) & 0x01 == 0)
    }

    @Test func concurrentInputAndRegisterAccessDoNotLoseBytes() async {
        let total = 5000
        let uart = Serial16550(interrupt: line, inputCapacity: 64, output: { _ in })
        async let producer: Void = {
            var sent = 0
            while sent < total {
                sent += uart.enqueueInput([UInt8(truncatingIfNeeded: sent)])
            }
        }()
        var received: [UInt8] = []
        var buf: [UInt8] = [0]
        while received.count < total {
            buf.withUnsafeMutableBytes { uart.read(offset: 5, data: $0) }
            if buf[0] & 1 != 0 {
                buf.withUnsafeMutableBytes { uart.read(offset: 0, data: $0) }
                received.append(buf[0])
            } else {
                await Task.yield()
            }
        }
        await producer
        #expect(received == (0..<total).map { UInt8(truncatingIfNeeded: $0) })
    }
}
