import ArgumentParser

/// `vireo disk ...`: qemu-img-style image tools (owned by the DiskImage work).
public struct DiskCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "disk", abstract: "Create, inspect, convert and snapshot disk images.")
    public init() {}
}
