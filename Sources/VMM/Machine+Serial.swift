import Devices
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// An interrupt line connected to nothing (the probe guest has no interrupt controller).
final class UnwiredInterruptLine: InterruptLine, Sendable {
    func set(level: Bool) {}
}

extension Machine {
    /// COM1 at 0x3F8 on `platform`: output to `config.serial` and the console socket's
    /// clients, input from stdin (serial stdio) and the console socket's clients.
    @discardableResult
    func setUpSerial(on platform: PlatformDevices, interrupt: any InterruptLine) throws -> Serial16550 {
        let log = try consoleOutput()
        var output = log
        let server = try config.consoleSocket.map { try ConsoleServer(path: $0, stop: stop) }
        if let server {
            resources.append(server)
            output = { bytes in log(bytes); server.broadcast(bytes) }
        }
        let serial = Serial16550(interrupt: interrupt, output: output)
        try platform.ports.register(serial, port: 0x3F8, count: 8, name: "COM1")
        try server?.start(input: serial)
        if config.serial == .stdio {
            consoleInput = { bytes in _ = serial.enqueueInput(bytes) }
        }
        return serial
    }

    /// Where the guest's serial output goes.
    private func consoleOutput() throws -> Serial16550.OutputSink {
        switch config.serial {
        case .stdio:
            return { bytes in _ = write(1, bytes.baseAddress, bytes.count) }
        case .none:
            return { _ in }
        case let .file(path):
            let fd = try OwnedFD.open(path, flags: O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, purpose: "write the serial log to")
            resources.append(fd)
            let raw = fd.rawValue
            return { bytes in _ = write(raw, bytes.baseAddress, bytes.count) }
        }
    }
}
