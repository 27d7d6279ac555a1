import Synchronization

/// A National Semiconductor 16550A UART (8 registers at base..base+7; COM1 is 0x3F8, IRQ 4).
///
/// Emulated: RBR/THR, IER, IIR (with FIFO-enabled bits 7:6), FCR, LCR (DLAB and the divisor
/// latch DLL/DLM), MCR (including loopback, where THR bytes come back on RBR and the modem
/// outputs drive the modem-status inputs), LSR (DR, OE, THRE, TEMT), MSR (with delta bits), SCR.
/// Transmission is instantaneous: THR is always empty again after a write, so THRE/TEMT stay set.
/// Linux's 8250 driver autoconfigures it as a 16550A (scratch-free IER probe, loopback MSR
/// check, FCR -> IIR FIFO bits, no EFR/UUE/64-byte FIFO quirks).
///
/// Interrupts: the line is the OR of the enabled, pending conditions (receiver line status,
/// received data, THR empty, modem status) and is re-evaluated after every register access
/// and every `enqueueInput`, via `InterruptLine.set(level:)` on changes only.
///
/// Concurrency: all register state is behind one `Mutex`. vCPU threads call `read`/`write`;
/// any thread (the VMM's stdin reader) may call `enqueueInput`. The output sink and the interrupt
/// line are called after the lock is released, in the order the events happened per caller.
public final class Serial16550: BusDevice {
    public typealias OutputSink = @Sendable (UnsafeRawBufferPointer) -> Void

    /// Size of the host-side receive buffer behind RBR (bytes waiting for the guest).
    public let inputCapacity: Int
    let irq: any InterruptLine
    private let output: OutputSink
    let state: Mutex<State>

    public init(interrupt: any InterruptLine, inputCapacity: Int = 4096, output: @escaping OutputSink) {
        self.irq = interrupt
        self.output = output
        self.inputCapacity = max(1, inputCapacity)
        self.state = Mutex(State())
    }

    // MARK: Register bits

    public enum IER { public static let rda: UInt8 = 0x01, thre: UInt8 = 0x02, rls: UInt8 = 0x04, msi: UInt8 = 0x08 }
    public enum IIR { public static let noInterrupt: UInt8 = 0x01, msi: UInt8 = 0x00, thre: UInt8 = 0x02, rda: UInt8 = 0x04, rls: UInt8 = 0x06, fifoEnabled: UInt8 = 0xC0 }
    public enum LCR { public static let dlab: UInt8 = 0x80 }
    public enum MCR { public static let dtr: UInt8 = 0x01, rts: UInt8 = 0x02, out1: UInt8 = 0x04, out2: UInt8 = 0x08, loop: UInt8 = 0x10 }
    public enum LSR { public static let dr: UInt8 = 0x01, oe: UInt8 = 0x02, thre: UInt8 = 0x20, temt: UInt8 = 0x40 }
    public enum MSR { public static let dcts: UInt8 = 0x01, ddsr: UInt8 = 0x02, teri: UInt8 = 0x04, ddcd: UInt8 = 0x08, cts: UInt8 = 0x10, dsr: UInt8 = 0x20, ri: UInt8 = 0x40, dcd: UInt8 = 0x80 }

    struct State {
        var rx = ByteRing(capacity: 0)
        var ier: UInt8 = 0
        var lcr: UInt8 = 0x03        // 8N1
        var mcr: UInt8 = MCR.out2
        var lsrErrors: UInt8 = 0     // OE, cleared by reading LSR
        var msr: UInt8 = MSR.dcd | MSR.dsr | MSR.cts
        var scr: UInt8 = 0
        var dll: UInt8 = 0x0C        // 9600 baud
        var dlm: UInt8 = 0
        var fifoEnabled = false
        var thrInterruptPending = true
        var lineLevel = false
        var droppedInput: UInt64 = 0
    }

    /// Bytes the guest has not read yet.
    public var pendingInput: Int { state.withLock { $0.rx.count } }
    /// Input bytes refused because the buffer was full (or lost to overrun in loopback).
    public var droppedInput: UInt64 { state.withLock { $0.droppedInput } }

