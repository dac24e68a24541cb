import Foundation
import Jobs
import NIOCore
import Runtime

/// One object of an Ollama answer: a streamed chunk (`done: false`), the final one with
/// `done_reason` and the counts, a whole answer, or the answer to a load or unload. `/api/chat`
/// carries `message`, `/api/generate` carries `response` (and `thinking`).
public struct OllamaChunk: Encodable, Sendable, Equatable {
    /// The model name as the client sent it (Ollama echoes it).
    public var model: String
    public var createdAt: String
    public var done: Bool
    public var message: OllamaMessage?
    public var response: String?
    public var thinking: String?
    /// `stop`, `length`, `load` or `unload` (final objects only).
    public var doneReason: String?
    public var totalDuration: Int64?
    public var loadDuration: Int64?
    public var promptEvalCount: Int?
    public var promptEvalDuration: Int64?
    public var evalCount: Int?
    public var evalDuration: Int64?

    /// A chunk of text (and reasoning, and tool calls) in the route's shape.
    public init(shape: OllamaResponseBuilder.Shape, model: String, text: String, thinking: String = "", toolCalls: [OllamaToolCall]? = nil, done: Bool = false) {
        self.model = model
        createdAt = OllamaValues.timestamp()
        self.done = done
        switch shape {
        case .chat:
            message = OllamaMessage(content: text, thinking: thinking.isEmpty ? nil : thinking, toolCalls: toolCalls)
        case .generate:
            response = text
            if !thinking.isEmpty { self.thinking = thinking }
        }
    }

    enum CodingKeys: String, CodingKey {
        case model, createdAt = "created_at", done, message, response, thinking, doneReason = "done_reason"
        case totalDuration = "total_duration", loadDuration = "load_duration", promptEvalCount = "prompt_eval_count"
        case promptEvalDuration = "prompt_eval_duration", evalCount = "eval_count", evalDuration = "eval_duration"
    }
}

/// The assistant's message in an `/api/chat` chunk.
public struct OllamaMessage: Encodable, Sendable, Equatable {
    public var role = "assistant"
    public var content: String
    public var thinking: String?
    public var toolCalls: [OllamaToolCall]?

    enum CodingKeys: String, CodingKey { case role, content, thinking, toolCalls = "tool_calls" }
}

/// A finished tool call in Ollama's form: `arguments` is an object, not a string.
public struct OllamaToolCall: Encodable, Sendable, Equatable {
    public struct Function: Encodable, Sendable, Equatable {
        public var index: Int
        public var name: String
        public var arguments: JobJSON
    }
    public var id: String?
    public var function: Function
}

/// One event of llama-server's stream: an OpenAI chunk (`choices`), an `/infill` chunk
/// (`content`, `stop`), or an error; usage and timings on the last. Only what the translation
/// reads is decoded.
struct UpstreamEvent: Decodable {
    struct Choice: Decodable {
        var text: String?
        var delta: Delta?
        var finishReason: String?
        enum CodingKeys: String, CodingKey { case text, delta, finishReason = "finish_reason" }
    }
    struct Delta: Decodable {
        var content: String?
        var reasoningContent: String?
        var toolCalls: [ToolCallDelta]?
        enum CodingKeys: String, CodingKey { case content, reasoningContent = "reasoning_content", toolCalls = "tool_calls" }
    }
    struct ToolCallDelta: Decodable {
        struct Function: Decodable {
            var name: String?
            var arguments: String?
        }
        var index: Int?
        var id: String?
        var function: Function?
    }
    var choices: [Choice]?
    var content: String?
    var stop: Bool?
    var stopType: String?
    var error: JobJSON?
    var usage: JobJSON?
    var timings: JobJSON?

    enum CodingKeys: String, CodingKey { case choices, content, stop, stopType = "stop_type", error, usage, timings }
}

/// Builds Ollama responses from llama-server's streamed events: one NDJSON chunk per text delta,
/// tool calls gathered until complete, and a final chunk with Ollama's counts and durations.
public struct OllamaResponseBuilder: Sendable {
    /// Which Ollama route answers: `/api/chat` (`message`) or `/api/generate` (`response`).
    public enum Shape: Sendable { case chat, generate }

    public let shape: Shape
    public let kind: UpstreamPlan.Kind
    /// The model name as the client sent it (Ollama echoes it).
    public let model: String
    public private(set) var content = ""
    public private(set) var thinking = ""
    private var toolCalls: [Int: (id: String?, name: String, arguments: String)] = [:]
    public private(set) var finishReason: String?
    public private(set) var usage: NumericObject?
    public private(set) var timings: NumericObject?
    /// An error llama-server reported inside the stream.
    public private(set) var upstreamError: String?

    public init(shape: Shape, kind: UpstreamPlan.Kind, model: String) {
        self.shape = shape
        self.kind = kind
        self.model = model
    }

    /// Feeds one SSE `data:` payload; returns the chunks to send a streaming client now.
    public mutating func feed(_ payload: Substring) -> [OllamaChunk] {
        if payload == "[DONE]" { return [] }
        guard let event = OllamaJSON.decode(UpstreamEvent.self, from: payload.utf8) else { return [] }
        if let u = NumericObject(jsonValue: event.usage) { usage = u }
        if let t = NumericObject(jsonValue: event.timings) { timings = t }
        if let e = event.error, e != .null {
            upstreamError = e["message"]?.stringValue ?? e.stringValue ?? OllamaJSON.text(e)
            return []
        }
        var text = ""
        var reasoning = ""
        switch kind {
        case .infill:
            text = event.content ?? ""
            if event.stop == true { finishReason = event.stopType == "limit" ? "length" : "stop" }
        case .completion, .chat:
            guard let choice = event.choices?.first else { return [] }
            if let reason = choice.finishReason { finishReason = reason }
            if kind == .completion {
                text = choice.text ?? ""
            } else if let delta = choice.delta {
                text = delta.content ?? ""
                reasoning = delta.reasoningContent ?? ""
                for call in delta.toolCalls ?? [] { addToolCallDelta(call) }
            }
        }
        content += text
        thinking += reasoning
        guard !text.isEmpty || !reasoning.isEmpty else { return [] }
        return [OllamaChunk(shape: shape, model: model, text: text, thinking: reasoning)]
    }

