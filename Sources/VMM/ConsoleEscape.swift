/// QEMU-style escapes on an interactive `vireo run` console (stdin is a terminal in raw mode):
/// Ctrl-A x quits, Ctrl-A Ctrl-A sends one Ctrl-A, Ctrl-A h prints the keys; Ctrl-A followed
/// by anything else sends both bytes. Every other byte (Ctrl-C included) goes to the guest.
public struct ConsoleEscape: Sendable {
    public static let escapeByte: UInt8 = 0x01   // Ctrl-A

    public enum Action: Equatable, Sendable { case quit, help }

    private var armed = false

    public init() {}

    /// Feeds bytes read from the terminal: returns what goes to the guest and any action.
    /// (Bytes after a quit are dropped; a help request does not stop the rest being processed.)
    public mutating func feed(_ bytes: some Sequence<UInt8>) -> (guest: [UInt8], action: Action?) {
        var out: [UInt8] = []
        var action: Action?
        for b in bytes {
            if armed {
                armed = false
                switch b {
                case UInt8(ascii: "x"), UInt8(ascii: "X"): return (out, .quit)
                case UInt8(ascii: "h"), UInt8(ascii: "H"), UInt8(ascii: "?"): action = .help
                case Self.escapeByte: out.append(b)
                default: out += [Self.escapeByte, b]
                }
            } else if b == Self.escapeByte {
                armed = true
            } else {
                out.append(b)
            }
        }
        return (out, action)
    }

    public static let helpText = "\r\nvireo console: C-a x  quit (exit 130)    C-a C-a  send C-a    C-a h  this help\r\n"
}
