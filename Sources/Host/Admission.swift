import VireoAPI
import VireoSupport

/// Memory admission: the host's overcommit policy, one rule.
///
/// The host admits `(RAM + swap) x ratio` of provisioned guest memory in all (the ratio is
/// `vireo host --memory-overcommit`, default 1.5). A VM is created only if its memory alone fits
/// that capacity (it could never start otherwise), and started only if its memory plus the
/// memory of every VM that has a VMM (starting, running, paused) fits it. Both refusals are 422
/// with the numbers and what to change. Guest memory is allocated lazily, so a ratio above 1
/// relies on guests not touching all of it at once (or on the balloon and KSM giving it back).
struct MemoryAdmission: Sendable {
    /// Host RAM plus swap, in bytes.
    var hostBytes: UInt64
    /// Provisioned guest memory admitted per byte of RAM + swap.
    var ratio: Double

    static let defaultRatio = 1.5
    /// What `--memory-overcommit` accepts.
    static let ratioRange: ClosedRange<Double> = 0.01...100

    static func forThisHost(ratio: Double?) -> MemoryAdmission {
        MemoryAdmission(hostBytes: ProcFS.memoryAndSwap, ratio: ratio ?? defaultRatio)
    }

    /// Capacity in MiB: (RAM + swap) x ratio, never past the guest-physical space.
    var capacityMiB: Int {
        let hostMiB = Double(hostBytes >> 20)
        let capacity = (hostMiB * ratio).rounded(.down)
        guard capacity.isFinite, capacity < Double(VMLimits.maxMemoryMiB) else { return VMLimits.maxMemoryMiB }
        return max(0, Int(capacity))
    }

    /// How the capacity is made, for messages: "48 GiB (RAM + swap 24 GiB x overcommit 2)".
    var capacityText: String {
        "\(Self.mib(capacityMiB)) (RAM + swap \(ByteSize.format((hostBytes >> 20) << 20)) x overcommit \(Self.ratioText(ratio)))"
    }

    static func ratioText(_ r: Double) -> String {
        let hundredths = (r * 100).rounded()
        return hundredths.truncatingRemainder(dividingBy: 100) == 0 ? String(Int(hundredths / 100)) : String(hundredths / 100)
    }

    static func mib(_ m: Int) -> String { ByteSize.format(UInt64(max(0, m)) << 20) }

    static let howToChange = "give it less memory (`vireo vm update NAME --memory SIZE` while stopped), or start the daemon with a higher --memory-overcommit RATIO"

    /// At create (and update): the VM's memory alone must fit the capacity.
    func checkDefinition(what: String = "VM", name: String, memoryMiB: Int) throws {
        guard memoryMiB > capacityMiB else { return }
        throw HTTPError.invalid("out-of-range",
            "\(what) '\(name)' asks for \(Self.mib(memoryMiB)) of memory (memory_mib \(memoryMiB)), more than this host admits in all: \(capacityText); it could never start. Give \(VMLimits.minMemoryMiB) to \(capacityMiB) MiB, or start the daemon with a higher --memory-overcommit RATIO")
    }

    /// At start: the VM's memory plus `heldMiB` (what VMs with a VMM hold, `holders` of them)
    /// must fit the capacity.
    func checkStart(name: String, memoryMiB: Int, heldMiB: Int, holders: Int) throws {
        let (total, overflow) = memoryMiB.addingReportingOverflow(heldMiB)
        guard overflow || total > capacityMiB else { return }
        let available = max(0, capacityMiB - heldMiB)
        throw HTTPError.invalid("insufficient-memory",
            "VM '\(name)' asks for \(Self.mib(memoryMiB)) of memory; this host admits \(capacityText), of which \(holders) running VM\(holders == 1 ? "" : "s") hold \(Self.mib(heldMiB)): \(Self.mib(available)) is available. Stop another VM (`vireo vm stop NAME`), \(Self.howToChange)")
    }
}
