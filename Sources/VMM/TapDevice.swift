import CLinux
import VireoSupport
import Virtio
#if canImport(Glibc)
import Glibc
#endif

/// A Linux TAP interface opened with IFF_VNET_HDR (12-byte virtio-net header, as virtio 1.x
/// uses), non-blocking. TUNSETIFF attaches to an existing TAP or creates it; creating one needs
/// CAP_NET_ADMIN, attaching to one made with `ip tuntap add NAME mode tap user USER` does not.
final class TapDevice: NetBackend, @unchecked Sendable {
    let fd: OwnedFD
    let name: String
    let supportsOffloads: Bool

    init(name: String) throws {
        let opened = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC)
        guard opened >= 0 else {
            throw VireoError.system("--net tap=\(name): cannot open /dev/net/tun",
                                    hint: "load the tun module (modprobe tun) and check /dev/net/tun's permissions")
        }
        fd = OwnedFD(taking: opened)
        self.name = name
        var ifr = ifreq()
        let bytes = Array(name.utf8.prefix(15))
        withUnsafeMutableBytes(of: &ifr.ifr_ifrn.ifrn_name) { dst in
            for (i, b) in bytes.enumerated() { dst[i] = b }
        }
        // Multi-queue when it can be (IFF_MULTI_QUEUE): a second VMM (the destination of a live
        // migration on this host) can then attach to the same TAP while the first still holds
        // it, and the interface and its addresses outlive the first. A TAP made without it
        // (by hand) takes single-queue attaches only.
        let multiQueue: Int32 = 0x0100
        ifr.ifr_ifru.ifru_flags = Int16(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | multiQueue)
        var failed = vireo_ioctl_ptr(fd.rawValue, VIREO_TUNSETIFF, &ifr) != 0
        if failed && errno == EINVAL {
            ifr.ifr_ifru.ifru_flags = Int16(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
            failed = vireo_ioctl_ptr(fd.rawValue, VIREO_TUNSETIFF, &ifr) != 0
        }
        if failed {
            let e = errno
            if e == EPERM || e == EACCES {
                throw VireoError.system("--net tap=\(name): cannot create or attach to the TAP device", errno: e,
                                        hint: "creating a TAP needs CAP_NET_ADMIN: run vireo as root, or create it first with `ip tuntap add \(name) mode tap user $(id -un)`")
            }
            throw VireoError.system("--net tap=\(name): TUNSETIFF failed", errno: e,
                                    hint: e == EINVAL ? "\(name) exists but is not a TAP with a vnet header (a TUN, or in use); pick another name" : nil)
        }
        var size: Int32 = Int32(VirtioNet.headerSize)
        guard vireo_ioctl_ptr(fd.rawValue, VIREO_TUNSETVNETHDRSZ, &size) == 0 else {
            throw VireoError.system("--net tap=\(name): the kernel refuses a 12-byte vnet header (TUNSETVNETHDRSZ)")
        }
        // Offloads are offered to the guest only when the TAP accepts them.
        let all = UInt(VirtioNet.TunOffload.csum | VirtioNet.TunOffload.tso4 | VirtioNet.TunOffload.tso6 | VirtioNet.TunOffload.ecn)
        supportsOffloads = vireo_ioctl(fd.rawValue, VIREO_TUNSETOFFLOAD, all) == 0
        _ = vireo_ioctl(fd.rawValue, VIREO_TUNSETOFFLOAD, 0)
    }

    func receive(into buffer: UnsafeMutableRawBufferPointer) throws -> Int? {
        while true {
            let n = read(fd.rawValue, buffer.baseAddress, buffer.count)
            if n >= 0 { return n }
            switch errno {
            case EINTR: continue
            case EAGAIN: return nil
            default: throw VireoError.system("TAP \(name) read failed")
            }
        }
    }

    func send(_ frame: UnsafeRawBufferPointer) throws -> Bool {
        while true {
            let n = write(fd.rawValue, frame.baseAddress, frame.count)
            if n >= 0 { return true }
            switch errno {
            case EINTR: continue
            // Full, or the interface is down / the frame was rejected: drop, as a NIC would.
            case EAGAIN, EIO, EINVAL, ENOBUFS: return false
            default: DebugLog.log("TAP \(name) write failed: \(VireoError.strerror(errno))"); return false
            }
        }
    }

    func setReceiveOffloads(_ tunFlags: UInt32) {
        _ = vireo_ioctl(fd.rawValue, VIREO_TUNSETOFFLOAD, UInt(tunFlags))
    }
}