    /// Queues host input for the guest (the console's stdin). Returns how many bytes were accepted:
    /// the buffer is bounded by `inputCapacity`, so a caller with more data retries later.
    @discardableResult
    public func enqueueInput(_ bytes: some Collection<UInt8>) -> Int {
        let (accepted, level) = state.withLock { s -> (Int, Bool?) in
            if s.rx.capacity == 0 { s.rx = ByteRing(capacity: inputCapacity) }
            var n = 0
            for b in bytes {
                guard s.rx.push(b) else { break }
                n += 1
            }
            s.droppedInput &+= UInt64(bytes.count - n)
            return (n, Self.updateLevel(&s))
        }
        if let level { irq.set(level: level) }
        return accepted
    }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        guard !data.isEmpty else { return }
        let (value, level) = state.withLock { s -> (UInt8, Bool?) in
            let v = Self.readRegister(&s, offset)
            return (v, Self.updateLevel(&s))
        }
        data[0] = value
        for i in 1..<data.count { data[i] = 0 }
        if let level { irq.set(level: level) }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard let value = data.first else { return }
        let (tx, level) = state.withLock { s -> (UInt8?, Bool?) in
            let tx = Self.writeRegister(&s, offset, value, capacity: inputCapacity)
            return (tx, Self.updateLevel(&s))
        }
        if var tx {
            withUnsafeBytes(of: &tx) { output($0) }
        }
        if let level { irq.set(level: level) }
    }

    // MARK: Register model

    private static func readRegister(_ s: inout State, _ offset: UInt64) -> UInt8 {
        let dlab = s.lcr & LCR.dlab != 0
        switch offset {
        case 0:
            if dlab { return s.dll }
            return s.rx.pop() ?? 0
        case 1:
            return dlab ? s.dlm : s.ier
        case 2:
            let iir = interruptIdentification(s)
            if iir == IIR.thre { s.thrInterruptPending = false }   // reading IIR acknowledges THRE
            return iir | (s.fifoEnabled ? IIR.fifoEnabled : 0)
        case 3:
            return s.lcr
        case 4:
            return s.mcr
        case 5:
            var lsr = LSR.thre | LSR.temt | s.lsrErrors
            if !s.rx.isEmpty { lsr |= LSR.dr }
            s.lsrErrors = 0
            return lsr
        case 6:
            let v = s.msr
            s.msr &= 0xF0    // reading MSR clears the delta bits
            return v
        case 7:
            return s.scr
        default:
            return 0xFF
        }
    }

    /// Returns a byte to transmit to the host, if any.
    private static func writeRegister(_ s: inout State, _ offset: UInt64, _ value: UInt8, capacity: Int) -> UInt8? {
        let dlab = s.lcr & LCR.dlab != 0
        switch offset {
        case 0:
            if dlab { s.dll = value; return nil }
            // Transmission is instant: THR empties at once and THRE is raised again.
            s.thrInterruptPending = true
            if s.mcr & MCR.loop != 0 {
                if s.rx.capacity == 0 { s.rx = ByteRing(capacity: capacity) }
                if !s.rx.push(value) { s.lsrErrors |= LSR.oe; s.droppedInput &+= 1 }
                return nil
            }
            return value
        case 1:
            if dlab { s.dlm = value; return nil }
            let old = s.ier
            s.ier = value & 0x0F
            // Enabling the THRE interrupt while THR is empty raises it immediately.
            if old & IER.thre == 0 && s.ier & IER.thre != 0 { s.thrInterruptPending = true }
        case 2:
            // FCR: bit 0 enables the FIFOs; bits 1/2 clear them (RX clear drops queued input).
            let enable = value & 0x01 != 0
            if enable != s.fifoEnabled { s.rx.removeAll() }
            s.fifoEnabled = enable
            if value & 0x02 != 0 { s.rx.removeAll() }
        case 3:
            s.lcr = value
        case 4:
            let old = s.mcr
            s.mcr = value & 0x1F
            updateModemStatus(&s, oldMCR: old)
        case 5, 6:
            break   // LSR and MSR are read-only (factory test writes ignored)
        case 7:
            s.scr = value
        default:
            break
        }
        return nil
    }

    private static func updateModemStatus(_ s: inout State, oldMCR: UInt8) {
        let newInputs: UInt8
        if s.mcr & MCR.loop != 0 {
            var v: UInt8 = 0
            if s.mcr & MCR.rts != 0 { v |= MSR.cts }
            if s.mcr & MCR.dtr != 0 { v |= MSR.dsr }
            if s.mcr & MCR.out1 != 0 { v |= MSR.ri }
            if s.mcr & MCR.out2 != 0 { v |= MSR.dcd }
            newInputs = v
        } else {
            newInputs = MSR.dcd | MSR.dsr | MSR.cts   // a connected terminal
        }
        let old = s.msr & 0xF0
        var delta = s.msr & 0x0F
        let changed = old ^ newInputs
        if changed & MSR.cts != 0 { delta |= MSR.dcts }
        if changed & MSR.dsr != 0 { delta |= MSR.ddsr }
        if changed & MSR.dcd != 0 { delta |= MSR.ddcd }
        if old & MSR.ri != 0 && newInputs & MSR.ri == 0 { delta |= MSR.teri }   // trailing edge of RI
        s.msr = newInputs | delta
    }

    /// The highest-priority pending, enabled interrupt (IIR bits 3:0).
    private static func interruptIdentification(_ s: State) -> UInt8 {
        if s.ier & IER.rls != 0 && s.lsrErrors != 0 { return IIR.rls }
        if s.ier & IER.rda != 0 && !s.rx.isEmpty { return IIR.rda }
        if s.ier & IER.thre != 0 && s.thrInterruptPending { return IIR.thre }
        if s.ier & IER.msi != 0 && s.msr & 0x0F != 0 { return IIR.msi }
        return IIR.noInterrupt
    }

    /// Recomputes the line; returns the new level when it changed. (Real PC boards gate the
    /// UART's output with MCR.OUT2; like QEMU and Firecracker we do not, Linux sets OUT2 anyway.)
    private static func updateLevel(_ s: inout State) -> Bool? {
        let asserted = interruptIdentification(s) != IIR.noInterrupt
        guard asserted != s.lineLevel else { return nil }
        s.lineLevel = asserted
        return asserted
    }
}
