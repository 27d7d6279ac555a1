import Devices
import GuestMemory
import Testing
import Virtio

@Suite struct VirtioBlockTests {
    typealias F = VirtqueueSplit.DescriptorFlags
    typealias T = VirtioBlock.RequestType

    struct Rig {
        let m: Machine
        let t: VirtioPCIDevice
        let d: VirtioPCIDriver
        let disk: InMemoryBlockBackend
        let block: VirtioBlock
        var ring: DriverRing
        let bell: UInt64
        var nextDesc: UInt16 = 0

        init(readOnly: Bool = false) throws {
            m = try Machine()
            disk = InMemoryBlockBackend(size: 1 << 20, readOnly: readOnly, identifier: "serial-123")
            block = VirtioBlock(backend: disk, queueSize: 64)
            t = try VirtioPCIDevice(device: block, memory: m.memory, msi: m.msi)
            try m.pci.add(t)
            var drv = VirtioPCIDriver(m, slot: 1)
            try drv.probe()
            d = drv
            let offered = d.deviceFeatures()
            #expect(offered & VirtioBlock.Feature.flush != 0)
            #expect((offered & VirtioBlock.Feature.readOnly != 0) == readOnly)
            #expect(d.negotiate(offered))
            ring = try DriverRing(memory: m.memory, size: 64, base: 0x4000)
            bell = d.setupQueue(0, ring: ring, vector: 0xFFFF)
            d.driverOK()
        }

        /// Posts header + `data` segments (writable for reads) + status; returns (status address, used len).
        mutating func submit(type: UInt32, sector: UInt64, segments: [(UInt64, UInt32)], dataWritable: Bool) throws -> (status: UInt8, used: UInt32) {
            let hdr: UInt64 = 0x30000, status: UInt64 = 0x30100
            try m.memory.write(type, at: hdr)
            try m.memory.write(UInt32(0), at: hdr + 4)
            try m.memory.write(sector, at: hdr + 8)
            try m.memory.write(UInt8(0xEE), at: status)
            let head = nextDesc
            var i = nextDesc
            try ring.setDescriptor(i, address: hdr, length: 16, flags: F.next, next: i + 1); i += 1
            for (a, l) in segments {
                try ring.setDescriptor(i, address: a, length: l, flags: F.next | (dataWritable ? F.write : 0), next: i + 1); i += 1
            }
            try ring.setDescriptor(i, address: status, length: 1, flags: F.write); i += 1
            nextDesc = i % 48
            let before = try ring.usedIdx()
            try ring.publish(head)
            d.kick(bell, queue: 0)
            #expect(try ring.usedIdx() == before &+ 1)
            let e = try ring.usedElement(before)
            #expect(e.id == UInt32(head))
            return (try m.memory.read(at: status), e.length)
        }
    }

    @Test func writeThenReadAcrossOddSegments() throws {
        var r = try Rig()
        let pattern = (0..<1024).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        try r.m.memory.write(Array(pattern[0..<100]), at: 0x40000)
        try r.m.memory.write(Array(pattern[100..<1024]), at: 0x50000)
        let w = try r.submit(type: T.write, sector: 3, segments: [(0x40000, 100), (0x50000, 924)], dataWritable: false)
        #expect(w == (VirtioBlock.Status.ok, 1))
        var back = [UInt8](repeating: 0, count: 1024)
        try back.withUnsafeMutableBytes { try r.disk.read(at: 3 * 512, into: $0) }
        #expect(back == pattern)
        let rd = try r.submit(type: T.read, sector: 3, segments: [(0x60000, 511), (0x70000, 513)], dataWritable: true)
        #expect(rd == (VirtioBlock.Status.ok, 1025))
        #expect(try r.m.memory.readBytes(at: 0x60000, count: 511) + r.m.memory.readBytes(at: 0x70000, count: 513) == pattern)
        let c = r.block.counters.snapshot
        #expect(c == .init(readRequests: 1, writeRequests: 1, flushRequests: 0, otherRequests: 0, readBytes: 1024, writeBytes: 1024, errors: 0))
    }

    @Test func outOfRangeAndUnalignedRequestsGetIOError() throws {
        var r = try Rig()
        let sectors = UInt64(1 << 20) / 512
        #expect(try r.submit(type: T.read, sector: sectors - 1, segments: [(0x60000, 1024)], dataWritable: true).status == VirtioBlock.Status.ioError)
        #expect(try r.submit(type: T.read, sector: sectors - 1, segments: [(0x60000, 512)], dataWritable: true).status == VirtioBlock.Status.ok)
        #expect(try r.submit(type: T.read, sector: .max, segments: [(0x60000, 512)], dataWritable: true).status == VirtioBlock.Status.ioError)
        #expect(try r.submit(type: T.write, sector: 0, segments: [(0x60000, 100)], dataWritable: false).status == VirtioBlock.Status.ioError)
        #expect(try r.submit(type: T.write, sector: .max / 512, segments: [(0x60000, 512)], dataWritable: false).status == VirtioBlock.Status.ioError)
        #expect(r.d.status & VirtioStatus.needsReset == 0)
        // Refused requests are counted as requests and errors, never as bytes moved.
        let c = r.block.counters.snapshot
        #expect(c.readRequests == 3 && c.writeRequests == 2 && c.errors == 4 && c.readBytes == 512 && c.writeBytes == 0)
    }

