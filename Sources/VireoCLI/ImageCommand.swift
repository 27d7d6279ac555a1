import ArgumentParser
import Dispatch
import VireoAPI
import VireoSupport
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// `vireo image ...`: the host daemon's image store (DATA_DIR/images).
struct ImageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image",
        abstract: "The daemon's disk-image store: create, import, list, resize, delete; VMs use them with --disk image=NAME.",
        subcommands: [ImageListCommand.self, ImageCreateCommand.self, ImageImportCommand.self, ImageShowCommand.self,
                      ImageResizeCommand.self, ImageDeleteCommand.self])
}

func printImage(_ i: Image) {
    print("""
    name:         \(i.name)
    format:       \(i.format.rawValue)
    state:        \(i.state.rawValue)\(i.progressPercent.map { " (\($0)%)" } ?? "")
    virtual size: \(ByteSize.format(UInt64(max(0, i.virtualSizeBytes)))) (\(i.virtualSizeBytes) bytes)
    on disk:      \(ByteSize.format(UInt64(max(0, i.actualSizeBytes))))
    backing:      \(i.backingImage ?? "-")
    path:         \(i.path)
    used by:      \(usersText(i))
    """)
}

func usersText(_ i: Image) -> String {
    let u = i.usedByVMs.map { "vm " + $0 } + i.usedByTemplates.map { "template " + $0 } + i.usedByImages.map { "image " + $0 }
    return u.isEmpty ? "-" : u.joined(separator: ", ")
}

struct ImageListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the store's images.")
    @OptionGroup var client: ClientOptions
    func run() throws {
        try reportingErrors {
            let r = try client.makeClient().request("GET", "/v1/images")
            try APIClient.check(r)
            if client.json { print(r.text); return }
            var rows = [["NAME", "FORMAT", "STATE", "VIRTUAL", "ON DISK", "BACKING", "USED BY"]]
            for i in try client.decode(ImageList.self, r).images {
                rows.append([i.name, i.format.rawValue, i.state.rawValue + (i.progressPercent.map { " \($0)%" } ?? ""),
                             ByteSize.format(UInt64(max(0, i.virtualSizeBytes))), ByteSize.format(UInt64(max(0, i.actualSizeBytes))),
                             i.backingImage ?? "-", usersText(i)])
            }
            printTable(rows)
        }
    }
}

struct ImageCreateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create", abstract: "Create an empty image (or, with --backing, a thin overlay of another image).",
        discussion: "Example: vireo image create data --size 20G --provisioning thick")
    @OptionGroup var client: ClientOptions
    @Argument(help: "Image name: 1-63 of a-z, 0-9 and '-'.") var name: String
    @Option(help: "Virtual size, like 10G or 512M (optional with --backing).") var size: String?
    @Option(help: "qcow2 (default) or raw.") var format: String?
    @Option(help: "thin (default), thick (space reserved, lazily zeroed) or eager-zeroed (every byte written now).") var provisioning: String?
    @Option(help: "Make a qcow2 overlay of this store image.") var backing: String?

    func run() throws {
        try reportingErrors {
            var c = ImageCreate(name: name, backing: backing)
            if let size { c.sizeBytes = Int64(clamping: try parseSize(size, option: "--size")) }
            if let format { c.format = try parseImageFormat(format) }
            if let provisioning {
                guard let p = ImageProvisioning(rawValue: provisioning) else {
                    throw VireoError(.invalidArgument, "--provisioning '\(provisioning)' is not one of thin, thick, eager-zeroed")
                }
                c.provisioning = p
            }
            guard size != nil || backing != nil else {
                throw VireoError(.invalidArgument, "give --size SIZE (like 10G), or --backing IMAGE for an overlay; to import a file use `vireo image import NAME FILE`")
            }
            var api = try client.makeClient()
            api.timeout = 0   // eager zeroing of a big image takes a while
            let image = try withProgress(api, name: name, quiet: client.json) {
                try api.call("POST", "/v1/images", body: APIJSON.encode(c), as: Image.self)
            }
            if client.json { print(String(decoding: APIJSON.encode(image, pretty: true), as: UTF8.self)); return }
            print("created image \(image.name): \(ByteSize.format(UInt64(image.virtualSizeBytes))) \(image.format.rawValue), \(ByteSize.format(UInt64(image.actualSizeBytes))) on disk; use it with `vireo vm create NAME --disk image=\(image.name) ...`")
        }
    }
}

