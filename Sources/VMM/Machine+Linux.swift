import CLinux
import Devices
import GuestMemory
import KVM
import VireoSupport
import X86Boot
#if canImport(Glibc)
import Glibc
#endif

/// An ISA interrupt line of the in-kernel PIC/IOAPIC, driven with KVM_IRQ_LINE.
final class KVMInterruptLine: InterruptLine, @unchecked Sendable {
    let vm: VirtualMachine
    let irq: UInt32
    init(vm: VirtualMachine, irq: UInt32) { self.vm = vm; self.irq = irq }
    func set(level: Bool) { try? vm.setIRQLine(irq, level: level) }
}

/// The devices of a Linux machine: legacy PC ports and MMIO.
final class PlatformDevices: ExitHandler, @unchecked Sendable {
    let ports = PortIOBus()
    let mmio = MMIOBus()

    func handlePortIO(_ io: IOExit, vcpu: Int) -> Bool {
        // String I/O (rep outsb) arrives as count > 1: replay it one element at a time.
        if io.count <= 1 {
            return io.isWrite ? ports.write(port: io.port, data: UnsafeRawBufferPointer(io.data))
                              : ports.read(port: io.port, data: io.data)
        }
        var handled = true
        for i in 0..<io.count {
            let element = UnsafeMutableRawBufferPointer(rebasing: io.data[(i * io.size)..<((i + 1) * io.size)])
            handled = (io.isWrite ? ports.write(port: io.port, data: UnsafeRawBufferPointer(element))
                                  : ports.read(port: io.port, data: element)) && handled
        }
        return handled
    }

    func handleMMIO(_ m: MMIOExit, vcpu: Int) -> Bool {
        m.isWrite ? mmio.write(address: m.address, data: UnsafeRawBufferPointer(m.data))
                  : mmio.read(address: m.address, data: m.data)
    }
}

extension Machine {
    /// Interrupt controllers, Linux's boot layout in guest memory, vCPU state, and the legacy devices.
    func setUpLinux(restoring: RestoreSource? = nil) throws {
        guard case let .linux(kernelPath, initrdPath, cmdline) = config.boot else { return }
        if let restoring { try restoreLinux(restoring); return }

        let kernelFD = try OwnedFD.open(kernelPath, flags: O_RDONLY, purpose: "read kernel")
        let initrdFD = try initrdPath.map { try OwnedFD.open($0, flags: O_RDONLY, purpose: "read initrd") }
        var initrdSize: UInt64?
        if let initrdFD, let initrdPath {
            var st = stat()
            guard fstat(initrdFD.rawValue, &st) == 0 else { throw VireoError.system("cannot stat initrd \(initrdPath)") }
            guard (st.st_mode & S_IFMT) == S_IFREG else { throw VireoError(.invalidArgument, "initrd \(initrdPath) is not a regular file") }
            initrdSize = UInt64(max(0, st.st_size))
        }
        let plan = try LinuxBoot.plan(kernelPath: kernelPath, config: BootConfig(
            memorySize: config.memorySize, cpuCount: config.cpus, cmdline: cmdline, initrdSize: initrdSize))

        for blob in plan.blobs {
            do { try memory.write(blob.bytes, at: blob.address) } catch {
                throw VireoError(.outOfRange, "the \(blob.label) at \(hex(blob.address)) does not fit in guest memory", hint: "give more --memory")
            }
        }
        try writeGenerationIDAtBoot()
        for segment in plan.kernelSegments where segment.fileSize > 0 {
            // Guest RAM starts zeroed, so the part past fileSize (bss) needs no writes.
            try memory.load(fromFD: kernelFD.rawValue, offset: segment.fileOffset, count: segment.fileSize,
                            at: segment.guestAddress, what: "kernel \(kernelPath)")
        }
        if let initrdFD, let initrdSize, let at = plan.initrdAddress, initrdSize > 0 {
            try memory.load(fromFD: initrdFD.rawValue, offset: 0, count: initrdSize, at: at, what: "initrd \(initrdPath ?? "")")
        }

        let supported = try kvm.supportedCPUID().map {
            CPUIDEntry(function: $0.function, index: $0.index, flags: $0.flags, eax: $0.eax, ebx: $0.ebx, ecx: $0.ecx, edx: $0.edx)
        }
        for (index, vcpu) in vcpus.enumerated() {
            let leaves = CPUIDPolicy.entries(from: supported, vcpuIndex: index, vcpuCount: config.cpus).map {
                CPUIDLeaf(function: $0.function, index: $0.index, flags: $0.flags, eax: $0.eax, ebx: $0.ebx, ecx: $0.ecx, edx: $0.edx)
            }
            if index == 0 {
                offeredCPUFeatures = CPUFeatures.of(CPUIDPolicy.entries(from: supported, vcpuIndex: 0, vcpuCount: config.cpus))
                for l in leaves where [0x1, 0x7, 0xD].contains(l.function) {
                    DebugLog.log("cpuid \(hex(l.function)).\(l.index) flags \(l.flags) eax \(hex(l.eax)) ebx \(hex(l.ebx)) ecx \(hex(l.ecx)) edx \(hex(l.edx))")
                }
            }
            try vcpu.setCPUID(leaves)
            // XCR0 starts as every user state component the guest is offered (Linux enables
            // exactly those), not the reset value x87-only. KVM computes CPUID 0xD.0 EBX (the
            // XSAVE area size) from XCR0 when the guest changes CR4 or XCR0; a nested L1 that
            // does not see the guest's XSETBV (QEMU TCG's SVM) would otherwise leave EBX at
            // the x87-only size and Linux would switch XSAVE off ("XSAVE consistency problem").
            if let d0 = leaves.first(where: { $0.function == 0xD && $0.index == 0 }), d0.eax & 0x3 == 0x3 {
                do { try vcpu.setXCR0(UInt64(d0.eax) | UInt64(d0.edx) << 32) } catch {
                    DebugLog.log("vCPU \(index): XCR0 left at its reset value: \(error)")
                }
            }
            try vcpu.setMSRs(plan.bsp.msrs.map { ($0.index, $0.value) })
            try Machine.wireLocalInterrupts(vcpu)
            if index == 0 { try Machine.load(plan.bsp, into: vcpu) }
        }

        try setUpLinuxDevices()
    }

