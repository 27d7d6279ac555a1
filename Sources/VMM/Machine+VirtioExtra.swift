import Virtio

extension Machine {
    /// Balloon, net and vsock (filled in by their own files).
    func setUpExtraVirtio(_ v: VirtioConfig, loop: EventLoop, attach: (any VirtioDevice, String) throws -> VirtioPCISlot) throws {
    }
}
