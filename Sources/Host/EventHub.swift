import Synchronization
import VireoAPI

/// In-memory fan-out of new events to `GET /v1/events?follow=true` clients. HostService.event
/// publishes each event right after its SQLite insert. Each subscriber has a bounded buffer: one
/// that falls `bufferLines` behind is cut off (its stream ends, then it gets a last line saying
/// so), so a slow client costs bounded memory and never holds up the daemon.
final class EventHub: Sendable {
    static let bufferLines = 1024

    private struct Subscriber {
        let filter: EventFilter
        let continuation: AsyncStream<[UInt8]>.Continuation
        /// seq of the last event queued for it.
        var lastQueued: Int
    }

    private struct State {
        var next = 1
        var subscribers: [Int: Subscriber] = [:]
        /// Subscribers whose stream the hub ended (too slow, or the daemon is stopping), with why.
        var ended: [Int: Ending] = [:]
    }

    /// Why the hub ended a subscriber's stream, and the seq of the last event queued for it.
    enum Ending: Sendable {
        case tooSlow(lastSent: Int)
        case daemonStopping(lastSent: Int)
    }

    private let state = Mutex(State())

    /// Clients following the stream now (the `vireo_event_subscribers` gauge).
    var count: Int { state.withLock { $0.subscribers.count } }

    /// A new subscriber for events that `filter` matches after seq `after`: its id and its stream of NDJSON lines.
    func subscribe(_ filter: EventFilter, after: Int) -> (id: Int, lines: AsyncStream<[UInt8]>) {
        let (stream, continuation) = AsyncStream<[UInt8]>.makeStream(bufferingPolicy: .bufferingOldest(Self.bufferLines))
        let id = state.withLock { s in
            let id = s.next
            s.next += 1
            s.subscribers[id] = Subscriber(filter: filter, continuation: continuation, lastQueued: after)
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

    /// Why the hub ended the subscriber's stream (nil if the client left or it goes on); forgets it.
    func takeEnding(_ id: Int) -> Ending? {
        state.withLock { $0.ended.removeValue(forKey: id) }
    }

    /// The daemon is stopping: every stream ends, each with a last line saying so.
    func stopAll() {
        let all = state.withLock { s in
            for (id, sub) in s.subscribers { s.ended[id] = .daemonStopping(lastSent: sub.lastQueued) }
            defer { s.subscribers.removeAll() }
            return Array(s.subscribers.values)
        }
        for sub in all { sub.continuation.finish() }
    }

    /// Sends `event` to every matching subscriber. Stored events have a seq; live-only ones
    /// (progress) have seq 0 and do not move where a subscriber would resume (`since`).
    func publish(_ event: Event) {
        let line = APIJSON.encode(event) + [10]
        var cut: [AsyncStream<[UInt8]>.Continuation] = []
        let targets = state.withLock { s in s.subscribers.filter { $0.value.filter.matches(event) } }
        for (id, sub) in targets {
            if case .dropped = sub.continuation.yield(line) {
                state.withLock { s in
                    if let gone = s.subscribers.removeValue(forKey: id) { s.ended[id] = .tooSlow(lastSent: gone.lastQueued) }
                }
                cut.append(sub.continuation)
            } else {
                if event.seq > 0 { state.withLock { s in s.subscribers[id]?.lastQueued = event.seq } }
            }
        }
        for c in cut { c.finish() }
    }

    /// The last line of a stream the hub ended: an Event with seq 0 and type stream-dropped or
    /// daemon-stopping, saying where to resume.
    static func lastLine(_ ending: Ending, time: String) -> [UInt8] {
        let e: Event
        switch ending {
        case let .tooSlow(last):
            e = Event(control: "stream-dropped", time: time,
                      message: "this client read events more slowly than they came and was cut off after falling \(bufferLines) behind; reconnect with since=\(last) to get the rest")
        case let .daemonStopping(last):
            e = Event(control: "daemon-stopping", time: time,
                      message: "the daemon is stopping; when it is back, reconnect with since=\(last) to get what happened meanwhile")
        }
        return APIJSON.encode(e) + [10]
    }
}

/// Which events a listing or a follower wants: those of one subject name (any kind unless
/// `kind` says), of one kind, or all.
struct EventFilter: Sendable, Equatable {
    var subject: String?
    var kind: EventSubjectKind?

    func matches(_ e: Event) -> Bool {
        (subject == nil || subject == e.subject) && (kind == nil || kind?.rawValue == e.subjectKind)
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
