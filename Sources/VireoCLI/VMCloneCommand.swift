import ArgumentParser
import VireoAPI
import VireoSupport

/// `vireo vm clone SRC NEW [--snapshot SNAP] [--start] [--tap NAME]...` (docs/snapshots.md#clones).
struct VMCloneCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "clone",
        abstract: "Make a new VM from SRC: from a snapshot it runs on from the snapshot's state; without one, the stopped VM's disks are copied.",
        discussion: """
            The clone gets its own MAC addresses, vsock CID and VM generation ID (a Linux guest reseeds its RNG when it sees it change).
            From a snapshot its read-write disks are overlays of the disks as they were at the snapshot, and its first start restores the
            snapshot's running state. Give a TAP per NIC of SRC, in order.
            Example: vireo vm clone web web2 --snapshot golden --tap tap-web2 --start
            """)
    @OptionGroup var client: ClientOptions
    @Argument(help: "The VM to clone.") var source: String
    @Argument(help: "The new VM's name.") var name: String
    @Option(help: "Clone the running state saved in this snapshot of SRC (`vireo vm snapshot list SRC`).") var snapshot: String?
    @Flag(help: "Start the clone once it is made.") var start = false
    @Option(name: .customLong("tap"), help: "A TAP for the clone's NIC (once per NIC of SRC, in order).") var taps: [String] = []

    func run() throws {
        try reportingErrors {
            let body = VMClone(name: name, snapshot: snapshot, start: start ? true : nil, taps: taps.isEmpty ? nil : taps)
            let vm = try client.makeClient().call("POST", "/v1/vms/\(pathSafe(source))/clone", body: APIJSON.encode(body), as: VM.self)
            if client.json { print(String(decoding: APIJSON.encode(vm, pretty: true), as: UTF8.self)); return }
            let macs = vm.definition.nics.compactMap(\.mac)
            print("cloned \(source)\(snapshot.map { " (snapshot \($0))" } ?? "") as \(vm.name): \(vm.state.rawValue)"
                  + (macs.isEmpty ? "" : ", MAC \(macs.joined(separator: ", "))")
                  + (vm.definition.vsockCID.map { ", vsock CID \($0)" } ?? ""))
        }
    }
}
