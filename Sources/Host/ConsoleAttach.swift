import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket
import VireoAPI
#if canImport(Glibc)
import Glibc
#endif

/// What a daemon connection turned into: plain HTTP, or a websocket attached to a VM's console.
enum ServerConnection: Sendable {
    case http(HTTPConnection)
    case console(NIOAsyncChannel<WebSocketFrame, WebSocketFrame>, vm: String)
}

/// `GET /v1/vms/{name}/console/attach` with `Upgrade: websocket`: the VM's serial console as a
/// websocket, proxied to its VMM's console socket (`vireo run --console-socket`).
///
/// Binary (or text) frames from the client are bytes typed into COM1; the guest's output comes
/// back as binary frames. Pings are answered; the server pings every 25 s (the connection's
/// 60 s idle timeout also drops clients that stopped answering). When the VMM ends, the client
/// gets a close frame (1001) saying so. A client that does not read stalls only its own proxy:
/// the VMM drops it once it falls 64 KiB behind, and the client then gets a close frame (1011).
///
/// The upgrade is accepted only for a running or paused VM and, on the TCP listener, with the
/// bearer token; otherwise the request goes on as plain HTTP and the router answers it with
/// the JSON error (401, 404, 409) or, for a running VM without the upgrade, 426.
enum ConsoleAttach {
    static let pingInterval: Duration = .seconds(25)

    /// The VM name of an attach request's path, or nil for any other path.
    static func vmName(uri: String) -> String? {
        let path = uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        let parts = path.split(separator: "/", omittingEmptySubsequences: true)
        guard parts.count == 5, parts[0] == "v1", parts[1] == "vms", parts[3] == "console", parts[4] == "attach" else { return nil }
        return String(parts[2])
    }

