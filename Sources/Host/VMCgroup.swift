import VireoAPI
import VireoSupport
#if canImport(Glibc)
import Glibc
#endif

/// One VM's cgroup: where its VMM runs and what the kernel enforces on it (shares, limits,
/// the memory reservation). Hides cgroup v1 from v2:
///
/// | control | v2 (`cpu`, `memory` in the unified tree) | v1 (`cpu`, `memory` hierarchies) |
/// |---|---|---|
/// | cpu_shares S | `cpu.weight` S | `cpu.shares` S x 1024 / 100 |
/// | cpu_limit_pct P | `cpu.max` "P x 1000 100000" | `cpu.cfs_quota_us` P x 1000, `cpu.cfs_period_us` 100000 |
/// | memory_reservation_mib R | `memory.min` R | `memory.soft_limit_in_bytes` R (v1 has no hard minimum) |
/// | memory_limit_mib L | `memory.max` L + overhead | `memory.limit_in_bytes` L + overhead |
///
/// The cgroups are made under the daemon's own ones (so a daemon started in a memory cgroup
/// keeps its VMs inside that limit too): `OWN/vireo-TAG/VM`, TAG naming the data directory, so
/// two daemons on one host never share a group.
struct VMCgroup: Sendable, Equatable {
    enum Layout: Sendable, Equatable {
        /// The unified hierarchy has the cpu and memory controllers: its mount point.
        case v2(String)
        /// Separate v1 hierarchies: the cpu one's and the memory one's mount points.
        case v1(cpu: String, memory: String)
    }

    /// The VM's directories: one (v2) or the cpu and the memory one (v1).
    let layout: Layout
    let cpuDir: String
    let memoryDir: String

    /// The VMM's own memory (its code, heap, device buffers) on top of guest RAM: a limit is
    /// the guest's, so the cgroup allows this much more.
    static let vmmOverheadBytes: UInt64 = 64 << 20
    static let cpuPeriodMicros = 100_000

    // MARK: Finding the hierarchies