    /// The platform devices of a Linux machine (the same whether it boots or is restored).
    func setUpLinuxDevices() throws {
        let platform = PlatformDevices()
        let serial = try setUpSerial(on: platform, interrupt: KVMInterruptLine(vm: vm, irq: 4))
        let stop = self.stop
        let i8042 = I8042(resetRequested: { stop.request(.reset("i8042 reset")) })
        try platform.ports.register(i8042, port: 0x60, count: 1, name: "i8042 data")
        try platform.ports.register(i8042, port: 0x64, count: 1, origin: 0x60, name: "i8042 command")
        let rtc = CMOSRTC()
        let low = min(config.memorySize, X86MemoryLayout.mmioHoleStart)
        rtc.setMemorySize(belowFourGiB: low, aboveFourGiB: config.memorySize - low)
        try platform.ports.register(rtc, port: 0x70, count: 2, name: "CMOS RTC")
        // ACPI soft-off (the guest's `poweroff`) and the power button (an ACPI shutdown request).
        let sleep = ACPISleepControl { type in
            if type == ACPITables.s5SleepType { stop.request(.poweroff) }
        }
        try platform.ports.register(sleep, port: ACPITables.sleepControlPort, count: 2, name: "ACPI sleep registers")
        powerButton = ACPIPowerButton(line: KVMInterruptLine(vm: vm, irq: ACPITables.powerButtonGSI))
        try setUpVirtio(platform: platform)
        legacy = (serial, i8042, rtc)
        devices = platform
    }

