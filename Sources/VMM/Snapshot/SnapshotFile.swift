#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Devices
import KVM
import Virtio
import VireoConfig
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// A machine's saved state: the body of a snapshot's `state.vsnap` file (docs/snapshots.md).
/// Guest RAM is beside it in `memory.bin`, the regions one after another in guest-physical
/// order, pages never written left as holes.
public struct MachineSnapshot: Codable, Sendable, Equatable {
    /// The body format this release writes. Every older one must stay readable.
    public static let currentFormat = 1

    public var format: Int
    /// The vireo that wrote it.
    public var writer: String
    /// The VM configuration the machine ran (nil for machines built without one).
    public var config: VMConfig?
    public var cpus: Int
    /// "linux" or "probe:WORKLOAD".
    public var boot: String
    public var memory: [MemoryRegion]
    public var vcpus: [VCPUState]
    /// The in-kernel PIC, IOAPIC, PIT and clock (machines with an irqchip).
    public var chips: VMChipState?
    /// Each device's state, keyed by its stable id.
    public var devices: [String: DeviceState]
    /// The disks as they were when the snapshot was taken (nil in snapshots without disks).
    public var disks: [Disk]?
    /// The CPU features vCPU 0 was offered (X86Boot's CPUFeatures registers); a host that cannot
    /// offer all of them refuses the restore. Nil in snapshots from before the field.
    public var cpuFeatures: [String: UInt32]?

    enum CodingKeys: String, CodingKey {
        case format, writer, config, cpus, boot, memory, vcpus, chips, devices, disks
        case cpuFeatures = "cpu_features"
    }

    /// A disk of the machine. A read-write disk's contents at the snapshot are kept as an
    /// internal qcow2 snapshot named `disk_snapshot` inside the image itself; a restore reverts
    /// the disk to it, so guest RAM (its page cache) and the disk agree.
    public struct Disk: Codable, Sendable, Equatable {
        public var id: String
        public var path: String
        public var format: String
        public var readOnly: Bool
        public var virtualSize: UInt64
        public var diskSnapshot: String?
        public init(id: String, path: String, format: String, readOnly: Bool, virtualSize: UInt64, diskSnapshot: String?) {
            self.id = id; self.path = path; self.format = format; self.readOnly = readOnly
            self.virtualSize = virtualSize; self.diskSnapshot = diskSnapshot
        }
        enum CodingKeys: String, CodingKey {
            case id, path, format, readOnly = "read_only", virtualSize = "virtual_size", diskSnapshot = "disk_snapshot"
        }
    }

    public struct MemoryRegion: Codable, Sendable, Equatable {
        public var guestBase: UInt64
        public var size: UInt64
        enum CodingKeys: String, CodingKey { case guestBase = "guest_base", size }
    }

    /// One device's state. New device kinds add cases; a reader that meets one it does not know
    /// refuses the snapshot rather than restoring a machine without it.
    public enum DeviceState: Codable, Sendable, Equatable {
        case probe(passes: UInt64)
        case serial(Serial16550.Saved)
        case i8042(I8042.Saved)
        case rtc(CMOSRTC.Saved)
        case pciBus(PCIBus.Saved)
        case virtio(VirtioPCIDevice.Saved)
    }
}

/// The envelope of `state.vsnap`: magic, format version, body length, CRC-32 of the body,
/// then the body (JSON). Every field is checked before the body is parsed.
public enum SnapshotFile {
    public static let magic = Array("VIREOSNP".utf8)
    public static let headerSize = 24
    /// A body larger than this is not one Vireo wrote (a 254-vCPU machine is under 4 MiB).
    public static let maxBody = 64 << 20
    public static let stateName = "state.vsnap"
    public static let memoryName = "memory.bin"

    public static func encode(_ s: MachineSnapshot) throws -> [UInt8] {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        let body = Array(try e.encode(s))
        var out = magic
        append32(&out, UInt32(MachineSnapshot.currentFormat))
        append32(&out, UInt32(body.count))
        append32(&out, CRC32.checksum(body[...]))
        append32(&out, 0)   // reserved
        return out + body
    }

    public static func decode(_ bytes: [UInt8], source: String) throws -> MachineSnapshot {
        guard bytes.count >= headerSize else {
            throw VireoError(.corrupt, "snapshot \(source) is truncated (\(bytes.count) bytes, less than its \(headerSize)-byte header)", hint: "take the snapshot again")
        }
        guard Array(bytes[0..<8]) == magic else {
            throw VireoError(.corrupt, "\(source) is not a Vireo snapshot (no VIREOSNP magic)")
        }
        let version = read32(bytes, 8)
        guard version >= 1, version <= UInt32(MachineSnapshot.currentFormat) else {
            throw VireoError(.unsupported, "snapshot \(source) has format \(version); this vireo reads 1 to \(MachineSnapshot.currentFormat)",
                             hint: "restore it with the vireo that wrote it, or a newer one")
        }
        let length = Int(read32(bytes, 12))
        guard length <= maxBody, bytes.count - headerSize == length else {
            throw VireoError(.corrupt, "snapshot \(source) is truncated or padded: its header says \(length) bytes of state, the file has \(bytes.count - headerSize)", hint: "take the snapshot again")
        }
        let body = bytes[headerSize...]
        guard CRC32.checksum(body) == read32(bytes, 16) else {
            throw VireoError(.corrupt, "snapshot \(source) is corrupted (its CRC-32 does not match)", hint: "take the snapshot again")
        }
        let s: MachineSnapshot
        do { s = try JSONDecoder().decode(MachineSnapshot.self, from: Data(body)) } catch {
            throw VireoError(.corrupt, "snapshot \(source): its state does not parse (\(String(describing: error).prefix(200)))")
        }
        guard s.format == Int(version) else { throw VireoError(.corrupt, "snapshot \(source): envelope and body disagree on the format") }
        guard s.cpus >= 1, s.cpus <= VMLimits.maxVCPUs, s.vcpus.count == s.cpus else {
            throw VireoError(.corrupt, "snapshot \(source): \(s.vcpus.count) vCPU states for \(s.cpus) vCPUs")
        }
        var previousEnd: UInt64 = 0
        for r in s.memory {
            let (end, o) = r.guestBase.addingReportingOverflow(r.size)
            guard !o, r.guestBase >= previousEnd, r.size > 0, r.size % 4096 == 0, r.guestBase % 4096 == 0 else {
                throw VireoError(.corrupt, "snapshot \(source): memory regions are unaligned, overlapping or out of order")
            }
            previousEnd = end
        }
        return s
    }

    static func append32(_ out: inout [UInt8], _ v: UInt32) {
        out += [UInt8(v & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v >> 16 & 0xFF), UInt8(v >> 24)]
    }

    static func read32(_ b: [UInt8], _ at: Int) -> UInt32 {
        UInt32(b[at]) | UInt32(b[at + 1]) << 8 | UInt32(b[at + 2]) << 16 | UInt32(b[at + 3]) << 24
    }
}

/// CRC-32 (IEEE 802.3, the zlib one), table-driven.
public enum CRC32 {
    static let table: [UInt32] = (0..<256).map { i in
        var c = UInt32(i)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    public static func checksum(_ bytes: ArraySlice<UInt8>) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in bytes { c = table[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        return c ^ 0xFFFF_FFFF
    }
}
