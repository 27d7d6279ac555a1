import GuestMemory
import VireoConfig
import VireoSupport

/// What the VMM builds one machine from: the VM's configuration (`VMConfig`, the one
/// description the API, the inventory and `vireo run` share) turned into the machine's terms
/// by `init(vm:wiring:)`, plus this run's wiring. Tests and benchmarks of the VMM itself may
/// build one directly (`init(boot:...)`, no `vm`).
public struct MachineConfig: Sendable {
    public enum Boot: Sendable, Equatable {
        /// A Linux kernel: an ELF `vmlinux` (PVH or 64-bit entry) or a `bzImage`.
        case linux(kernel: String, initrd: String?, cmdline: String)
        /// The built-in probe guest (ring-3 workloads for measuring the VMM).
        case probe(ProbeWorkload)
    }

    public enum Serial: Sendable, Equatable {
        case stdio
        case file(String)
        case none
    }

    public var boot: Boot
    public var cpus: Int = 1
    public var memorySize: UInt64 = 512 << 20
    public var serial: Serial = .stdio
    /// A unix socket serving COM1 to any number of clients, besides `serial` (ConsoleServer.swift).
    public var consoleSocket: String?
    /// Console input on a terminal: Ctrl-A x quits, Ctrl-A Ctrl-A sends Ctrl-A (ConsoleEscape.swift).
    public var consoleEscape = false
    public var memoryOptions = GuestMemory.Options()
    /// virtio-pci devices (Linux boots only).
    public var virtio = VirtioConfig()
    /// Map guest RAM with KVM dirty-page logging (`Machine.dirtyLog`), without sampling it.
    public var trackDirtyPages = false
    /// The active-memory estimate's sampling window in seconds (dirty logging on guest RAM,
    /// read once per window on a low-priority thread); 0 turns it off. `vireo run` defaults to 10.
    public var activeMemoryWindowSeconds: UInt32 = 0
    /// 1: the estimate re-arms every page each window (exact count of the pages written). A power
    /// of two N > 1: a random 1/N of the pages per window, scaled up (N times fewer write faults).
    /// N > 1 also maps RAM with manual dirty-log protection (`DirtyLog.manualProtect`).
    public var activeMemorySampleOneIn: UInt32 = 1
    /// Seconds after the start before the active-memory sampler turns dirty logging on (0: from
    /// the start). Until then guest RAM keeps KVM's huge-page mappings: dirty logging maps it
    /// with 4 KiB pages, which a booting guest, touching all of its memory, pays for.
    public var activeMemoryStartDelaySeconds: UInt32 = 0
    /// Hypervisor memory reclaim (the control command `reclaim`): the swap file and the bound
    /// on the compressed store (MemoryReclaim/).
    public var reclaim = ReclaimOptions()

    public static let defaultCmdline = "console=ttyS0 reboot=k panic=-1"

    /// The VM configuration this machine was built from (what the control command `config`
    /// reports), with every disk's format filled in once the disk is opened.
    public var vm: VMConfig?

    /// Where this run's outputs go: not part of the VM's description (another host, another
    /// run, other paths), so not part of `VMConfig`.
    public struct Wiring: Sendable, Equatable {
        public var serial: Serial = .stdio
        /// Serves COM1 on a unix socket too (ConsoleServer.swift).
        public var consoleSocket: String?
        /// The host end of the vsock (needed when the VM has one).
        public var vsockSocket: String?
        /// hvc0's output for a VM with a virtio console (nil: stdout).
        public var virtioConsoleLog: String?
        /// A FIFO the balloon's target changes arrive on at run time.
        public var balloonControl: String?
        public init() {}
    }