    /// CPUID as at boot, then the saved state: the interrupt controllers, PIT and clock, each
    /// vCPU, and the devices. Nothing is loaded from the kernel file: RAM is the snapshot's.
    func restoreLinux(_ source: RestoreSource) throws {
        let supported = try kvm.supportedCPUID().map {
            CPUIDEntry(function: $0.function, index: $0.index, flags: $0.flags, eax: $0.eax, ebx: $0.ebx, ecx: $0.ecx, edx: $0.edx)
        }
        offeredCPUFeatures = try Machine.cpuFeatures(CPUIDPolicy.entries(from: supported, vcpuIndex: 0, vcpuCount: config.cpus), restoring: source)
        for (index, vcpu) in vcpus.enumerated() {
            let leaves = CPUIDPolicy.entries(from: supported, vcpuIndex: index, vcpuCount: config.cpus).map {
                CPUIDLeaf(function: $0.function, index: $0.index, flags: $0.flags, eax: $0.eax, ebx: $0.ebx, ecx: $0.ecx, edx: $0.edx)
            }
            try vcpu.setCPUID(leaves)
        }
        guard let chips = source.snapshot.chips else { throw VireoError(.corrupt, "snapshot: a Linux machine without interrupt-controller state") }
        try vm.restoreChipState(chips)
        for (vcpu, state) in zip(vcpus, source.snapshot.vcpus) {
            guard state.lapic != nil else { throw VireoError(.corrupt, "snapshot: vCPU \(vcpu.id) has no LAPIC state") }
            try vcpu.restoreState(state)
        }
        try setUpLinuxDevices()
        try restoreDevices(source.snapshot.devices)
        try applyGenerationIDOnRestore(saved: source.savedGenerationID)
    }

    /// LVT0 as ExtINT (the PIC's output) and LVT1 as NMI, as firmware leaves them for Linux.
    static func wireLocalInterrupts(_ vcpu: VCPU) throws {
        var lapic = try vcpu.lapic()
        withUnsafeMutableBytes(of: &lapic.regs) { regs in
            func set(_ offset: Int, mode: UInt32) {
                let old = regs.loadUnaligned(fromByteOffset: offset, as: UInt32.self)
                regs.storeBytes(of: (old & ~0x700) | (mode << 8), toByteOffset: offset, as: UInt32.self)
            }
            set(0x350, mode: 7)   // LINT0: ExtINT
            set(0x360, mode: 4)   // LINT1: NMI
        }
        try vcpu.setLAPIC(lapic)
    }

    /// Registers, segments, control registers and FPU of the boot CPU.
    static func load(_ s: VCPUBootState, into vcpu: VCPU) throws {
        var sregs = try vcpu.specialRegisters()
        sregs.cs = kvmSegment(s.cs); sregs.ds = kvmSegment(s.ds); sregs.es = kvmSegment(s.es)
        sregs.fs = kvmSegment(s.fs); sregs.gs = kvmSegment(s.gs); sregs.ss = kvmSegment(s.ss)
        sregs.tr = kvmSegment(s.tr); sregs.ldt = kvmSegment(s.ldt)
        sregs.gdt.base = s.gdt.base; sregs.gdt.limit = s.gdt.limit
        sregs.idt.base = s.idt.base; sregs.idt.limit = s.idt.limit
        sregs.cr0 = s.cr0; sregs.cr3 = s.cr3; sregs.cr4 = s.cr4; sregs.efer = s.efer
        try vcpu.setSpecialRegisters(sregs)

        var regs = kvm_regs()
        regs.rip = s.rip; regs.rsp = s.rsp; regs.rbp = s.rbp; regs.rsi = s.rsi; regs.rbx = s.rbx; regs.rflags = s.rflags
        try vcpu.setRegisters(regs)

        var fpu = kvm_fpu()
        fpu.fcw = s.fpuControlWord
        fpu.mxcsr = s.mxcsr
        try vcpu.setFPU(fpu)
    }

    static func kvmSegment(_ r: SegmentRegister) -> kvm_segment {
        var k = kvm_segment()
        k.base = r.base; k.limit = r.limit; k.selector = r.selector; k.type = r.type
        k.present = r.present ? 1 : 0; k.dpl = r.dpl; k.db = r.db ? 1 : 0; k.s = r.s ? 1 : 0
        k.l = r.l ? 1 : 0; k.g = r.g ? 1 : 0; k.avl = r.avl ? 1 : 0; k.unusable = r.unusable ? 1 : 0
        return k
    }
}
