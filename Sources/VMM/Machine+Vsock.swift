import Virtio

extension Machine {
    func setUpVsock(_ config: VirtioConfig.Vsock?, wiring: VirtioWiring) throws {
        guard config != nil else { return }
    }
}
