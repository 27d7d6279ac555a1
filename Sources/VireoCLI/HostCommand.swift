import ArgumentParser
import CLinux
import KVM
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// `vireo host ...`: this server as a virtualization host.
struct HostCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "host",
        abstract: "Run the host daemon (the default), or check and describe this server as a virtualization host.",
        subcommands: [HostServeCommand.self, HostCheckCommand.self, HostInfoCommand.self, HostInstallServiceCommand.self],
        defaultSubcommand: HostServeCommand.self)
}

/// `vireo host check`: what a user needs before running VMs, like virt-host-validate.
struct HostCheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Check that this host can run VMs: KVM, its capabilities, tun, KSM, huge pages.")

    @Option(help: "Path of the KVM device.")
    var kvmPath: String = KVMSystem.defaultPath

    func run() throws {
        let results = HostChecks.run(kvmPath: kvmPath)
        for r in results { print(r.line) }
        let fails = results.filter { $0.status == .fail }.count
        let warns = results.filter { $0.status == .warn }.count
        print("\(results.count) checks: \(fails) failed, \(warns) warnings")
        if fails > 0 { throw ExitCode(1) }
    }
}

struct HostCheckResult {
    enum Status: String { case pass = "PASS", warn = "WARN", fail = "FAIL" }
    var status: Status
    var name: String
    var detail: String
    var line: String { "\(status.rawValue.padding(4))  \(name): \(detail)" }
}

extension String {
    func padding(_ n: Int) -> String { count >= n ? self : self + String(repeating: " ", count: n - count) }
}

enum HostChecks {
    /// What the optional KVM capabilities mean for Vireo, said as it is: KVM offering what a
    /// feature would need is not the feature. Snapshots exist (`vireo vm snapshot`), and live
    /// migration between VMMs; between daemons not yet.
    static func optionalCapabilitiesDetail(absent: [String]) -> String {
        let state = "Vireo has snapshots (`vireo vm snapshot`) and live migration between VMMs (`vireo run --incoming`), not yet between daemons"
        if absent.isEmpty {
            return "all present: KVM offers what snapshots (vCPU events, XSAVE, XCRs) and live migration (dirty-page logging) need; \(state)"
        }
        return "missing \(absent.joined(separator: " ")): features that would use them are limited on this host; \(state)"
    }

    static func readText(_ path: String) -> String? {
        guard let bytes = try? OwnedFD.readFile(path, limit: 1 << 22) else { return nil }
        return String(decoding: bytes, as: UTF8.self).trimmingWhitespace()
    }