    private mutating func addToolCallDelta(_ call: UpstreamEvent.ToolCallDelta) {
        let index = call.index ?? toolCalls.count
        var entry = toolCalls[index] ?? (id: nil, name: "", arguments: "")
        if let id = call.id { entry.id = id }
        if let name = call.function?.name { entry.name += name }
        if let args = call.function?.arguments { entry.arguments += args }
        toolCalls[index] = entry
    }

    /// Complete tool calls in Ollama's form (arguments as an object; `{}` when they are not JSON).
    public var ollamaToolCalls: [OllamaToolCall] {
        toolCalls.keys.sorted().map { i in
            let c = toolCalls[i]!
            var arguments = OllamaJSON.decode(JobJSON.self, from: c.arguments.utf8) ?? .object([:])
            if arguments.objectValue == nil && arguments.arrayValue == nil { arguments = .object([:]) }
            return OllamaToolCall(id: c.id, function: .init(index: i, name: c.name, arguments: arguments))
        }
    }

    /// The chunk carrying finished tool calls (streamed before the final chunk), if any.
    public func toolCallChunk() -> OllamaChunk? {
        toolCalls.isEmpty ? nil : OllamaChunk(shape: shape, model: model, text: "", toolCalls: ollamaToolCalls)
    }

    /// Ollama's `done_reason`: `length` when the token limit cut it, else `stop`.
    public var doneReason: String { finishReason == "length" ? "length" : "stop" }

    /// The final object: the whole answer (`stream: false`) or the last chunk of a stream.
    /// - Parameters:
    ///   - total: arrival at Corral until now.
    ///   - load: queue plus model load (Ollama's `load_duration`).
    public func final(whole: Bool, total: Duration, load: Duration) -> OllamaChunk {
        var c = OllamaChunk(
            shape: shape, model: model, text: whole ? content : "", thinking: whole ? thinking : "",
            toolCalls: whole && !toolCalls.isEmpty ? ollamaToolCalls : nil, done: true)
        c.doneReason = doneReason
        // The six counters, in nanoseconds, from llama-server's timings (usage when absent).
        let t = timings ?? NumericObject()
        func ns(_ key: String) -> Int64 { Int64((t.double(key) ?? 0) * 1_000_000) }
        c.totalDuration = OllamaValues.nanoseconds(total)
        c.loadDuration = OllamaValues.nanoseconds(load)
        c.promptEvalCount = t.int("prompt_n").map { $0 + (t.int("cache_n") ?? 0) } ?? usage?.int("prompt_tokens") ?? 0
        c.promptEvalDuration = ns("prompt_ms")
        c.evalCount = t.int("predicted_n") ?? usage?.int("completion_tokens") ?? 0
        c.evalDuration = ns("predicted_ms")
        return c
    }

    /// What the answer reported it used, for the ledger.
    public var reported: AnswerUsage { AnswerUsage(usage: usage, timings: timings) }
}

extension NumericObject {
    /// The numbers and nested objects of a JSON object; nil when the value is not one.
    init?(jsonValue value: JobJSON?) {
        guard case .object(let object)? = value else { return nil }
        self.init()
        for (key, member) in object {
            switch member {
            case .number(let n): numbers[key] = n
            case .object: objects[key] = NumericObject(jsonValue: member)
            default: break
            }
        }
    }
}

/// llama-server's event stream as Ollama's NDJSON, for the response pump: each complete event
/// becomes the chunks a streaming Ollama client reads; at the end the tool calls and the final
/// chunk with Ollama's counts, or the failure as one more error line (the status stays 200).
public struct OllamaStreamReader: AnswerReader {
    public var builder: OllamaResponseBuilder
    let arrival: ContinuousClock.Instant
    let load: Duration
    private var events = SSEEvents()
    private var delivered = 0

    public init(builder: OllamaResponseBuilder, arrival: ContinuousClock.Instant, load: Duration) {
        self.builder = builder
        self.arrival = arrival
        self.load = load
    }

    public mutating func feed(_ chunk: ByteBuffer) -> ByteBuffer {
        var out = ByteBuffer()
        for payload in events.feed(chunk) {
            let objects = builder.feed(payload)
            delivered += objects.count
            Self.append(objects, to: &out)
        }
        return out
    }

    public mutating func finish(failure: ServingError?) -> ByteBuffer {
        var out = ByteBuffer()
        for payload in events.finish() { Self.append(builder.feed(payload), to: &out) }
        if let message = failure?.message ?? builder.upstreamError {
            out.writeImmutableBuffer(OllamaFailure(status: 500, message).line)
        } else {
            if let calls = builder.toolCallChunk() { Self.append([calls], to: &out) }
            Self.append([builder.final(whole: false, total: .now - arrival, load: load)], to: &out)
        }
        return out
    }

    public var reported: AnswerUsage { builder.reported }
    public var deliveredEvents: Int? { delivered }
    public var reportedErrorKind: String? { builder.upstreamError.map { _ in ServingError.Code.upstreamError.rawValue } }

    private static func append(_ objects: [OllamaChunk], to out: inout ByteBuffer) {
        for object in objects { out.writeImmutableBuffer(OllamaJSON.line(object)) }
    }
}