    @Test func readOnlyDiskRefusesWrites() throws {
        var r = try Rig(readOnly: true)
        #expect(try r.submit(type: T.write, sector: 0, segments: [(0x60000, 512)], dataWritable: false).status == VirtioBlock.Status.ioError)
        #expect(try r.submit(type: T.read, sector: 0, segments: [(0x60000, 512)], dataWritable: true).status == VirtioBlock.Status.ok)
    }

    @Test func flushGetIDAndUnknownTypes() throws {
        var r = try Rig()
        #expect(try r.submit(type: T.flush, sector: 0, segments: [], dataWritable: false).status == VirtioBlock.Status.ok)
        #expect(r.disk.flushes == 1)
        let id = try r.submit(type: T.getID, sector: 0, segments: [(0x60000, 20)], dataWritable: true)
        #expect(id == (VirtioBlock.Status.ok, 21))
        #expect(try r.m.memory.readBytes(at: 0x60000, count: 20) == Array("serial-123".utf8) + [UInt8](repeating: 0, count: 10))
        #expect(try r.submit(type: 99, sector: 0, segments: [], dataWritable: false).status == VirtioBlock.Status.unsupported)
        let c = r.block.counters.snapshot
        #expect(c.flushRequests == 1 && c.otherRequests == 2 && c.errors == 1 && c.readBytes == 0)
    }

    @Test func discardAndWriteZeroes() throws {
        var r = try Rig()
        let ones = [UInt8](repeating: 0xFF, count: 4096)
        try ones.withUnsafeBytes { try r.disk.write(at: 0, from: $0) }
        // One segment: sector 2, 3 sectors, flags 0.
        try r.m.memory.write(UInt64(2), at: 0x40000); try r.m.memory.write(UInt32(3), at: 0x40008); try r.m.memory.write(UInt32(0), at: 0x4000C)
        #expect(try r.submit(type: T.discard, sector: 0, segments: [(0x40000, 16)], dataWritable: false).status == VirtioBlock.Status.ok)
        var back = [UInt8](repeating: 0, count: 4096)
        try back.withUnsafeMutableBytes { try r.disk.read(at: 0, into: $0) }
        #expect(back[0..<1024].allSatisfy { $0 == 0xFF } && back[1024..<2560].allSatisfy { $0 == 0 } && back[2560...].allSatisfy { $0 == 0xFF })
        // Write-zeroes with the unmap flag, out of range: IOERR.
        try r.m.memory.write(UInt64(1 << 40), at: 0x40000); try r.m.memory.write(UInt32(1), at: 0x4000C)
        #expect(try r.submit(type: T.writeZeroes, sector: 0, segments: [(0x40000, 16)], dataWritable: false).status == VirtioBlock.Status.ioError)
        // Discard with flags: unsupported.
        try r.m.memory.write(UInt64(0), at: 0x40000)
        #expect(try r.submit(type: T.discard, sector: 0, segments: [(0x40000, 16)], dataWritable: false).status == VirtioBlock.Status.unsupported)
    }

    @Test func hostIOErrorsAreReportedInBand() throws {
        var r = try Rig()
        r.disk.failAll = true
        #expect(try r.submit(type: T.read, sector: 0, segments: [(0x60000, 512)], dataWritable: true).status == VirtioBlock.Status.ioError)
        #expect(try r.submit(type: T.flush, sector: 0, segments: [], dataWritable: false).status == VirtioBlock.Status.ioError)
        #expect(r.d.status & VirtioStatus.needsReset == 0)
    }

    @Test func structurallyBrokenRequestsNeedReset() throws {
        var r = try Rig()
        // Header and "status" both device-readable: no status byte to write.
        try r.ring.setDescriptor(0, address: 0x30000, length: 16, flags: F.next, next: 1)
        try r.ring.setDescriptor(1, address: 0x30100, length: 1)
        try r.ring.publish(0)
        r.d.kick(r.bell, queue: 0)
        #expect(r.d.status & VirtioStatus.needsReset != 0)
        #expect(r.t.lastFault?.contains("status") == true)
    }

    @Test func configSpaceReportsCapacity() throws {
        let r = try Rig()
        let cfg = try #require(r.d.caps.device)
        #expect(r.m.mmio.read(address: cfg, width: 4) | r.m.mmio.read(address: cfg + 4, width: 4) << 32 == 2048)
        #expect(r.m.mmio.read(address: cfg + 20, width: 4) == 512)
        #expect(r.m.mmio.read(address: cfg + 12, width: 4) == 62)
        #expect(r.m.mmio.read(address: cfg + 60, width: 4) == 0)   // past the config: zero
    }
}
