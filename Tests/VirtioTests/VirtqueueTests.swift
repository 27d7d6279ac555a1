import GuestMemory
import Testing
import Virtio
import VireoSupport

@Suite struct VirtqueueTests {
    typealias F = VirtqueueSplit.DescriptorFlags

    @Test func validChainReadableThenWritable() throws {
        let m = try makeMemory()
        var r = try DriverRing(memory: m, size: 8)
        let q = try r.makeQueue()
        #expect(try q.popAvailableChain() == nil)
        try r.setDescriptor(3, address: 0x8000, length: 16, flags: F.next, next: 5)
        try r.setDescriptor(5, address: 0x9000, length: 100, flags: F.next, next: 0)
        try r.setDescriptor(0, address: 0xA000, length: 1, flags: F.write)
        try r.publish(3)
        #expect(q.hasAvailable())
        let c = try #require(try q.popAvailableChain())
        #expect(c.head == 3)
        #expect(c.segments == [
            DescriptorSegment(address: 0x8000, length: 16, isWritable: false),
            DescriptorSegment(address: 0x9000, length: 100, isWritable: false),
            DescriptorSegment(address: 0xA000, length: 1, isWritable: true),
        ])
        #expect(c.readableLength == 116 && c.writableLength == 1)
        #expect(try q.popAvailableChain() == nil)
        q.addUsed(head: 3, length: 1)
        #expect(try r.usedIdx() == 1)
        #expect(try r.usedElement(0) == (3, 1))
    }

    @Test func chainCursorCrossesSegments() throws {
        let m = try makeMemory()
        var r = try DriverRing(memory: m, size: 4)
        try m.write(Array(0..<10) as [UInt8], at: 0x8000)
        try m.write(Array(10..<20) as [UInt8], at: 0x9000)
        try r.setDescriptor(0, address: 0x8000, length: 10, flags: F.next, next: 1)
        try r.setDescriptor(1, address: 0x9000, length: 10, flags: F.next, next: 2)
        try r.setDescriptor(2, address: 0xA000, length: 3, flags: F.write | F.next, next: 3)
        try r.setDescriptor(3, address: 0xB000, length: 3, flags: F.write)
        try r.publish(0)
        let c = try #require(try r.makeQueue().popAvailableChain())
        var rd = ChainCursor.reader(c, m)
        #expect(try rd.readBytes(4) == [0, 1, 2, 3])
        #expect(try rd.read(UInt64.self) == UInt64(littleEndian: 0x0B0A_0908_0706_0504))
        #expect(try rd.readBytes(8) == Array(12..<20))
        #expect(throws: VirtqueueError.self) { try rd.readBytes(1) }
        var wr = ChainCursor.writer(c, m)
        try wr.write([0xA, 0xB, 0xC, 0xD, 0xE])
        #expect(try m.readBytes(at: 0xA000, count: 3) == [0xA, 0xB, 0xC])
        #expect(try m.readBytes(at: 0xB000, count: 2) == [0xD, 0xE])
        #expect(throws: VirtqueueError.self) { try wr.write([1, 2]) }
        #expect(try m.readBytes(at: 0xB002, count: 1) == [0])   // nothing written past the check
    }

    @Test func indirectTableIsFlattened() throws {
        let m = try makeMemory()
        var r = try DriverRing(memory: m, size: 4)
        let table: UInt64 = 0x20000
        try DriverRing.writeDescriptor(m, at: table, address: 0x8000, length: 8, flags: F.next, next: 2)
        try DriverRing.writeDescriptor(m, at: table + 16, address: 0xDEAD_0000_0000, length: 8, flags: 0, next: 0) // unused entry
        try DriverRing.writeDescriptor(m, at: table + 32, address: 0x9000, length: 512, flags: F.write, next: 0)
        try r.setDescriptor(1, address: table, length: 48, flags: F.indirect)
        try r.publish(1)
        let c = try #require(try r.makeQueue().popAvailableChain())
        #expect(c.head == 1)
        #expect(c.segments == [DescriptorSegment(address: 0x8000, length: 8, isWritable: false),
                               DescriptorSegment(address: 0x9000, length: 512, isWritable: true)])
    }

    // MARK: Malformed chains: each must throw the specific error and never trap.

    func malformed(_ expected: VirtqueueError, indirect: Bool = true, _ setup: (inout DriverRing) throws -> Void) throws {
        let m = try makeMemory()
        var r = try DriverRing(memory: m, size: 8)
        try setup(&r)
        let q = try r.makeQueue(indirect: indirect)
        #expect(expectQueueError(expected) { _ = try q.popAvailableChain() }, "expected \(expected)")
        // The bad entry was not consumed and the used ring is untouched.
        #expect(q.nextAvailable == 0)
        #expect(try r.usedIdx() == 0)
    }

    @Test func headOutOfRange() throws {
        try malformed(.headOutOfRange(head: 8, size: 8)) { try $0.publish(8) }
    }

    @Test func nextOutOfRange() throws {
        try malformed(.nextOutOfRange(next: 200, tableSize: 8)) { r in
            try r.setDescriptor(0, address: 0x8000, length: 4, flags: F.next, next: 200)
            try r.publish(0)
        }
    }

    @Test func loopIsDetected() throws {
        try malformed(.chainTooLong(limit: 8)) { r in
            try r.setDescriptor(0, address: 0x8000, length: 4, flags: F.next, next: 1)
            try r.setDescriptor(1, address: 0x8000, length: 4, flags: F.next, next: 0)
            try r.publish(0)
        }
        try malformed(.chainTooLong(limit: 8)) { r in
            try r.setDescriptor(2, address: 0x8000, length: 4, flags: F.next, next: 2)   // self loop
            try r.publish(2)
        }
    }

    @Test func bufferOutsideGuestMemory() throws {
        try malformed(.bufferOutsideMemory(address: 0x10_0000, length: 1)) { r in   // first byte past region 0
            try r.setDescriptor(0, address: 0x10_0000, length: 1)
            try r.publish(0)
        }
        try malformed(.bufferOutsideMemory(address: 0xFFFF0, length: 0x20)) { r in  // straddles the end
            try r.setDescriptor(0, address: 0xFFFF0, length: 0x20)
            try r.publish(0)
        }
        try malformed(.bufferOutsideMemory(address: 0xFFFF_FFFF_FFFF_FFF0, length: 0x100)) { r in  // wraps 2^64
            try r.setDescriptor(0, address: 0xFFFF_FFFF_FFFF_FFF0, length: 0x100)
            try r.publish(0)
        }
        try malformed(.bufferOutsideMemory(address: 0xFF000, length: 0x1000 + 16 << 20)) { r in  // spans the hole
            try r.setDescriptor(0, address: 0xFF000, length: 0x1000 + 16 << 20)
            try r.publish(0)
        }
    }

    @Test func readableAfterWritable() throws {
        try malformed(.readableAfterWritable(index: 1)) { r in
            try r.setDescriptor(0, address: 0x8000, length: 4, flags: F.write | F.next, next: 1)
            try r.setDescriptor(1, address: 0x9000, length: 4)
            try r.publish(0)
        }
    }

    @Test func indirectViolations() throws {
        try malformed(.indirectNotNegotiated, indirect: false) { r in
            try r.setDescriptor(0, address: 0x20000, length: 16, flags: F.indirect)
            try r.publish(0)
        }
        try malformed(.indirectWithNext) { r in
            try r.setDescriptor(0, address: 0x20000, length: 16, flags: F.indirect | F.next, next: 1)
            try r.publish(0)
        }
        for bad: UInt32 in [0, 15, 17, (VirtqueueSplit.maxIndirectEntries + 1) * 16] {
            try malformed(.badIndirectTableLength(bad)) { r in
                try r.setDescriptor(0, address: 0x20000, length: bad, flags: F.indirect)
                try r.publish(0)
            }
        }
        try malformed(.indirectTableOutsideMemory(address: 0xFFFF0, length: 32)) { r in
            try r.setDescriptor(0, address: 0xFFFF0, length: 32, flags: F.indirect)
            try r.publish(0)
        }
        try malformed(.nestedIndirect) { r in
            try DriverRing.writeDescriptor(r.memory, at: 0x20000, address: 0x30000, length: 16, flags: F.indirect, next: 0)
            try r.setDescriptor(0, address: 0x20000, length: 16, flags: F.indirect)
            try r.publish(0)
        }
        try malformed(.chainTooLong(limit: 2)) { r in   // loop inside the table
            try DriverRing.writeDescriptor(r.memory, at: 0x20000, address: 0x8000, length: 1, flags: F.next, next: 1)
            try DriverRing.writeDescriptor(r.memory, at: 0x20010, address: 0x8000, length: 1, flags: F.next, next: 0)
            try r.setDescriptor(0, address: 0x20000, length: 32, flags: F.indirect)
            try r.publish(0)
        }
        try malformed(.nextOutOfRange(next: 2, tableSize: 2)) { r in
            try DriverRing.writeDescriptor(r.memory, at: 0x20000, address: 0x8000, length: 1, flags: F.next, next: 2)
            try r.setDescriptor(0, address: 0x20000, length: 32, flags: F.indirect)
            try r.publish(0)
        }
        try malformed(.bufferOutsideMemory(address: 0x4000_0000, length: 1)) { r in
            try DriverRing.writeDescriptor(r.memory, at: 0x20000, address: 0x4000_0000, length: 1, flags: 0, next: 0)
            try r.setDescriptor(0, address: 0x20000, length: 16, flags: F.indirect)
            try r.publish(0)
        }
    }

    @Test func availIndexTooFarAhead() throws {
        try malformed(.availableIndexOutOfRange(availableIndex: 9, lastSeen: 0)) { r in
            try r.setAvailIndex(9)
        }
        try malformed(.availableIndexOutOfRange(availableIndex: 0xFFFF, lastSeen: 0)) { r in
            try r.setAvailIndex(0xFFFF)   // "behind" us
        }
    }

    @Test func layoutValidation() throws {
        let m = try makeMemory()
        func check(_ l: VirtqueueLayout, max: UInt16 = 256, _ expected: VirtqueueError) -> Bool {
            expectQueueError(expected) { try l.validate(maxSize: max, memory: m) }
        }
        let ok = VirtqueueLayout(size: 16, descriptorTable: 0x1000, availableRing: 0x2000, usedRing: 0x3000)
        try ok.validate(maxSize: 256, memory: m)
        for s: UInt16 in [0, 3, 100, 512] {
            var l = ok; l.size = s
            #expect(check(l, .invalidQueueSize(size: s, max: 256)))
        }
        var l = ok; l.descriptorTable = 0x1008
        #expect(check(l, .misalignedRing(part: "descriptor table", address: 0x1008)))
        l = ok; l.availableRing = 0x2001
        #expect(check(l, .misalignedRing(part: "available ring", address: 0x2001)))
        l = ok; l.usedRing = 0x3002
        #expect(check(l, .misalignedRing(part: "used ring", address: 0x3002)))
        l = ok; l.usedRing = 0xFFFC0
        #expect(check(l, .ringOutsideMemory(part: "used ring", address: 0xFFFC0, length: 6 + 8 * 16)))
        l = ok; l.descriptorTable = 0xFFFF_FFFF_FFFF_FF00
        #expect(check(l, .ringOutsideMemory(part: "descriptor table", address: 0xFFFF_FFFF_FFFF_FF00, length: 256)))
    }

    @Test func indicesWrapAround() throws {
        let m = try makeMemory()
        var r = try DriverRing(memory: m, size: 4)
        let q = try r.makeQueue()
        try r.setDescriptor(0, address: 0x8000, length: 4, flags: F.write)
        // 70_000 requests: both 16-bit indices wrap past 65535.
        for i in 0..<70_000 {
            try r.publish(0)
            let c = try #require(try q.popAvailableChain())
            #expect(c.head == 0)
            q.addUsed(head: 0, length: UInt32(i & 0xFFF))
            if i % 10_000 == 0 || i > 65_530 && i < 65_540 {
                #expect(try r.usedIdx() == UInt16(truncatingIfNeeded: i + 1))
                #expect(try r.usedElement(UInt16(truncatingIfNeeded: i)).length == UInt32(i & 0xFFF))
            }
        }
        #expect(q.nextAvailable == UInt16(truncatingIfNeeded: 70_000))
        #expect(try q.popAvailableChain() == nil)
    }

    @Test func noInterruptFlagWithoutEventIndex() throws {
        let m = try makeMemory()
        let r = try DriverRing(memory: m, size: 4)
        let q = try r.makeQueue(eventIndex: false)
        q.addUsed(head: 0, length: 0)
        #expect(q.needsNotification())
        try r.setAvailFlags(VirtqueueSplit.availNoInterrupt)
        q.addUsed(head: 1, length: 0)
        #expect(!q.needsNotification())
        q.setNotificationsSuppressed(true)
        #expect(try r.usedFlags() == VirtqueueSplit.usedNoNotify)
        q.setNotificationsSuppressed(false)
        #expect(try r.usedFlags() == 0)
    }

    @Test func eventIndexSuppressesUntilUsedEvent() throws {
        let m = try makeMemory()
        var r = try DriverRing(memory: m, size: 8)
        let q = try r.makeQueue(eventIndex: true)
        // Driver wants an interrupt when entry #2 (used_event = 2) is used.
        try r.setUsedEvent(2)
        try r.setAvailFlags(VirtqueueSplit.availNoInterrupt)   // ignored with EVENT_IDX
        q.addUsed(head: 0, length: 0)                          // used idx 1
        #expect(q.needsNotification())                         // first call always notifies
        q.addUsed(head: 0, length: 0)                          // used idx 2: event 2 not crossed yet
        #expect(!q.needsNotification())
        q.addUsed(head: 0, length: 0)                          // used idx 3: crossed used_event 2
        #expect(q.needsNotification())
        #expect(!q.needsNotification())                        // nothing new
        // Batched: several used entries at once crossing the event.
        try r.setUsedEvent(5)
        q.addUsed(head: 0, length: 0); q.addUsed(head: 0, length: 0); q.addUsed(head: 0, length: 0) // 6
        #expect(q.needsNotification())
        // avail_event tells the driver where we will look next.
        try r.setDescriptor(0, address: 0x8000, length: 1, flags: F.write)
        try r.publish(0); try r.publish(0)
        _ = try q.popAvailableChain()
        #expect(q.enableNotificationAndCheck())   // one more is waiting
        #expect(try r.availEvent() == 1)
        _ = try q.popAvailableChain()
        #expect(!q.enableNotificationAndCheck())
        #expect(try r.availEvent() == 2)
    }

    @Test func eventIndexWrapAround() throws {
        let m = try makeMemory()
        let r = try DriverRing(memory: m, size: 8)
        let q = try r.makeQueue(eventIndex: true)
        _ = q.needsNotification()
        for _ in 0..<65_534 { q.addUsed(head: 0, length: 0) }
        try r.setUsedEvent(0xFFFF)
        _ = q.needsNotification()
        q.addUsed(head: 0, length: 0)   // used idx 0xFFFF
        #expect(!q.needsNotification())
        q.addUsed(head: 0, length: 0)   // used idx 0 (wrapped): crossed used_event 0xFFFF
        #expect(q.needsNotification())
    }
}