    /// Where the cpu and memory controllers are mounted, or why they cannot be used.
    static func detectLayout() -> Result<Layout, VireoError> {
        guard let info = ProcFS.read("/proc/self/mountinfo") else {
            return .failure(VireoError(.notFound, "cannot read /proc/self/mountinfo to find the cgroup hierarchies"))
        }
        var cpu: String?, memory: String?, unified: String?
        for line in info.split(separator: "\n") {
            // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
            let parts = line.split(separator: " ")
            guard let dash = parts.firstIndex(of: "-"), parts.count > dash + 3, parts.count > 4 else { continue }
            let mount = String(parts[4]), type = parts[dash + 1]
            let superOpts = Set(parts[dash + 3].split(separator: ",").map(String.init))
            if type == "cgroup2" { unified = mount }
            if type == "cgroup" && superOpts.contains("cpu") { cpu = mount }
            if type == "cgroup" && superOpts.contains("memory") { memory = mount }
        }
        if let cpu, let memory { return .success(.v1(cpu: cpu, memory: memory)) }
        if let unified, let controllers = ProcFS.read(unified + "/cgroup.controllers") {
            let have = Set(controllers.split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init))
            if have.contains("cpu") && have.contains("memory") { return .success(.v2(unified)) }
            return .failure(VireoError(.unsupported, "the cgroup v2 hierarchy at \(unified) has no cpu and memory controllers (it has: \(have.sorted().joined(separator: " ")))",
                                       hint: "mount the v1 cpu and memory hierarchies, or give the controllers to cgroup v2"))
        }
        return .failure(VireoError(.unsupported, "no cgroup hierarchy with the cpu and memory controllers is mounted",
                                   hint: "mount cgroup2 at /sys/fs/cgroup (or the v1 cpu and memory hierarchies)"))
    }

    /// This process's cgroup path in the hierarchy that has `controller` ("" for v2's unified one).
    static func ownPath(controller: String) -> String {
        guard let text = ProcFS.read("/proc/self/cgroup") else { return "/" }
        for line in text.split(separator: "\n") {
            let f = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard f.count == 3 else { continue }
            let controllers = f[1].split(separator: ",").map(String.init)
            if controller.isEmpty ? f[1].isEmpty && f[0] == "0" : controllers.contains(controller) {
                return String(f[2])
            }
        }
        return "/"
    }

    /// A short stable tag for a data directory (FNV-1a, 32 bits, hex).
    static func tag(_ dataDir: String) -> String {
        var h: UInt32 = 0x811C_9DC5
        for b in dataDir.utf8 { h = (h ^ UInt32(b)) &* 0x0100_0193 }
        let hex = String(h, radix: 16)
        return String(repeating: "0", count: 8 - hex.count) + hex
    }

    static func join(_ mount: String, _ own: String, _ rest: String) -> String {
        let middle = own == "/" ? "" : own
        return mount + middle + "/" + rest
    }

    /// The cgroup of VM `name` of the daemon whose data directory is `dataDir`.
    static func forVM(_ name: String, dataDir: String) -> Result<VMCgroup, VireoError> {
        let group = "vireo-" + tag(dataDir)
        switch detectLayout() {
        case let .failure(e): return .failure(e)
        case let .success(layout):
            switch layout {
            case let .v2(mount):
                let dir = join(mount, ownPath(controller: ""), group + "/" + name)
                return .success(VMCgroup(layout: layout, cpuDir: dir, memoryDir: dir))
            case let .v1(cpu, memory):
                return .success(VMCgroup(layout: layout, cpuDir: join(cpu, ownPath(controller: "cpu"), group + "/" + name),
                                         memoryDir: join(memory, ownPath(controller: "memory"), group + "/" + name)))
            }
        }
    }

    var isV2: Bool { if case .v2 = layout { return true } else { return false } }
    var version: String { isV2 ? "v2" : "v1" }

    // MARK: Making, applying, moving, removing

    static func write(_ path: String, _ value: String) throws(VireoError) {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw VireoError.system("cannot open \(path)", errno: errno) }
        defer { close(fd) }
        let bytes = Array(value.utf8)
        let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        guard n == bytes.count else { throw VireoError.system("cannot write '\(value)' to \(path)", errno: n < 0 ? errno : EIO) }
    }

    static func makeDirectory(_ path: String) throws(VireoError) {
        guard mkdir(path, 0o755) == 0 || errno == EEXIST else { throw VireoError.system("cannot make the cgroup \(path)", errno: errno) }
    }

    /// Makes the VM's cgroup directories (and the daemon's group above them).
    func create() throws(VireoError) {
        for dir in Set([cpuDir, memoryDir]) {
            let parent = String(dir[..<(dir.lastIndex(of: "/") ?? dir.endIndex)])
            try Self.makeDirectory(parent)
            if isV2 { try Self.enableControllers(parent) }
            try Self.makeDirectory(dir)
        }
        // v1 charges a moved process's pages to its old group unless asked; harmless if refused
        // (newer kernels deprecate it), the VMM is moved before it touches guest RAM anyway.
        if !isV2 { try? Self.write(memoryDir + "/memory.move_charge_at_immigrate", "3") }
    }

    /// v2: the group's children get cpu and memory only if the group, and every group above it up
    /// to the daemon's own, hands them down. A cgroup with processes cannot hand controllers down
    /// (v2's no-internal-process rule), so a daemon in such a cgroup moves itself into a leaf of it first.
    static func enableControllers(_ group: String) throws(VireoError) {
        let parent = String(group[..<(group.lastIndex(of: "/") ?? group.endIndex)])
        let subtree = ProcFS.read(parent + "/cgroup.subtree_control") ?? ""
        if !(subtree.contains("cpu") && subtree.contains("memory")) {
            do { try write(parent + "/cgroup.subtree_control", "+cpu +memory") } catch {
                guard error.errno == EBUSY else { throw error }
                let leaf = parent + "/vireo-daemon"
                try makeDirectory(leaf)
                try write(leaf + "/cgroup.procs", String(getpid()))
                try write(parent + "/cgroup.subtree_control", "+cpu +memory")
            }
        }
        let own = ProcFS.read(group + "/cgroup.subtree_control") ?? ""
        if !(own.contains("cpu") && own.contains("memory")) { try write(group + "/cgroup.subtree_control", "+cpu +memory") }
    }

    /// The kernel's values for a VM's controls, file by file, in the order they are written.
    static func settings(_ c: VMConfig, v2: Bool) -> [(dir: KeyPath<VMCgroup, String>, file: String, value: String)] {
        let shares = c.cpuShares ?? VMConfig.defaultShares
        let quota = c.cpuLimitPct.map { String($0 * 1000) }
        let reservation = c.memoryReservationMiB.map { String(UInt64($0) << 20) }
        let limit = c.memoryLimitMiB.map { String((UInt64($0) << 20) + vmmOverheadBytes) }
        if v2 {
            return [(\.cpuDir, "cpu.weight", String(shares)),
                    (\.cpuDir, "cpu.max", "\(quota ?? "max") \(cpuPeriodMicros)"),
                    (\.memoryDir, "memory.min", reservation ?? "0"),
                    (\.memoryDir, "memory.max", limit ?? "max")]
        }
        return [(\.cpuDir, "cpu.shares", String(max(2, shares * 1024 / 100))),
                (\.cpuDir, "cpu.cfs_period_us", String(cpuPeriodMicros)),
                (\.cpuDir, "cpu.cfs_quota_us", quota ?? "-1"),
                (\.memoryDir, "memory.soft_limit_in_bytes", reservation ?? "-1"),
                (\.memoryDir, "memory.limit_in_bytes", limit ?? "-1")]
    }

    /// Writes the VM's controls. A memory limit below what the VM uses now fails (the kernel
    /// cannot reclaim it: EBUSY), with the numbers.
    func apply(_ c: VMConfig) throws(VireoError) {
        for s in Self.settings(c, v2: isV2) {
            let path = self[keyPath: s.dir] + "/" + s.file
            do { try Self.write(path, s.value) } catch {
                if error.errno == EBUSY, s.file.hasPrefix("memory.") {
                    throw VireoError(.conflict, "the VM uses \(ByteSize.format(usageBytes ?? 0)) now and the kernel could not reclaim enough to hold it to \(s.value) bytes",
                                     hint: "shrink the guest first (`vireo vm balloon NAME SIZE`), or give a higher limit")
                }
                throw error
            }
        }
    }

    /// Moves a process (all its threads) into the VM's cgroups.
    func attach(pid: Int32) throws(VireoError) {
        for dir in Set([cpuDir, memoryDir]) { try Self.write(dir + "/cgroup.procs", String(pid)) }
    }

    /// Removes the VM's directories (once its VMM is gone) and the daemon's group if it is empty.
    func remove() {
        for dir in Set([cpuDir, memoryDir]) {
            rmdir(dir)
            rmdir(String(dir[..<(dir.lastIndex(of: "/") ?? dir.endIndex)]))
        }
    }

    /// What the group's memory controller charges now (guest pages touched + the VMM's own).
    var usageBytes: UInt64? {
        let text = ProcFS.read(memoryDir + (isV2 ? "/memory.current" : "/memory.usage_in_bytes"))
        return text.flatMap { UInt64($0.prefix(while: { $0.isNumber })) }
    }

    /// Reads one control file back (tests and `vireo vm show` use it).
    func read(_ file: String) -> String? {
        let dir = file.hasPrefix("memory.") ? memoryDir : cpuDir
        return ProcFS.read(dir + "/" + file).map { String($0.prefix(while: { $0 != "\n" })) }
    }

    /// Whether `pid` runs in this cgroup (its /proc/PID/cgroup names the VM's directories).
    func contains(pid: Int32) -> Bool {
        guard let text = ProcFS.read("/proc/\(pid)/cgroup") else { return false }
        let name = "/" + String(cpuDir.split(separator: "/").suffix(2).joined(separator: "/"))
        return text.split(separator: "\n").contains { $0.hasSuffix(name) }
    }
}
