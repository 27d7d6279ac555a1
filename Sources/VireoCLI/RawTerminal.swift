#if canImport(Glibc)
import Glibc
#endif

/// Puts the terminal on stdin into raw mode (no echo, no line editing, no signal keys, no
/// output processing) and restores it: on `restore()`, on process exit (atexit covers
/// ArgumentParser's `exit`), and on SIGTERM/SIGHUP/SIGQUIT arriving while raw (the handler
/// restores, then re-raises with the default action). One at a time per process.
final class RawTerminal {
    nonisolated(unsafe) private static var saved = termios()
    nonisolated(unsafe) private static var active = false
    nonisolated(unsafe) private static var atexitInstalled = false

    /// nil when stdin is not a terminal (or its mode cannot be read).
    static func enter() -> RawTerminal? {
        guard isatty(0) == 1, !active else { return nil }
        var t = termios()
        guard tcgetattr(0, &t) == 0 else { return nil }
        saved = t
        cfmakeraw(&t)
        guard tcsetattr(0, TCSANOW, &t) == 0 else { return nil }   // (not TCSAFLUSH: keep type-ahead)
        active = true
        if !atexitInstalled {
            atexitInstalled = true
            atexit { RawTerminal.restoreNow() }
        }
        for s in [SIGTERM, SIGHUP, SIGQUIT] {
            signal(s) { signo in
                // Async-signal-safe: tcsetattr, signal, raise.
                RawTerminal.restoreNow()
                signal(signo, SIG_DFL)
                raise(signo)
            }
        }
        return RawTerminal()
    }

    private init() {}

    func restore() { Self.restoreNow() }

    deinit { Self.restoreNow() }

    private static func restoreNow() {
        guard active else { return }
        active = false
        _ = tcsetattr(0, TCSADRAIN, &saved)
    }
}