struct ImageImportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import", abstract: "Import a disk image file on the daemon's host (raw, qcow2, vmdk or vhd; detected) into the store.",
        discussion: "Example: vireo image import debian /srv/debian-12.vmdk   (prints progress while it converts)")
    @OptionGroup var client: ClientOptions
    @Argument(help: "Name for the new image.") var name: String
    @Argument(help: "The file to import (a path on the daemon's host).") var source: String
    @Option(help: "Store it as qcow2 (default) or raw.") var format: String?
    @Option(help: "thin (default), thick or eager-zeroed.") var provisioning: String?

    func run() throws {
        try reportingErrors {
            var c = ImageCreate(name: name, source: absolutePath(source))
            if let format { c.format = try parseImageFormat(format) }
            if let provisioning {
                guard let p = ImageProvisioning(rawValue: provisioning) else {
                    throw VireoError(.invalidArgument, "--provisioning '\(provisioning)' is not one of thin, thick, eager-zeroed")
                }
                c.provisioning = p
            }
            var api = try client.makeClient()
            api.timeout = 0   // a big import runs for minutes
            let image = try withProgress(api, name: name, quiet: client.json) {
                try api.call("POST", "/v1/images", body: APIJSON.encode(c), as: Image.self)
            }
            if client.json { print(String(decoding: APIJSON.encode(image, pretty: true), as: UTF8.self)); return }
            print("imported \(source) as image \(image.name): \(ByteSize.format(UInt64(image.virtualSizeBytes))) \(image.format.rawValue), \(ByteSize.format(UInt64(image.actualSizeBytes))) on disk")
        }
    }
}

struct ImageShowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show one image: sizes, backing, what uses it.")
    @OptionGroup var client: ClientOptions
    @Argument var name: String
    func run() throws {
        try reportingErrors {
            let r = try client.makeClient().request("GET", "/v1/images/\(pathSafe(name))")
            try APIClient.check(r)
            if client.json { print(r.text); return }
            printImage(try client.decode(Image.self, r))
        }
    }
}

struct ImageResizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "resize", abstract: "Grow an image (not while a running VM uses it).",
        discussion: "Example: vireo image resize data --size 40G   (the guest then sees the larger disk at its next boot)")
    @OptionGroup var client: ClientOptions
    @Argument var name: String
    @Option(help: "The new virtual size, like 40G; images only grow.") var size: String
    func run() throws {
        try reportingErrors {
            let body = ImageResize(sizeBytes: Int64(clamping: try parseSize(size, option: "--size")))
            let image = try client.makeClient().call("POST", "/v1/images/\(pathSafe(name))/resize", body: APIJSON.encode(body), as: Image.self)
            if client.json { print(String(decoding: APIJSON.encode(image, pretty: true), as: UTF8.self)); return }
            print("image \(image.name) is now \(ByteSize.format(UInt64(image.virtualSizeBytes)))")
        }
    }
}

struct ImageDeleteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "delete", abstract: "Delete an image nothing uses.")
    @OptionGroup var client: ClientOptions
    @Argument var name: String
    func run() throws {
        try reportingErrors {
            let r = try client.makeClient().request("DELETE", "/v1/images/\(pathSafe(name))")
            try APIClient.check(r)
            if !client.json { print("deleted image \(name)") }
        }
    }
}

func parseImageFormat(_ text: String) throws -> ImageFormat {
    guard let f = ImageFormat(rawValue: text) else {
        throw VireoError(.invalidArgument, "--format '\(text)' is not qcow2 or raw (the store's formats; imports read raw, qcow2, vmdk and vhd)")
    }
    return f
}

/// Runs `body` (a long request) while a second connection follows the image's events and
/// prints its progress lines to stderr.
func withProgress<T>(_ api: APIClient, name: String, quiet: Bool, _ body: () throws -> T) throws -> T {
    guard !quiet, isatty(2) != 0 || getenv("VIREO_PROGRESS") != nil else { return try body() }
    let connected = DispatchSemaphore(value: 0)
    let done = DispatchSemaphore(value: 0)
    let follower = api
    // since=MAX: no backlog, only what happens from now on.
    let path = "/v1/events?follow=true&since=\(Int32.max)&subject_kind=image&subject=\(pathSafe(name))"
    DispatchQueue.global().async {
        _ = try? follower.streamLines(path, onConnected: { _ in connected.signal() }) { line in
            guard let e = try? JSONDecoder().decode(Event.self, from: Data(line)) else { return true }
            if !e.type.hasSuffix("-failed") && !e.type.hasSuffix("-started") { printError("\(e.type): \(e.message)") }
            if e.type.hasSuffix("-failed") || e.type == "image-imported" || e.type == "image-created" {
                done.signal()
                return false
            }
            return true
        }
        connected.signal()
        done.signal()
    }
    _ = connected.wait(timeout: .now() + 2)
    let result = Result { try body() }
    _ = done.wait(timeout: .now() + 1)
    return try result.get()
}
