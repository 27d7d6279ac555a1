import NIOCore
import NIOHTTP1
import NIOPosix
import VireoAPI

typealias HTTPConnection = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>
/// A listener's connections: each resolves to plain HTTP or an upgraded console websocket (ConsoleAttach.swift).
typealias HTTPListener = NIOAsyncChannel<EventLoopFuture<ServerConnection>, Never>

/// HTTP/1.1 over swift-nio: a unix-socket listener and an optional TCP one, each with a router.
enum HTTPServer {
    static func bindUnix(_ path: String, group: EventLoopGroup, router: Router) async throws -> HTTPListener {
        try await ServerBootstrap(group: group)
            .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true) { channel in
                channel.eventLoop.makeCompletedFuture { try configure(channel, router: router) }
            }
    }

    static func bindTCP(host: String, port: Int, group: EventLoopGroup, router: Router) async throws -> HTTPListener {
        try await ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(ChannelOptions.backlog, value: 512)
            .bind(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture { try configure(channel, router: router) }
            }
    }

    private static func configure(_ channel: Channel, router: Router) throws -> EventLoopFuture<ServerConnection> {
        // A client that sends nothing for a minute between requests is dropped; one waiting for a
        // long answer (a stop that gives its guest time to shut down) is not. Console websockets
        // are pinged more often than that (ConsoleAttach.swift has their idle closer).
        try channel.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: .seconds(60)))
        // HTTP, upgradable to a websocket on the console attach route only (ConsoleAttach.swift).
        return try channel.pipeline.syncOperations.configureUpgradableHTTPServerPipeline(configuration: .init(
            upgradeConfiguration: .init(upgraders: [ConsoleAttach.upgrader(router: router)], notUpgradingCompletionHandler: { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(IdleCloser())
                    return .http(try HTTPConnection(wrappingChannelSynchronously: channel))
                }
            })))
    }

    /// Accepts connections until the listener closes; each connection on its own task.
    static func serve(_ listener: HTTPListener, router: Router) async throws {
        try await withThrowingDiscardingTaskGroup { group in
            try await listener.executeThenClose { inbound in
                for try await connection in inbound {
                    group.addTask {
                        switch try? await connection.get() {
                        case let .http(c)?: await handle(c, router: router)
                        case let .console(ws, vm)?: await ConsoleAttach.run(ws, vm: vm, service: router.service)
                        case nil: break   // the upgrade failed; NIO closed the connection
                        }
                    }
                }
            }
        }
    }

    private static func handle(_ connection: HTTPConnection, router: Router) async {
        try? await connection.executeThenClose { inbound, outbound in
            var head: HTTPRequestHead?
            var body: [UInt8] = []
            var tooLarge = false
            for try await part in inbound {
                switch part {
                case let .head(h):
                    head = h; body = []; tooLarge = false
                case var .body(buffer):
                    if body.count + buffer.readableBytes > Router.maxBody { tooLarge = true }
                    else { body += buffer.readBytes(length: buffer.readableBytes) ?? [] }
                case .end:
                    guard let h = head else { continue }
                    head = nil
                    let response: HTTPResponse
                    if tooLarge {
                        response = .error(HTTPError(413, "body-too-large", "request bodies are limited to \(Router.maxBody) bytes"))
                    } else {
                        let started = ContinuousClock.now
                        let req = request(h, body)
                        response = await router.handle(req)
                        let took = ContinuousClock.now - started
                        router.requestMetrics.record(method: req.method, path: req.path, status: response.status,
                                                     seconds: Double(took.components.seconds) + Double(took.components.attoseconds) / 1e18)
                    }
                    if let stream = response.stream {
                        try await writeStream(response, stream, version: h.version, channel: connection.channel, outbound)
                        await flushThenClose(connection.channel)
                        return
                    }
                    let keepAlive = h.isKeepAlive && !tooLarge
                    var headers = HTTPHeaders()
                    headers.add(name: "Content-Type", value: response.contentType)
                    headers.add(name: "Content-Length", value: String(response.body.count))
                    for (k, v) in response.headers { headers.add(name: k, value: v) }
                    headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
                    try await outbound.write(.head(HTTPResponseHead(version: h.version, status: HTTPResponseStatus(statusCode: response.status), headers: headers)))
                    if !response.body.isEmpty { try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: response.body)))) }
                    try await outbound.write(.end(nil))
                    if !keepAlive { await flushThenClose(connection.channel); return }
                }
            }
            await flushThenClose(connection.channel)   // the client closed its side: finish ours
        }
    }

    /// Ends a connection's output only once everything written on it has reached the socket
    /// (a full close would drop what a slow reader has not taken yet, e.g. the end of an event
    /// stream or of a big console log), waiting at most `limit` for a client that stopped reading.
    static func flushThenClose(_ channel: Channel, limit: TimeAmount = .seconds(30)) async {
        let deadline = channel.eventLoop.scheduleTask(in: limit) { channel.close(promise: nil) }
        defer { deadline.cancel() }
        try? await channel.close(mode: .output).get()
    }

    /// A streamed response: chunked, its prefix, then each chunk as it comes, until the stream
    /// ends (then its trailer, if any) or the client goes away (then `stop` ends the stream).
    private static func writeStream(_ response: HTTPResponse, _ stream: HTTPStreamBody, version: HTTPVersion, channel: Channel,
                                    _ outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>) async throws {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Transfer-Encoding", value: "chunked")
        for (k, v) in response.headers { headers.add(name: k, value: v) }
        headers.add(name: "Connection", value: "close")
        channel.closeFuture.whenComplete { _ in stream.stop() }
        defer { stream.stop() }
        try await outbound.write(.head(HTTPResponseHead(version: version, status: HTTPResponseStatus(statusCode: response.status), headers: headers)))
        if !stream.prefix.isEmpty { try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: stream.prefix)))) }
        for await chunk in stream.chunks {
            try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: chunk))))
        }
        if let last = stream.trailer(), !last.isEmpty { try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: last)))) }
        try await outbound.write(.end(nil))
    }

    static func request(_ h: HTTPRequestHead, _ body: [UInt8]) -> HTTPRequest {
        let uri = h.uri
        var path = uri
        var query: [String: String] = [:]
        if let q = uri.firstIndex(of: "?") {
            path = String(uri[..<q])
            for pair in uri[uri.index(after: q)...].split(separator: "&") {
                let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                query[String(kv[0])] = kv.count > 1 ? String(kv[1]) : ""
            }
        }
        return HTTPRequest(method: h.method.rawValue, path: path, query: query,
                           headers: h.headers.map { ($0.name, $0.value) }, body: body)
    }
}

/// Closes a connection when IdleStateHandler reports it idle, unless a request on it is still
/// being answered (from its head until the response's end).
final class IdleCloser: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart
    /// Requests whose response has not ended (touched only on the channel's event loop).
    private var inFlight = 0

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head = unwrapInboundIn(data) { inFlight += 1 }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data) { inFlight = max(0, inFlight - 1) }
        context.write(data, promise: promise)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            if inFlight == 0 { context.close(promise: nil) }
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }
}
