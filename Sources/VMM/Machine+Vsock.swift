import CLinux
import VireoSupport
import Virtio
#if canImport(Glibc)
import Glibc
#endif

extension Machine {
    /// virtio-vsock with Firecracker-style host unix sockets; every host socket is watched by
    /// the event loop (edge-triggered) and readiness kicks the device's receive queue.
    func setUpVsock(_ config: VirtioConfig.Vsock?, wiring: VirtioWiring) throws {
        guard let config else { return }
        let vsock = try VirtioVsock(guestCID: config.cid, socketPath: config.socketPath)
        let slot = try wiring.attach(vsock, name: "virtio-vsock cid \(config.cid)", id: "vsock")
        let rx = slot.doorbells[0]
        let loop = wiring.loop
        vsock.watch = { fd in
            try? loop.add(fd: fd, events: EPOLLIN.rawValue | EPOLLOUT.rawValue | EPOLLET.rawValue | EPOLLRDHUP.rawValue) { _ in
                vsock.noteReady(fd: fd)
                rx.signal()
                return false
            }
        }
        vsock.unwatch = { fd in loop.remove(fd: fd) }
        try loop.add(fd: vsock.listenerFD, events: EPOLLIN.rawValue | EPOLLET.rawValue) { _ in rx.signal(); return false }
        resources.append(vsock)
    }
}
