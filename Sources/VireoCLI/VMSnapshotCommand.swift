import ArgumentParser
import VireoAPI
import VireoSupport

/// `vireo vm snapshot create|list|revert|delete NAME [SNAP]`: snapshots of a VM's running state.
struct VMSnapshotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot",
        abstract: "Save, list, revert to and delete snapshots of a VM's running state (docs/snapshots.md).",
        subcommands: [Create.self, List.self, Revert.self, Delete.self])

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Save the running (or paused) VM's state as SNAP; the VM goes on.")
        @OptionGroup var client: ClientOptions
        @Argument var name: String
        @Argument var snapshot: String
        func run() throws {
            try reportingErrors {
                let s = try client.makeClient().call("POST", "/v1/vms/\(pathSafe(name))/snapshots", body: APIJSON.encode(SnapshotCreate(name: snapshot)), as: Snapshot.self)
                if client.json { print(String(decoding: APIJSON.encode(s, pretty: true), as: UTF8.self)); return }
                print("snapshot \(s.name) of \(s.vm): \(ByteSize.format(UInt64(max(0, s.sizeBytes)))) on disk for \(ByteSize.format(UInt64(max(0, s.memoryBytes)))) of RAM (the VM was \(s.vmState.rawValue))")
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List a VM's snapshots.")
        @OptionGroup var client: ClientOptions
        @Argument var name: String
        func run() throws {
            try reportingErrors {
                let l = try client.makeClient().call("GET", "/v1/vms/\(pathSafe(name))/snapshots", as: SnapshotList.self)
                if client.json { print(String(decoding: APIJSON.encode(l, pretty: true), as: UTF8.self)); return }
                var rows = [["SNAPSHOT", "CREATED", "VM STATE", "SIZE"]]
                for s in l.snapshots { rows.append([s.name, s.createdAt, s.vmState.rawValue, ByteSize.format(UInt64(max(0, s.sizeBytes)))]) }
                printTable(rows)
            }
        }
    }

    struct Revert: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "End the VM's VMM and run it again from SNAP, where the snapshot left it.")
        @OptionGroup var client: ClientOptions
        @Argument var name: String
        @Argument var snapshot: String
        func run() throws {
            try reportingErrors {
                let vm = try client.makeClient().call("POST", "/v1/vms/\(pathSafe(name))/snapshots/\(pathSafe(snapshot))/revert", as: VM.self)
                printActionResult(vm, json: client.json)
            }
        }
    }

    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a snapshot.")
        @OptionGroup var client: ClientOptions
        @Argument var name: String
        @Argument var snapshot: String
        func run() throws {
            try reportingErrors {
                let r = try client.makeClient().request("DELETE", "/v1/vms/\(pathSafe(name))/snapshots/\(pathSafe(snapshot))")
                try APIClient.check(r)
                print("deleted snapshot \(snapshot) of \(name)")
            }
        }
    }
}
