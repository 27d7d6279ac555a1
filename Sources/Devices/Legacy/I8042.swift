import Synchronization

/// A minimal i8042 keyboard controller: data port 0x60, status/command port 0x64, no keyboard
/// and no auxiliary device attached.
///
/// It answers what Linux's i8042 driver probes (controller self-test 0xAA -> 0x55, the command
/// byte 0x20/0x60, interface tests 0xAB/0xA9 -> 0x00, port enable/disable) so the probe finishes
/// quickly, and turns the "pulse reset line" command 0xFE (what `reboot` uses on a PC) into a call
/// to `resetRequested`.
///
/// Register it with origin 0x60 on both ports: `bus.register(i8042, port: 0x60, count: 1, name:)`
/// and `bus.register(i8042, port: 0x64, count: 1, origin: 0x60, name:)`, so offsets are 0 and 4.
///
/// Concurrency: state behind a `Mutex`; `resetRequested` is called after the lock is released,
/// on the vCPU thread that wrote the command (the VMM should only flag the reset there).
public final class I8042: BusDevice {
    public enum Status { public static let outputFull: UInt8 = 0x01, inputFull: UInt8 = 0x02, system: UInt8 = 0x04, command: UInt8 = 0x08, unlocked: UInt8 = 0x10, auxData: UInt8 = 0x20 }

    struct State {
        var output: [UInt8] = []        // bytes waiting on port 0x60
        var commandByte: UInt8 = 0x65   // keyboard IRQ on, system flag, translation
        var pendingCommand: UInt8? = nil
        var lastCommandWasData = false
        var resets: UInt64 = 0
    }

    let state = Mutex(State())
    private let resetRequested: @Sendable () -> Void
    private let irq1: (any InterruptLine)?

    /// `keyboardInterrupt` (IRQ 1) is optional: with no keyboard attached nothing ever needs it,
    /// but when given it is pulsed when a reply byte is queued and the command byte enables it.
    public init(keyboardInterrupt: (any InterruptLine)? = nil, resetRequested: @escaping @Sendable () -> Void) {
        self.resetRequested = resetRequested
        self.irq1 = keyboardInterrupt
    }

    /// How many times the guest asked for a reset.
    public var resetCount: UInt64 { state.withLock { $0.resets } }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        guard !data.isEmpty else { return }
        let v: UInt8 = state.withLock { s in
            switch offset {
            case 0:
                return s.output.isEmpty ? 0 : s.output.removeFirst()
            case 4:
                // Keyboard not inhibited (no keylock): Linux warns "Keylock active" otherwise.
                var st = Status.system | Status.unlocked
                if !s.output.isEmpty { st |= Status.outputFull }
                if !s.lastCommandWasData { st |= Status.command }
                return st
            default:
                return 0xFF
            }
        }
        data[0] = v
        for i in 1..<data.count { data[i] = 0xFF }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard let value = data.first else { return }
        let (reset, interrupt) = state.withLock { s -> (Bool, Bool) in
            let before = s.output.count
            var reset = false
            switch offset {
            case 0: Self.writeData(&s, value)
            case 4: reset = Self.writeCommand(&s, value)
            default: break
            }
            if reset { s.resets &+= 1 }
            if s.output.count > 16 { s.output.removeFirst(s.output.count - 16) }
            return (reset, s.output.count > before && s.commandByte & 0x01 != 0)
        }
        if interrupt { irq1?.pulse() }
        if reset { resetRequested() }
    }

    private static func writeCommand(_ s: inout State, _ cmd: UInt8) -> Bool {
        s.lastCommandWasData = false
        s.pendingCommand = nil
        switch cmd {
        case 0x20: s.output.append(s.commandByte)               // read command byte
        case 0x60, 0xD1, 0xD2, 0xD3, 0xD4: s.pendingCommand = cmd // next data byte is a parameter
        case 0xA7: s.commandByte |= 0x20                         // disable aux
        case 0xA8: s.commandByte &= ~0x20                        // enable aux
        case 0xA9: s.output.append(0x00)                         // aux interface test: OK
        case 0xAA: s.output.append(0x55)                         // controller self-test: passed
        case 0xAB: s.output.append(0x00)                         // keyboard interface test: OK
        case 0xAD: s.commandByte |= 0x10                         // disable keyboard
        case 0xAE: s.commandByte &= ~0x10                        // enable keyboard
        case 0xC0: s.output.append(0x00)                         // read input port
        case 0xD0: s.output.append(0x01)                         // read output port (A20 off, not in reset)
        case 0xFE: return true                                   // pulse reset line
        default:
            if cmd & 0xF0 == 0xF0, cmd & 0x01 == 0 { return true } // any pulse with bit 0 (reset) low
        }
        return false
    }

    private static func writeData(_ s: inout State, _ value: UInt8) {
        s.lastCommandWasData = true
        let pending = s.pendingCommand
        s.pendingCommand = nil
        switch pending {
        case 0x60: s.commandByte = value
        case 0xD1: break                          // write output port (A20 gate): ignored
        case 0xD2, 0xD3: s.output.append(value)   // echo as if from the keyboard/aux device
        case 0xD4: break                          // to aux device: nothing attached, no reply
        default:
            // A byte for the keyboard itself: there is none, so no ACK (Linux times out quietly).
            break
        }
    }
}