    static func upgrader(router: Router) -> NIOTypedWebSocketServerUpgrader<ServerConnection> {
        NIOTypedWebSocketServerUpgrader<ServerConnection>(
            maxFrameSize: 1 << 16,
            shouldUpgrade: { channel, head in
                let promise = channel.eventLoop.makePromise(of: HTTPHeaders?.self)
                promise.completeWithTask {
                    if head.method == .GET, let name = vmName(uri: head.uri),
                       router.acceptsAttach(HTTPServer.request(head, [])),
                       (try? await router.service.consoleAttachTarget(name)) != nil {
                        return HTTPHeaders()
                    }
                    // Refused. NIO's typed upgrade handler does not pass a refused upgrade request
                    // on to the HTTP side, so it is answered here, as the router would answer it
                    // without the upgrade (401, 404, 409, ...), and the connection is closed.
                    let response = await router.handle(HTTPServer.request(head, []))
                    try? await respondAndClose(channel, response, version: head.version)
                    return nil
                }
                return promise.futureResult
            },
            upgradePipelineHandler: { channel, head in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(WebSocketIdleCloser())
                    let ws = try NIOAsyncChannel<WebSocketFrame, WebSocketFrame>(wrappingChannelSynchronously: channel)
                    return .console(ws, vm: vmName(uri: head.uri) ?? "")
                }
            })
    }

    /// The HTTP answer to the attach route when no upgrade happened (the router calls this).
    static func withoutUpgrade(_ name: String, service: HostService) async throws -> HTTPResponse {
        _ = try await service.consoleAttachTarget(name)
        var r = HTTPResponse.error(HTTPError(426, "upgrade-required",
            "this route is a websocket: send 'Connection: Upgrade', 'Upgrade: websocket', 'Sec-WebSocket-Version: 13' and a Sec-WebSocket-Key (`vireo vm console \(name)` does)"))
        r.headers.append(("Upgrade", "websocket"))
        return r
    }

    /// Runs one attached websocket until either side ends.
    static func run(_ ws: NIOAsyncChannel<WebSocketFrame, WebSocketFrame>, vm: String, service: HostService) async {
        try? await ws.executeThenClose { inbound, outbound in
            let path: String
            do { path = try await service.consoleAttachTarget(vm) } catch {
                try await outbound.write(closeFrame(.unexpectedServerError, "VM '\(vm)' is no longer running"))
                return
            }
            let vmm: NIOAsyncChannel<ByteBuffer, ByteBuffer>
            do {
                vmm = try await ClientBootstrap(group: ws.channel.eventLoop)
                    .connect(unixDomainSocketPath: path) { channel in
                        channel.eventLoop.makeCompletedFuture { try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel) }
                    }
            } catch {
                try await outbound.write(closeFrame(.unexpectedServerError,
                    "cannot reach the console socket of VM '\(vm)' (\(path)): \(error); its VMM may be stopping (`vireo vm show \(vm)` says)"))
                return
            }
            try await vmm.executeThenClose { fromVMM, toVMM in
                try await withThrowingTaskGroup(of: Void.self) { tasks in
                    // Guest output -> client. The VMM closing means the VM stopped, or this
                    // client fell too far behind and was dropped.
                    tasks.addTask {
                        for try await bytes in fromVMM {
                            try await outbound.write(WebSocketFrame(fin: true, opcode: .binary, data: bytes))
                        }
                        // The VMM removes its console socket before closing the clients when the
                        // VM stops; then wait (up to 5 s) for the daemon to record how it ended.
                        var state = try? await service.show(vm)
                        let stopping = access(path, F_OK) != 0
                        for _ in 0..<(stopping ? 50 : 20) where state?.state.hasProcess == true {
                            try await Task.sleep(for: .milliseconds(100))
                            state = try? await service.show(vm)
                        }
                        if let state, state.state.hasProcess, !stopping {
                            try await outbound.write(closeFrame(.unexpectedServerError, "the VMM dropped this console client: it fell behind the guest's output"))
                        } else {
                            let how = state.map { "VM '\(vm)' stopped (\($0.state.rawValue)\($0.reason.map { ": \($0)" } ?? ""))" } ?? "VM '\(vm)' is gone"
                            try await outbound.write(closeFrame(.goingAway, String(how.utf8.prefix(120)) ?? "the VM stopped"))
                        }
                    }
                    // Client -> guest input; control frames.
                    tasks.addTask {
                        for try await frame in inbound {
                            switch frame.opcode {
                            case .binary, .text, .continuation:
                                let data = frame.unmaskedData
                                if data.readableBytes > 0 { try await toVMM.write(data) }
                            case .ping:
                                try await outbound.write(WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData))
                            case .connectionClose:
                                var data = frame.unmaskedData
                                let code = data.readInteger(as: UInt16.self).map { WebSocketErrorCode(codeNumber: Int($0)) } ?? .normalClosure
                                try await outbound.write(closeFrame(code, ""))
                                return
                            default:
                                break
                            }
                        }
                    }
                    tasks.addTask {
                        while true {
                            try await Task.sleep(for: pingInterval)
                            try await outbound.write(WebSocketFrame(fin: true, opcode: .ping, data: ByteBuffer()))
                        }
                    }
                    _ = try await tasks.next()
                    tasks.cancelAll()
                }
            }
        }
    }

    private static func respondAndClose(_ channel: Channel, _ response: HTTPResponse, version: HTTPVersion) async throws {
        response.stream?.stop()   // a streaming route asked with an Upgrade header: no stream over this path
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: String(response.body.count))
        for (k, v) in response.headers { headers.add(name: k, value: v) }
        headers.add(name: "Connection", value: "close")
        let head = HTTPResponseHead(version: version, status: HTTPResponseStatus(statusCode: response.status), headers: headers)
        channel.write(HTTPServerResponsePart.head(head), promise: nil)
        channel.write(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(bytes: response.body))), promise: nil)
        try await channel.writeAndFlush(HTTPServerResponsePart.end(nil)).get()
        try await channel.close().get()
    }

    static func closeFrame(_ code: WebSocketErrorCode, _ reason: String) -> WebSocketFrame {
        var data = ByteBuffer()
        data.write(webSocketErrorCode: code)
        data.writeString(reason)
        return WebSocketFrame(fin: true, opcode: .connectionClose, data: data)
    }
}

/// Closes an attached websocket when IdleStateHandler reports 60 s without a byte from the
/// client (it answers none of the 25 s pings). (HTTPServer's IdleCloser is typed for HTTP parts.)
final class WebSocketIdleCloser: ChannelInboundHandler, Sendable {
    typealias InboundIn = WebSocketFrame
    typealias InboundOut = WebSocketFrame
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent { context.close(promise: nil) } else { context.fireUserInboundEventTriggered(event) }
    }
}

extension Router {
    /// Whether this listener accepts a request with this Authorization header (always on the
    /// unix socket; on TCP only with the daemon's bearer token).
    /// Whether an attach request may upgrade: the bearer token, or a web console session from
    /// a page of this daemon (a browser's websocket carries the cookie and its page's Origin).
    func acceptsAttach(_ req: HTTPRequest) -> Bool {
        guard token != nil else { return true }
        switch authenticate(req) {
        case .bearer: return true
        case .session: return sessionRefusal(req) == nil
        case .anonymous: return false
        }
    }
}
