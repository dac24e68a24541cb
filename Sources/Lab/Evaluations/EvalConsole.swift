import Foundation
import Jobs
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
            let removed = self?.watchers.withLock { all in
                defer { if all[run]?.isEmpty == true { all[run] = nil } }
                return all[run]?.removeValue(forKey: id)
            }
            // Finished outside the lock: finishing runs `onTermination`, which calls this again
            // (a watcher cancelled while its stream ended crashed with a recursive lock).
            removed??.finish()
        }
        continuation.onTermination = { _ in cancel() }
        return (stream, cancel)
    }

    /// Whether anyone watches `run` (so the event is worth building).
    public func isWatched(_ run: String) -> Bool { watchers.withLock { $0[run] != nil } }

    /// A `prompt` event: the messages of a request as it goes out.
    struct Prompt: Encodable {
        var index: Int
        var repetition: Int
        var turn: Int
        var input: [[String: String]]
    }

    /// A `token` event: a piece of the answer as it streams in.
    struct Token: Encodable {
        var index: Int
        var repetition: Int
        var turn: Int
        var text: String
    }

    func publish(_ run: String, _ type: String, _ payload: some Encodable) {
        guard isWatched(run), let data = try? JSONEncoder().encode(payload) else { return }
        let targets = watchers.withLock { Array(($0[run] ?? [:]).values) }
        for continuation in targets { continuation.yield(Event(type: type, data: data)) }
    }
}

/// A streamed chat completion put back together: the text, finish reason, usage and timings
/// llama-server sends, the time of the first token, and an error event if the stream carried one.
/// While the stream runs only its bytes are kept (and, for a watched console, its deltas read);
/// the events are parsed once it ended, off the path of the next request.
struct StreamedAnswer {
    var text = ""
    var finishReason = ""
    var usage: JobJSON?
    var timings: JobJSON?
    var error: String?
    var firstToken: ContinuousClock.Instant?
    private var bytes = ByteBuffer()
    /// How far the console has read the stream.
    private var consoleOffset = 0
    /// How far the first-token search has looked.
    private var searched = 0

    static let contentKey = Array(#""content":""#.utf8)

    /// Feeds bytes of the stream; with `live`, returns the text deltas of the events they complete.
    mutating func feed(_ chunk: ByteBuffer, live: Bool) -> [String] {
        bytes.writeImmutableBuffer(chunk)
        if firstToken == nil { findFirstToken() }
        guard live else { return [] }
        var events = bytes.getSlice(at: consoleOffset, length: bytes.writerIndex - consoleOffset) ?? ByteBuffer()
        var deltas: [String] = []
        while let end = SSEEvents.eventEnd(events) {
            let event = events.readSlice(length: end)!
            consoleOffset += end
            for object in Self.objects(in: event) {
                if let delta = Self.delta(object) { deltas.append(delta) }
            }
        }
        return deltas
    }

    /// Reads the whole stream once it ended.
    mutating func finish() {
        var events = bytes
        while let end = SSEEvents.eventEnd(events) ?? (events.readableBytes > 0 ? events.readableBytes : nil) {
            let event = events.readSlice(length: end)!
            for object in Self.objects(in: event) {
                if let error = object["error"], error.objectValue != nil { self.error = error["message"]?.stringValue ?? "the stream failed" }
                if let usage = object["usage"], usage.objectValue != nil { self.usage = usage }
                if let timings = object["timings"], timings.objectValue != nil { self.timings = timings }
                if let reason = Self.firstChoice(object)?["finish_reason"]?.stringValue { finishReason = reason }
                if let delta = Self.delta(object) { text += delta }
            }
        }
    }

    /// The first event with a non-empty `content` string marks the first token (a byte search:
    /// llama-server's JSON is compact, and the role-only first event has `"content":null`).
    private mutating func findFirstToken() {
        let view = bytes.readableBytesView
        let key = Self.contentKey
        var i = view.startIndex + max(0, searched - key.count)
        let last = view.endIndex - key.count - 1
        while i <= last {
            if view[i] == key[0], view[i..<(i + key.count)].elementsEqual(key), view[i + key.count] != UInt8(ascii: "\"") {
                firstToken = .now
                return
            }
            i += 1
        }
        searched = view.count
    }

    /// The JSON objects of an event's `data:` lines.
    static func objects(in event: ByteBuffer) -> [JobJSON] {
        SSEEvents.dataLines(event).compactMap { payload in
            guard payload != "[DONE]", let object = try? JSONDecoder().decode(JobJSON.self, from: Data(payload.utf8)), object.objectValue != nil else { return nil }
            return object
        }
    }

    /// The first choice, where `choices` is a list of objects.
    static func firstChoice(_ object: JobJSON) -> JobJSON? {
        guard let choices = object["choices"]?.arrayValue, choices.allSatisfy({ $0.objectValue != nil }) else { return nil }
        return choices.first
    }

    static func delta(_ object: JobJSON) -> String? {
        guard let delta = firstChoice(object)?["delta"]?["content"]?.stringValue, !delta.isEmpty else { return nil }
        return delta
    }
}

extension EvalConsole {
    /// One event of a run's console: a durable job event (with its id) or a live one (none).
    public struct Line: Sendable {
        public var id: Int64?
        public var type: String
        public var data: Data
    }

    /// A run's console: its job events after `after` (replayed, then followed until the run
    /// ends, which ends the console) with the live events woven in. The live events are watched
    /// before the log is replayed, so nothing falls between them.
    public func follow(_ run: String, after: Int64, in engine: JobEngine) async throws -> AsyncStream<Line> {
        let live = watch(run)
        let durable: AsyncStream<JobEvent>
        do { durable = try await engine.events(run, after: after) } catch {
            live.cancel()
            throw error
        }
        let (merged, output) = AsyncStream<Line>.makeStream()
        let logged = Task {
            for await event in durable {
                guard let data = try? JobCoding.encoder.encode(event) else { continue }
                output.yield(Line(id: event.id, type: event.type, data: data))
            }
            output.finish()
        }
        let streamed = Task {
            for await event in live.events { output.yield(Line(id: nil, type: event.type, data: event.data)) }
        }
        output.onTermination = { _ in
            logged.cancel()
            streamed.cancel()
            live.cancel()
        }
        return merged
    }
}
