import GuestMemory
import KVM
import Testing
import VMM
import VireoSupport

/// The probe guest on the host's real KVM: exits are counted exactly, unmapped accesses reported.
@Suite(.enabled(if: KVMAvailability.available))
struct ProbeGuestTests {
    func run(_ workload: ProbeWorkload, cpus: Int = 1, memory: UInt64 = 64 << 20) throws -> (Machine, MachineExit) {
        let machine = try Machine(config: MachineConfig(boot: .probe(workload), cpus: cpus, memorySize: memory, serial: .none))
        return (machine, machine.run())
    }

    @Test func pioLoopExitsAreCountedExactly() throws {
        let (machine, exit) = try run(.pioLoop(iterations: 1000))
        #expect(exit == .probeDone)
        // 1000 loop exits + the first-instruction marker + the done write.
        #expect(machine.stats[0].pioExits.load(ordering: .relaxed) == 1002)
        #expect(machine.stats[0].mmioExits.load(ordering: .relaxed) == 0)
        #expect(machine.probeFirstInstructionNanos != nil)
    }

    @Test func mmioLoopExitsAreCountedExactly() throws {
        let (machine, exit) = try run(.mmioLoop(iterations: 777, address: ProbeWorkload.defaultMMIOAddress))
        #expect(exit == .probeDone)
        #expect(machine.stats[0].mmioExits.load(ordering: .relaxed) == 777)
        #expect(machine.stats[0].unmappedAccesses.load(ordering: .relaxed) == 0)
    }

    @Test func writeToUnmappedMemoryIsReported() throws {
        let (machine, exit) = try run(.mmioLoop(iterations: 5, address: 0xE000_0000))
        // The machine survives (the write is ignored, as on real hardware) and counts each one.
        #expect(exit == .probeDone)
        #expect(machine.stats[0].unmappedAccesses.load(ordering: .relaxed) == 5)
    }

    @Test func instructionFetchFromNowhereIsAFailureWithDetails() throws {
        let (_, exit) = try run(.executeUnmapped(address: 0xE000_0000))
        // KVM cannot emulate an instruction fetch from an address with no RAM: the machine ends
        // with a non-zero status and one line carrying the details a bug report needs.
        guard case let .failed(why) = exit else {
            Issue.record("expected a failure, got \(exit)")
            return
        }
        #expect(exit.exitStatus == 1)
        #expect(why.contains("vCPU 0"))
        #expect(!why.contains("\n"))
        print("instruction fetch from MMIO ended the VM with: \(why)")
    }

    @Test func dirtyPassTouchesGuestMemory() throws {
        let (machine, exit) = try run(.dirty(passes: 2), memory: 16 << 20)
        #expect(exit == .probeDone)
        // Every page above 2 MiB was incremented twice.
        let first = try machine.memory.read(UInt64.self, at: ProbeGuest.dirtyStart)
        let last = try machine.memory.read(UInt64.self, at: (16 << 20) - 4096)
        #expect(first == 2 && last == 2)
    }

    @Test func computeRunsNatively() throws {
        let (machine, exit) = try run(.compute(iterations: 50_000_000))
        #expect(exit == .probeDone)
        #expect(machine.stats[0].pioExits.load(ordering: .relaxed) == 2)
    }

    @Test func everyVCPURunsTheWorkload() throws {
        // Both vCPUs run the loop; the first to finish stops the machine, so the total is at
        // least one full loop and at most both.
        let (machine, exit) = try run(.pioLoop(iterations: 500), cpus: 2)
        #expect(exit == .probeDone)
        let total = machine.stats.map { $0.pioExits.load(ordering: .relaxed) }.reduce(0, +)
        #expect(total >= 502 && total <= 1004)
    }
}

@Suite(.enabled(if: KVMAvailability.available))
struct MachineValidationTests {
    @Test func zeroCPUsIsRefused() {
        #expect(throws: VireoError.self) {
            _ = try Machine(config: MachineConfig(boot: .probe(.pioLoop(iterations: 1)), cpus: 0, memorySize: 64 << 20))
        }
    }

    @Test func tooManyCPUsIsRefused() {
        #expect(throws: VireoError.self) {
            _ = try Machine(config: MachineConfig(boot: .probe(.pioLoop(iterations: 1)), cpus: 100_000, memorySize: 64 << 20))
        }
    }

    @Test func zeroAndAbsurdMemoryAreRefused() {
        for size: UInt64 in [0, 4095, 1 << 50] {
            #expect(throws: VireoError.self) {
                _ = try Machine(config: MachineConfig(boot: .probe(.pioLoop(iterations: 1)), cpus: 1, memorySize: size))
            }
        }
    }

    @Test func missingKVMDeviceSaysWhatToDo() {
        do {
            _ = try KVMSystem(path: "/nonexistent/kvm")
            Issue.record("opening a missing device succeeded")
        } catch let e as VireoError {
            #expect(e.code == .notFound)
            #expect(e.description.contains("modprobe"))
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }
}