    /// The machine for `vm`: checks it (`VMConfig.validate()`), then derives the boot source,
    /// vCPUs, RAM and devices from it. Throws `.invalidArgument` naming the field.
    public init(vm: VMConfig, wiring: Wiring) throws {
        do throws(ConfigProblem) { try vm.validate() } catch {
            throw VireoError(.invalidArgument, error.message)
        }
        switch vm.boot {
        case let .kernel(path, initrd, cmdline):
            boot = .linux(kernel: path, initrd: initrd, cmdline: cmdline ?? Self.defaultCmdline)
        case let .probe(text):
            boot = .probe(try ProbeWorkload.parse(text))
        case .invalid:
            throw VireoError(.invalidArgument, "the VM has no boot source", hint: "give a kernel or a probe workload")
        }
        cpus = vm.vcpus
        let (bytes, overflow) = UInt64(vm.memoryMiB).multipliedReportingOverflow(by: 1 << 20)
        guard !overflow else { throw VireoError(.outOfRange, "memory_mib \(vm.memoryMiB) is too large") }
        memorySize = bytes
        serial = wiring.serial
        consoleSocket = wiring.consoleSocket
        // A kernel's RAM gets transparent huge pages (2 MiB-aligned, MADV_HUGEPAGE), as QEMU
        // gives it: fewer host page faults and 2 MiB NPT/EPT mappings. Still lazily allocated.
        if case .linux = boot { memoryOptions.hugepages = vm.hugepages ?? true } else { memoryOptions.hugepages = vm.hugepages ?? false }
        // A VM marked shareable lets KSM merge its identical pages with other VMs' (MADV_MERGEABLE).
        memoryOptions.mergeable = vm.shareable == true
        var v = VirtioConfig()
        v.disks = vm.disks
        v.nets = vm.nics
        v.rng = vm.rng == true
        if let mib = vm.balloonMiB {
            var b = VirtioConfig.Balloon()
            b.targetMiB = UInt64(mib)
            b.stats = vm.balloonStats ?? true
            b.deflateOnOOM = vm.balloonDeflateOnOOM ?? false
            b.reporting = vm.balloonFreePageReporting ?? false
            b.control = wiring.balloonControl
            v.balloon = b
        }
        if let cid = vm.vsockCID {
            guard let socket = wiring.vsockSocket else {
                throw VireoError(.invalidArgument, "the VM has a vsock (vsock_cid \(cid)) but no host socket for it", hint: "give --vsock-socket PATH")
            }
            v.vsock = VirtioConfig.Vsock(cid: UInt64(cid), socketPath: socket)
        }
        if vm.virtioConsole == true { v.console = wiring.virtioConsoleLog.map { .file($0) } ?? .stdout }
        virtio = v
        self.vm = vm
    }

    public init(boot: Boot, cpus: Int = 1, memorySize: UInt64 = 512 << 20, serial: Serial = .stdio) {
        self.boot = boot
        self.cpus = cpus
        self.memorySize = memorySize
        self.serial = serial
    }
}

/// How a machine ended, and the process exit status that goes with it.
public enum MachineExit: Sendable, Equatable, CustomStringConvertible {
    /// The guest rebooted (reboot, i8042 reset, triple fault, panic with panic=-1).
    case reset(String)
    /// The guest powered off (ACPI / system event shutdown).
    case poweroff
    /// The probe guest finished its workload.
    case probeDone
    /// The VMM was asked to stop by a signal (SIGINT, SIGTERM).
    case signal(Int32)
    /// Something failed: one line saying what, with the details a bug report needs.
    case failed(String)
    /// The machine moved to another VMM (live migration) and runs there now.
    case migrated(String)

    public var exitStatus: Int32 {
        switch self {
        case .reset, .poweroff, .probeDone, .migrated: return 0
        case let .signal(s): return 128 + s
        case .failed: return 1
        }
    }

    public var description: String {
        switch self {
        case let .reset(why): return "guest reset (\(why))"
        case .poweroff: return "guest powered off"
        case .probeDone: return "probe workload finished"
        case let .signal(s): return "stopped by signal \(s)"
        case let .failed(why): return why
        case let .migrated(to): return "migrated to \(to)"
        }
    }
}
