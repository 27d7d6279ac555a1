import ArgumentParser
import VireoAPI
import VireoSupport

/// `vireo vm balloon NAME [SIZE]`: a running VM's balloon, or a new target for it.
struct VMBalloonCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "balloon",
        abstract: "Show a running VM's balloon, or set how much memory its guest should give back.",
        discussion: """
            Example: vireo vm balloon web 256M   (the guest driver inflates towards 256 MiB on its own
            time; run it again without a size to watch). The VM needs a balloon device (created with
            --balloon); the size it starts with does not change.
            """)
    @OptionGroup var client: ClientOptions
    @Argument var name: String
    @Argument(help: "New target, like 256M or 1G (a bare number is MiB); 0 deflates it.") var size: String?

    func run() throws {
        try reportingErrors {
            let c = try client.makeClient()
            let path = "/v1/vms/\(pathSafe(name))/balloon"
            let state: BalloonState
            if let size {
                let mib = Int(try parseSize(size, option: "SIZE") >> 20)
                state = try c.call("POST", path, body: APIJSON.encode(BalloonRequest(targetMiB: mib)), as: BalloonState.self)
            } else {
                state = try c.call("GET", path, as: BalloonState.self)
            }
            if client.json { print(String(decoding: APIJSON.encode(state, pretty: true), as: UTF8.self)); return }
            print("\(name): balloon target \(state.targetMiB) MiB, the guest holds \(state.actualMiB) MiB")
        }
    }
}
