import KVM
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Tests that need /dev/kvm run where it exists and is usable, and say why when skipped.
enum KVMAvailability {
    static let reason: String? = {
        if access("/dev/kvm", F_OK) != 0 { return "/dev/kvm does not exist on this machine" }
        if access("/dev/kvm", R_OK | W_OK) != 0 { return "/dev/kvm is not readable and writable by this user" }
        return nil
    }()

    static var available: Bool {
        if let reason {
            print("SKIPPED (KVM tests): \(reason)")
            return false
        }
        return true
    }
}
