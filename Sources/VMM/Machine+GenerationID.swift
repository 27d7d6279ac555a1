import GuestMemory
import VireoConfig
import VireoSupport
import X86Boot

/// The VM generation ID (Microsoft's "Virtual Machine Generation ID" device, which Linux's
/// vmgenid driver, Windows and Hyper-V read): 16 bytes at `ACPITables.generationIDAddress`
/// that the DSDT's \_SB.VGEN points at. A guest that sees them change knows it was cloned or
/// went back to a snapshot, and reseeds its RNG (Linux logs "crng reseeded due to virtual
/// machine fork"). The VM configuration carries it (`generation_id`), so a snapshot records
/// the one its guest saw.
extension Machine {
    /// At boot: the configuration's ID, or a new one recorded in it, into guest memory.
    func writeGenerationIDAtBoot() throws {
        let id = vmConfig?.generationID ?? VMConfig.newGenerationID()
        if vmConfig != nil { vmConfig?.generationID = id }
        try writeGenerationID(id)
    }

    /// On restore: when the configuration names another ID than the snapshot's guest saw (a
    /// clone, a revert), the new one goes into guest memory and the GED tells the guest. A
    /// snapshot from before the device existed has no ID (and no VGEN in its tables): nothing
    /// is written, and its configuration keeps none.
    func applyGenerationIDOnRestore(saved: String?) throws {
        guard let saved else {
            vmConfig?.generationID = nil
            return
        }
        guard let wanted = vmConfig?.generationID, VMConfig.generationIDBytes(wanted) != VMConfig.generationIDBytes(saved) else {
            vmConfig?.generationID = saved
            return
        }
        try writeGenerationID(wanted)
        KVMInterruptLine(vm: vm, irq: ACPITables.generationIDGSI).pulse()
        DebugLog.log("generation ID changed on restore: \(saved) -> \(wanted)")
    }

    private func writeGenerationID(_ id: String) throws {
        guard let bytes = VMConfig.generationIDBytes(id) else {
            throw VireoError(.invalidArgument, "generation_id '\(id.prefix(40))' is not 32 hex digits", hint: "leave it out and one is chosen")
        }
        try memory.write(bytes, at: ACPITables.generationIDAddress)
    }
}
