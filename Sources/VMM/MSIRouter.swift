import CLinux
import Devices
import GuestMemory
import KVM
import Synchronization
import VireoSupport
import Virtio
#if canImport(Glibc)
import Glibc
#endif

/// MSI-X delivery through KVM: each (device, vector) the guest programs gets a GSI with an MSI
/// route (KVM_SET_GSI_ROUTING, on top of the default ISA routes) and an irqfd bound to it, so
/// the event loop raises an interrupt by writing an eventfd. A message that does not match the
/// current route yet (the guest just reprogrammed the entry) goes through KVM_SIGNAL_MSI instead.
final class KVMMSIRouter: MSIDelivery, @unchecked Sendable {
    struct Key: Hashable { var source: MSISource; var vector: UInt16 }
    struct Route { let gsi: UInt32; let eventFD: EventFD; var message: MSIMessage }
    struct State { var routes: [Key: Route] = [:]; var nextGSI: UInt32 = 24; var failed = false }

    /// KVM allows 4096 routes (KVM_MAX_IRQ_ROUTES); stay well inside.
    static let maxGSI: UInt32 = 2048

    let vm: VirtualMachine
    private let state = Mutex(State())

    init(vm: VirtualMachine) { self.vm = vm }

    func deliver(source: MSISource, vector: UInt16, message: MSIMessage) {
        let fd: EventFD? = state.withLock { s in
            guard let r = s.routes[Key(source: source, vector: vector)], r.message == message else { return nil }
            return r.eventFD
        }
        if let fd { fd.signal(); return }
        do { try vm.signalMSI(address: message.address, data: message.data) } catch {
            DebugLog.log("MSI to \(hex(message.address))/\(hex(message.data)) from \(source) failed: \(error)")
        }
    }

    /// Mirrors one device's MSI-X table into GSI routes (called when the guest changes it).
    func update(source: MSISource, routes: [VirtioPCIDevice.InterruptRoute]) {
        state.withLock { s in
            guard !s.failed else { return }
            var fresh: [Key] = []
            var changed = false
            for r in routes {
                guard let m = r.message, m.address != 0 else { continue }
                let key = Key(source: source, vector: r.vector)
                if var existing = s.routes[key] {
                    if existing.message != m { existing.message = m; s.routes[key] = existing; changed = true }
                    continue
                }
                guard s.nextGSI < Self.maxGSI, let efd = try? EventFD() else { continue }
                s.routes[key] = Route(gsi: s.nextGSI, eventFD: efd, message: m)
                s.nextGSI += 1
                fresh.append(key)
                changed = true
            }
            guard changed else { return }
            let table = GSIRoute.defaultX86() + s.routes.values.sorted { $0.gsi < $1.gsi }.map {
                GSIRoute(gsi: $0.gsi, kind: .msi(address: $0.message.address, data: $0.message.data))
            }
            do {
                try vm.setGSIRouting(table)
                for key in fresh {
                    guard let r = s.routes[key] else { continue }
                    try vm.registerIRQFD(eventFD: r.eventFD.fd, gsi: r.gsi)
                }
            } catch {
                // Keep working without irqfds: every interrupt then takes KVM_SIGNAL_MSI.
                DebugLog.log("MSI routing disabled: \(error)")
                s.failed = true
                s.routes.removeAll()
            }
        }
    }
}
