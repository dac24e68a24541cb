import NIOCore
import Runtime

/// Watches an SSE stream from llama-server as it passes: finds the final `usage`/`timings`
/// chunk and, when Corral injected `include_usage` for its own accounting, drops that chunk so
/// the client sees exactly what it asked for. Events are forwarded as soon as they are complete
/// and are never re-serialised.
public struct SSEUsageFilter {
    /// Drop the usage-only chunk (`"choices":[]`) from the client's stream.
    let hideUsageChunk: Bool
    private var pending = ByteBuffer()
    /// The usage and timings the stream reported (Anthropic's split usage merged).
    public private(set) var reported = AnswerUsage()
    /// Complete events seen (about one per generated token), for charging a stream cut short.
    public private(set) var events = 0

    public init(hideUsageChunk: Bool) { self.hideUsageChunk = hideUsageChunk }

    /// Feeds upstream bytes; returns the bytes to forward now.
    public mutating func feed(_ chunk: ByteBuffer) -> ByteBuffer {
        pending.writeImmutableBuffer(chunk)
        var out = ByteBuffer()
        while let end = eventEnd() {
            let event = pending.readSlice(length: end)!
            events += 1
            if inspect(event) { out.writeImmutableBuffer(event) }
        }
        return out
    }

    /// Whatever is left when the stream ends.
    public mutating func finish() -> ByteBuffer {
        defer { pending.clear() }
        let rest = pending
        return inspect(rest) ? rest : ByteBuffer()
    }

    private func eventEnd() -> Int? { SSEEvents.eventEnd(pending) }

    static let usageKey = Array("\"usage\"".utf8)
    static let timingsKey = Array("\"timings\"".utf8)

    /// Whether `needle` occurs in `bytes` (a plain byte search; events are short).
    static func contains(_ bytes: ByteBufferView, _ needle: [UInt8]) -> Bool {
        guard bytes.count >= needle.count, let first = needle.first else { return false }
        var i = bytes.startIndex
        let last = bytes.endIndex - needle.count
        while i <= last {
            if bytes[i] == first && bytes[i..<(i + needle.count)].elementsEqual(needle) { return true }
            i += 1
        }
        return false
    }

    static let emptyChoices = Array("\"choices\":[]".utf8)

    /// Records usage from an event; false when the event must not be forwarded.
    private mutating func inspect(_ event: ByteBuffer) -> Bool {
        // Only events that mention usage or timings are read, and only those members' numbers
        // (`JSON.members`); the rest pass untouched.
        let bytes = event.readableBytesView
        guard Self.contains(bytes, Self.usageKey) || Self.contains(bytes, Self.timingsKey) else { return true }
        for payload in SSEEvents.dataLines(event) {
            guard let found = Array(payload.utf8).withUnsafeBytes({ JSONMembers.members(["usage", "timings", "message"], of: $0) }) else { continue }
            // OpenAI sends usage once; Anthropic's stream splits it: the input in `message_start`'s
            // `message.usage`, the output in `message_delta`'s `usage`. Merged, both are kept.
            if let u = found["usage"] ?? found["message"]?.objects["usage"] {
                reported.usage = reported.usage?.merging(u) ?? u
            }
            if let t = found["timings"] { reported.timings = t }
            // The usage-only chunk llama-server sends last: `"choices":[]` (compact, so never
            // inside a string, where its quotes would be escaped).
            if hideUsageChunk, found["usage"] != nil, Self.contains(bytes, Self.emptyChoices) { return false }
        }
        return true
    }
}
