/// A fixed-capacity FIFO of bytes (no allocation after init, never traps).
struct ByteRing: Sendable {
    private var storage: [UInt8]
    private var head = 0
    private(set) var count = 0

    init(capacity: Int) { storage = [UInt8](repeating: 0, count: max(0, capacity)) }

    var capacity: Int { storage.count }
    var isEmpty: Bool { count == 0 }

    mutating func push(_ b: UInt8) -> Bool {
        guard count < storage.count else { return false }
        var tail = head + count
        if tail >= storage.count { tail -= storage.count }
        storage[tail] = b
        count += 1
        return true
    }

    mutating func pop() -> UInt8? {
        guard count > 0 else { return nil }
        let b = storage[head]
        head += 1
        if head == storage.count { head = 0 }
        count -= 1
        return b
    }

    mutating func removeAll() { head = 0; count = 0 }
}
