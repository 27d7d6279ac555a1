import Synchronization
import VireoAPI

/// In-memory fan-out of new events to `GET /v1/events?follow=true` clients. HostService.event
/// publishes each event right after its SQLite insert. Each subscriber has a bounded buffer: one
/// that falls `bufferLines` behind is cut off (its stream ends, then it gets a last line saying
/// so), so a slow client costs bounded memory and never holds up the daemon.
final class EventHub: Sendable {
    static let bufferLines = 1024

    private struct Subscriber {
        let vm: String?
        let continuation: AsyncStream<[UInt8]>.Continuation
        /// seq of the last event queued for it.
        var lastQueued: Int
    }

    private struct State {
        var next = 1
        var subscribers: [Int: Subscriber] = [:]
        /// Subscribers cut off for falling behind, with the seq of the last event queued for them.
        var dropped: [Int: Int] = [:]
    }

    private let state = Mutex(State())

    /// Clients following the stream now (the `vireo_event_subscribers` gauge).
    var count: Int { state.withLock { $0.subscribers.count } }

    /// A new subscriber for events of `vm` (all when nil) after seq `after`: its id and its stream of NDJSON lines.
    func subscribe(vm: String?, after: Int) -> (id: Int, lines: AsyncStream<[UInt8]>) {
        let (stream, continuation) = AsyncStream<[UInt8]>.makeStream(bufferingPolicy: .bufferingOldest(Self.bufferLines))
        let id = state.withLock { s in
            let id = s.next
            s.next += 1
            s.subscribers[id] = Subscriber(vm: vm, continuation: continuation, lastQueued: after)
            return id
        }
        // Called outside our lock (finish/cancel run it synchronously), so cancel may take it.
        continuation.onTermination = { [weak self] _ in self?.remove(id) }
        return (id, stream)
    }

    /// Ends a subscription (the client went away); its stream finishes.
    func cancel(_ id: Int) {
        let c = state.withLock { $0.subscribers.removeValue(forKey: id)?.continuation }
        c?.finish()
    }

    private func remove(_ id: Int) {
        state.withLock { _ = $0.subscribers.removeValue(forKey: id) }
    }

    /// If the subscriber was cut off: the seq of the last event it was sent (nil if it was not); forgets it.
    func takeDropped(_ id: Int) -> Int? {
        state.withLock { $0.dropped.removeValue(forKey: id) }
    }

    func publish(_ event: Event) {
        let line = APIJSON.encode(event) + [10]
        var cut: [AsyncStream<[UInt8]>.Continuation] = []
        let targets = state.withLock { s in s.subscribers.filter { $0.value.vm == nil || $0.value.vm == event.vm } }
        for (id, sub) in targets {
            if case .dropped = sub.continuation.yield(line) {
                state.withLock { s in
                    if let gone = s.subscribers.removeValue(forKey: id) { s.dropped[id] = gone.lastQueued }
                }
                cut.append(sub.continuation)
            } else {
                state.withLock { s in s.subscribers[id]?.lastQueued = event.seq }
            }
        }
        for c in cut { c.finish() }
    }

    /// The line a cut-off client gets last (an Event with seq 0, type stream-dropped).
    static func droppedLine(lastSent: Int, time: String) -> [UInt8] {
        let e = Event(seq: 0, time: time, vm: "", type: "stream-dropped",
                      message: "this client read events more slowly than they came and was cut off after falling \(bufferLines) behind; reconnect with since=\(lastSent) to get the rest")
        return APIJSON.encode(e) + [10]
    }
}

/// A response body written as it is produced (chunked): `prefix` first, then every chunk of
/// `chunks` until it ends, then `trailer()`. `stop` ends `chunks` early (the client went away);
/// it may be called more than once.
struct HTTPStreamBody: Sendable {
    var prefix: [UInt8]
    var chunks: AsyncStream<[UInt8]>
    var stop: @Sendable () -> Void
    var trailer: @Sendable () -> [UInt8]?
}
