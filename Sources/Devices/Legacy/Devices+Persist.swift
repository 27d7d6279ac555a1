/// Saved state of the legacy devices, for snapshots: one Codable value per device, taken and
/// put back under the device's own lock. Restoring checks what the guest could not have
/// produced (sizes) and refuses it: a snapshot file is not trusted.

extension Serial16550 {
    public struct Saved: Codable, Sendable, Equatable {
        public var rx: [UInt8]
        public var ier, lcr, mcr, lsrErrors, msr, scr, dll, dlm: UInt8
        public var fifoEnabled, thrInterruptPending, lineLevel: Bool
    }

    public func save() -> Saved {
        state.withLock { s in
            var copy = s.rx
            var rx: [UInt8] = []
            while let b = copy.pop() { rx.append(b) }
            return Saved(rx: rx, ier: s.ier, lcr: s.lcr, mcr: s.mcr, lsrErrors: s.lsrErrors, msr: s.msr, scr: s.scr, dll: s.dll, dlm: s.dlm,
                         fifoEnabled: s.fifoEnabled, thrInterruptPending: s.thrInterruptPending, lineLevel: s.lineLevel)
        }
    }

    public func restore(_ v: Saved) throws(DeviceStateError) {
        guard v.rx.count <= inputCapacity else { throw DeviceStateError("serial: \(v.rx.count) bytes of input, more than its \(inputCapacity)-byte FIFO") }
        let level = state.withLock { s -> Bool in
            s.rx.removeAll()
            for b in v.rx { _ = s.rx.push(b) }
            s.ier = v.ier; s.lcr = v.lcr; s.mcr = v.mcr; s.lsrErrors = v.lsrErrors; s.msr = v.msr; s.scr = v.scr
            s.dll = v.dll; s.dlm = v.dlm; s.fifoEnabled = v.fifoEnabled; s.thrInterruptPending = v.thrInterruptPending
            s.lineLevel = v.lineLevel
            return v.lineLevel
        }
        // The interrupt controller's own state came back with the VM's; the line follows the device.
        irq.set(level: level)
    }
}

extension I8042 {
    public struct Saved: Codable, Sendable, Equatable {
        public var output: [UInt8]
        public var commandByte: UInt8
        public var pendingCommand: UInt8?
        public var lastCommandWasData: Bool
        public var resets: UInt64
    }

    public func save() -> Saved {
        state.withLock { Saved(output: $0.output, commandByte: $0.commandByte, pendingCommand: $0.pendingCommand,
                               lastCommandWasData: $0.lastCommandWasData, resets: $0.resets) }
    }

    public func restore(_ v: Saved) throws(DeviceStateError) {
        guard v.output.count <= 16 else { throw DeviceStateError("i8042: \(v.output.count) bytes waiting, more than it ever queues") }
        state.withLock { s in
            s.output = v.output; s.commandByte = v.commandByte; s.pendingCommand = v.pendingCommand
            s.lastCommandWasData = v.lastCommandWasData; s.resets = v.resets
        }
    }
}

extension CMOSRTC {
    public struct Saved: Codable, Sendable, Equatable {
        public var index: UInt8
        public var nmiDisabled: Bool
        public var ram: [UInt8]
        /// The guest's offset from the host's clock: the guest's wall clock moves on with real
        /// time across a save and restore, as a real machine's would.
        public var offsetSeconds: Int64
        public var frozen: Int64?
    }

    public func save() -> Saved {
        state.withLock { Saved(index: $0.index, nmiDisabled: $0.nmiDisabled, ram: $0.ram, offsetSeconds: $0.offsetSeconds, frozen: $0.frozen) }
    }

    public func restore(_ v: Saved) throws(DeviceStateError) {
        guard v.ram.count == 128, v.index < 128 else { throw DeviceStateError("RTC: \(v.ram.count) bytes of CMOS RAM (want 128), index \(v.index)") }
        state.withLock { s in
            s.index = v.index; s.nmiDisabled = v.nmiDisabled; s.ram = v.ram; s.offsetSeconds = v.offsetSeconds; s.frozen = v.frozen
        }
    }
}

/// A saved device state that cannot be put back (it names the device and what is wrong).
public struct DeviceStateError: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ s: String) { description = s }
}
