/// The only "firmware" Vireo has: 7 bytes of real-mode code at the x86 reset vector
/// (F000:FFF0, physical 0xFFFF0). A guest that reboots by jumping there (Linux's BOOT_BIOS
/// path, which it takes on hardware-reduced ACPI machines without EFI) pulses the i8042 reset
/// line, which ends the VM exactly like `reboot=k` does.
public enum ResetVector {
    public static let address: UInt64 = 0xF_FFF0
    /// mov al, 0xFE / out 0x64, al / hlt / jmp back to the out
    public static let code: [UInt8] = [0xB0, 0xFE, 0xE6, 0x64, 0xF4, 0xEB, 0xFB]
}
