// swift-tools-version: 6.1
import PackageDescription

// Vireo: a KVM virtual machine monitor, host daemon and disk-image toolkit in Swift.
// Layering (lower never imports higher):
//   CLinux -> VireoSupport -> {KVM, GuestMemory} -> {X86Boot, Devices} -> VMM -> VireoCLI -> vireo
//   DiskImage stands alone (VireoSupport + CZlib + CZstd) and is used by the VMM's virtio-blk and the CLI.
let package = Package(
    name: "Vireo",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "vireo", targets: ["vireo"]),
        .library(name: "DiskImage", targets: ["DiskImage"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
    ],
    targets: [
        // C shims: linux/kvm.h request numbers, offsetof helpers, tun/eventfd/userfaultfd.
        .target(name: "CLinux"),
        // zlib for qcow2 compressed clusters (Debian's zlib1g-dev).
        .systemLibrary(name: "CZlib"),
        // zstd for qcow2 compression_type=zstd clusters (Debian's libzstd-dev).
        .systemLibrary(name: "CZstd"),
        // The probe guest: ring-0 setup + ring-3 workloads, assembled by the build's own clang.
        .target(name: "CProbeGuest"),
        .target(name: "VireoSupport", dependencies: ["CLinux"]),
        .target(name: "KVM", dependencies: ["CLinux", "VireoSupport"]),
        .target(name: "GuestMemory", dependencies: ["CLinux", "VireoSupport"]),
        .target(name: "X86Boot", dependencies: ["VireoSupport"]),
        .target(name: "Devices", dependencies: ["VireoSupport", "GuestMemory"]),
        .target(name: "DiskImage", dependencies: ["VireoSupport", "CZlib", "CZstd"]),
        // PCI bus, virtio-pci transport, virtqueues and the virtio device back ends.
        .target(name: "Virtio", dependencies: ["VireoSupport", "GuestMemory", "Devices", "DiskImage"]),
        // One VM's description (VMConfig): the API, the inventory and the VMM share it.
        .target(name: "VireoConfig"),
        .target(name: "VMM", dependencies: [
            "VireoConfig", "CLinux", "VireoSupport", "KVM", "GuestMemory", "X86Boot", "Devices", "Virtio", "DiskImage", "CProbeGuest", "CZstd",
        ]),
        // The host daemon's API: Codable models, the OpenAPI document, a blocking HTTP client.
        .target(name: "VireoAPI", dependencies: ["VireoSupport", "VireoConfig"]),
        // System libsqlite3 (Debian's libsqlite3-dev) for the daemon's inventory.
        .systemLibrary(name: "CSQLite"),
        // `vireo host`: REST server, inventory, VMM supervision, metrics.
        .target(name: "Host", dependencies: [
            "CLinux", "VireoAPI", "VireoSupport", "CSQLite", "DiskImage",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "NIOWebSocket", package: "swift-nio"),
        ]),
        .target(name: "VireoCLI", dependencies: [
            "VMM", "DiskImage", "KVM", "VireoSupport", "VireoAPI", "Host",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "vireo", dependencies: ["VireoCLI"]),

        // What the test targets share: finding the built `vireo` binary.
        .target(name: "VireoTestSupport", dependencies: ["VireoSupport"]),

        .testTarget(name: "VireoConfigTests", dependencies: ["VireoConfig"]),
        .testTarget(name: "X86BootTests", dependencies: ["X86Boot", "VireoSupport", "VireoTestSupport"]),
        .testTarget(name: "DevicesTests", dependencies: ["Devices", "VireoSupport", "VireoTestSupport"]),
        .testTarget(name: "VirtioTests", dependencies: ["Virtio", "Devices", "GuestMemory", "VireoSupport", "VireoTestSupport"], exclude: ["Corpus"]),
        .testTarget(name: "DiskImageTests", dependencies: ["DiskImage", "VireoSupport", "VireoTestSupport"]),
        .testTarget(name: "KVMTests", dependencies: ["KVM", "GuestMemory", "VMM", "VireoSupport", "CProbeGuest"]),
        .testTarget(name: "HostTests", dependencies: ["Host", "VireoAPI", "VireoSupport", "DiskImage", "VireoTestSupport"]),
        .testTarget(name: "VMMTests", dependencies: ["VMM", "X86Boot", "VireoSupport", "VireoTestSupport"]),
    ]
)