    static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    static func run(kvmPath: String) -> [HostCheckResult] {
        var out: [HostCheckResult] = []
        func add(_ s: HostCheckResult.Status, _ n: String, _ d: String) { out.append(HostCheckResult(status: s, name: n, detail: d)) }

        // /dev/kvm
        var kvm: KVMSystem?
        if !exists(kvmPath) {
            add(.fail, "kvm device", "\(kvmPath) is missing: enable VT-x/AMD-V in the firmware and load kvm_intel or kvm_amd")
        } else if access(kvmPath, R_OK | W_OK) != 0 {
            add(.fail, "kvm device", "\(kvmPath) is not readable and writable by this user: run as root or join the 'kvm' group")
        } else {
            do {
                kvm = try KVMSystem(path: kvmPath)
                add(.pass, "kvm device", "\(kvmPath) present and writable, API version 12")
            } catch {
                add(.fail, "kvm device", "\(error)")
            }
        }

        // What kind of virtualization the KVM offers.
        let flags = (readText("/proc/cpuinfo") ?? "").split(separator: "\n").first { $0.hasPrefix("flags") } ?? ""
        let words = Set(flags.split(separator: " ").map(String.init))
        if KVMSystem.isPVM {
            add(.warn, "virtualization", "KVM is the PVM backend (nested, page-table based): guest kernels run at CPL 3 and unmodified Linux kernels are emulated instruction by instruction and do not boot usefully; ring-3 workloads run natively. Boot Linux guests in the nested testbed (scripts/testbed.sh) or on a host with VT-x/AMD-V")
        } else if words.contains("vmx") {
            add(.pass, "virtualization", "hardware-assisted (Intel VT-x\(words.contains("ept") ? " with EPT" : ""))")
        } else if words.contains("svm") {
            add(.pass, "virtualization", "hardware-assisted (AMD-V\(words.contains("npt") ? " with NPT" : ""))")
        } else if kvm != nil {
            add(.warn, "virtualization", "KVM works but the CPU flags show neither vmx nor svm")
        } else {
            add(.fail, "virtualization", "no VT-x/AMD-V in the CPU flags: enable virtualization in the firmware")
        }

        if let kvm {
            let required: [(Int32, String)] = [
                (KVM_CAP_USER_MEMORY, "USER_MEMORY"), (KVM_CAP_SET_TSS_ADDR, "SET_TSS_ADDR"),
                (KVM_CAP_IRQCHIP, "IRQCHIP"), (KVM_CAP_PIT2, "PIT2"), (KVM_CAP_EXT_CPUID, "EXT_CPUID"),
                (KVM_CAP_IRQFD, "IRQFD"), (KVM_CAP_IOEVENTFD, "IOEVENTFD"), (KVM_CAP_IRQ_ROUTING, "IRQ_ROUTING"),
                (KVM_CAP_SIGNAL_MSI, "SIGNAL_MSI"), (KVM_CAP_MP_STATE, "MP_STATE"), (KVM_CAP_IMMEDIATE_EXIT, "IMMEDIATE_EXIT"),
                (KVM_CAP_SET_IDENTITY_MAP_ADDR, "SET_IDENTITY_MAP_ADDR"),
            ]
            let missing = required.filter { kvm.check($0.0) == 0 }.map(\.1)
            if missing.isEmpty {
                add(.pass, "kvm capabilities", "all \(required.count) required (\(required.map(\.1).joined(separator: " ")))")
            } else {
                add(.fail, "kvm capabilities", "missing \(missing.joined(separator: " ")): upgrade the host kernel")
            }
            let optional: [(Int32, String)] = [
                (KVM_CAP_XSAVE, "XSAVE"), (KVM_CAP_XCRS, "XCRS"), (KVM_CAP_VCPU_EVENTS, "VCPU_EVENTS"),
                (KVM_CAP_DIRTY_LOG_RING, "DIRTY_LOG_RING"), (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, "MANUAL_DIRTY_LOG_PROTECT2"),
                (KVM_CAP_X86_USER_SPACE_MSR, "X86_USER_SPACE_MSR"), (KVM_CAP_SPLIT_IRQCHIP, "SPLIT_IRQCHIP"),
            ]
            let absent = optional.filter { kvm.check($0.0) == 0 }.map(\.1)
            add(absent.isEmpty ? .pass : .warn, "kvm optional capabilities", HostChecks.optionalCapabilitiesDetail(absent: absent))
            add(.pass, "vcpu limit", "up to \(kvm.maxVCPUs) vCPUs per VM, \(kvm.check(KVM_CAP_NR_MEMSLOTS)) memory slots")
        }

        // Networking
        if exists("/dev/net/tun") {
            add(.pass, "tun", "/dev/net/tun present (virtio-net TAP backends)")
        } else {
            add(.warn, "tun", "/dev/net/tun missing: modprobe tun to give VMs network cards")
        }

        // Memory overcommit facilities
        if let run = readText("/sys/kernel/mm/ksm/run") {
            if run == "1" {
                add(.pass, "ksm", "running (transparent page sharing of guest memory)")
            } else {
                add(.warn, "ksm", "present but off: echo 1 > /sys/kernel/mm/ksm/run to share identical guest pages")
            }
        } else {
            add(.warn, "ksm", "not available in this kernel (CONFIG_KSM): no transparent page sharing")
        }
        if let thp = readText("/sys/kernel/mm/transparent_hugepage/enabled") {
            let mode = thp.split(separator: " ").first { $0.hasPrefix("[") }.map { String($0.dropFirst().dropLast()) } ?? thp
            add(mode == "never" ? .warn : .pass, "transparent hugepages", "mode \(mode)\(mode == "never" ? ": guest RAM gets 4 KiB pages only" : "")")
        } else {
            add(.warn, "transparent hugepages", "not available")
        }
        let huge = readText("/proc/sys/vm/nr_hugepages") ?? "0"
        add(huge == "0" ? .warn : .pass, "hugetlbfs pages", huge == "0" ? "none preallocated (optional: sysctl vm.nr_hugepages=N for pinned huge-page guests)" : "\(huge) preallocated")
        if exists("/dev/userfaultfd") || exists("/proc/sys/vm/unprivileged_userfaultfd") {
            add(.pass, "userfaultfd", "available (hypervisor memory compression and swap use it: docs/memory-reclaim.md)")
        } else {
            add(.warn, "userfaultfd", "not available")
        }
        if exists("/sys/fs/cgroup/cgroup.controllers") {
            add(.pass, "cgroups", "v2 unified hierarchy (what per-VM CPU shares/limits and memory limits would use; Vireo sets none yet)")
        } else if exists("/sys/fs/cgroup/cpu") || exists("/sys/fs/cgroup/memory") {
            add(.pass, "cgroups", "v1 controllers mounted (what per-VM CPU shares/limits and memory limits would use; Vireo sets none yet)")
        } else {
            add(.warn, "cgroups", "no cgroup hierarchy found: per-VM resource controls unavailable")
        }
        return out
    }
}
