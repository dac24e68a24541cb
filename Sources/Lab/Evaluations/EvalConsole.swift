import Foundation
import NIOCore
import Runtime
import Synchronization

/// The live part of an evaluation run's console: each request's prompt as it goes out and its
/// answer's tokens as they stream in. Unlike the job's event log (an `item` event per graded
/// item, durable and replayable), these are only for whoever is watching now: nothing is stored,
/// and with nobody watching a publish costs one lock.
public final class EvalConsole: Sendable {
    /// One live event: `prompt` (`index`, `repetition`, `turn`, `input`) or `token` (`index`,
    /// `repetition`, `turn`, `text`).
    public struct Event: Sendable {
        public var type: String
        public var data: Data
    }

    private let watchers = Mutex<[String: [UUID: AsyncStream<Event>.Continuation]]>([:])

    public init() {}

    /// The live events of `run` from now on, until `cancel` or the caller stops listening.
    public func watch(_ run: String) -> (events: AsyncStream<Event>, cancel: @Sendable () -> Void) {
        let id = UUID()
        let (stream, continuation) = AsyncStream<Event>.makeStream(bufferingPolicy: .bufferingNewest(4096))
        watchers.withLock { $0[run, default: [:]][id] = continuation }
        let cancel: @Sendable () -> Void = { [weak self] in
            self?.watchers.withLock { all in
                all[run]?.removeValue(forKey: id)?.finish()
                if all[run]?.isEmpty == true { all[run] = nil }
            }
        }
        continuation.onTermination = { _ in cancel() }
        return (stream, cancel)
    }

    /// Whether anyone watches `run` (so the event is worth building).
    public func isWatched(_ run: String) -> Bool { watchers.withLock { $0[run] != nil } }

    func publish(_ run: String, _ type: String, _ object: [String: Any]) {
        guard isWatched(run), let data = try? JSONSerialization.data(withJSONObject: object) else { return }
        let targets = watchers.withLock { Array(($0[run] ?? [:]).values) }
        for continuation in targets { continuation.yield(Event(type: type, data: data)) }
    }
}

/// A streamed chat completion put back together: the text, finish reason, usage and timings
/// llama-server sends, the time of the first token, and an error event if the stream carried one.
struct StreamedAnswer {
    var text = ""
    var finishReason = ""
    var usage: [String: Any]?
    var timings: [String: Any]?
    var error: String?
    var firstToken: ContinuousClock.Instant?
    private var pending = ByteBuffer()

    /// Feeds bytes of the stream; returns the text deltas of the events completed by them.
    mutating func feed(_ chunk: ByteBuffer) -> [String] {
        pending.writeImmutableBuffer(chunk)
        var deltas: [String] = []
        while let end = SSEEvents.eventEnd(pending) {
            let event = pending.readSlice(length: end)!
            for payload in SSEEvents.dataLines(event) where payload != "[DONE]" {
                guard let object = (try? JSONSerialization.jsonObject(with: Data(payload.utf8))) as? [String: Any] else { continue }
                if let error = object["error"] as? [String: Any] { self.error = error["message"] as? String ?? "the stream failed" }
                if let usage = object["usage"] as? [String: Any] { self.usage = usage }
                if let timings = object["timings"] as? [String: Any] { self.timings = timings }
                guard let choice = (object["choices"] as? [[String: Any]])?.first else { continue }
                if let reason = choice["finish_reason"] as? String { finishReason = reason }
                if let delta = (choice["delta"] as? [String: Any])?["content"] as? String, !delta.isEmpty {
                    if firstToken == nil { firstToken = .now }
                    text += delta
                    deltas.append(delta)
                }
            }
        }
        pending.discardReadBytes()
        return deltas
    }
}
