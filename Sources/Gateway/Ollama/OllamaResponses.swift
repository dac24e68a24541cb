import Foundation
import Runtime

/// Builds Ollama responses from llama-server's streamed events: one NDJSON chunk per text delta,
/// tool calls gathered until complete, and a final chunk with Ollama's counts and durations.
struct OllamaResponseBuilder {
    /// Which Ollama route answers: `/api/chat` (`message`) or `/api/generate` (`response`).
    enum Shape { case chat, generate }

    let shape: Shape
    let kind: UpstreamPlan.Kind
    /// The model name as the client sent it (Ollama echoes it).
    let model: String
    private(set) var content = ""
    private(set) var thinking = ""
    private var toolCalls: [Int: (id: String?, name: String, arguments: String)] = [:]
    private(set) var finishReason: String?
    private(set) var usage: [String: Any]?
    private(set) var timings: [String: Any]?
    /// An error llama-server reported inside the stream.
    private(set) var upstreamError: String?

    init(shape: Shape, kind: UpstreamPlan.Kind, model: String) {
        self.shape = shape
        self.kind = kind
        self.model = model
    }

    /// Feeds one SSE `data:` payload; returns the chunks to send a streaming client now.
    mutating func feed(_ payload: Substring) -> [[String: Any]] {
        if payload == "[DONE]" { return [] }
        guard let event = try? JSONSerialization.jsonObject(with: Data(payload.utf8)) as? [String: Any] else { return [] }
        if let u = event["usage"] as? [String: Any] { usage = u }
        if let t = event["timings"] as? [String: Any] { timings = t }
        if let e = event["error"] {
            upstreamError = ((e as? [String: Any])?["message"] as? String) ?? "\(e)"
            return []
        }
        var text = ""
        var reasoning = ""
        switch kind {
        case .infill:
            text = event["content"] as? String ?? ""
            if (event["stop"] as? Bool) == true {
                finishReason = (event["stop_type"] as? String) == "limit" ? "length" : "stop"
            }
        case .completion, .chat:
            guard let choice = (event["choices"] as? [Any])?.first as? [String: Any] else { return [] }
            if let reason = choice["finish_reason"] as? String { finishReason = reason }
            if kind == .completion {
                text = choice["text"] as? String ?? ""
            } else if let delta = choice["delta"] as? [String: Any] {
                text = delta["content"] as? String ?? ""
                reasoning = delta["reasoning_content"] as? String ?? ""
                for call in delta["tool_calls"] as? [[String: Any]] ?? [] { addToolCallDelta(call) }
            }
        }
        content += text
        thinking += reasoning
        guard !text.isEmpty || !reasoning.isEmpty else { return [] }
        return [chunk(text: text, thinking: reasoning, toolCalls: nil)]
    }

    private mutating func addToolCallDelta(_ call: [String: Any]) {
        let index = call["index"] as? Int ?? toolCalls.count
        let function = call["function"] as? [String: Any] ?? [:]
        var entry = toolCalls[index] ?? (id: nil, name: "", arguments: "")
        if let id = call["id"] as? String { entry.id = id }
        if let name = function["name"] as? String { entry.name += name }
        if let args = function["arguments"] as? String { entry.arguments += args }
        toolCalls[index] = entry
    }

    /// Complete tool calls in Ollama's form (arguments as an object).
    var ollamaToolCalls: [[String: Any]] {
        toolCalls.keys.sorted().map { i in
            let c = toolCalls[i]!
            let arguments = (try? JSONSerialization.jsonObject(with: Data(c.arguments.utf8))) ?? [String: Any]()
            var call: [String: Any] = ["function": ["index": i, "name": c.name, "arguments": arguments]]
            if let id = c.id { call["id"] = id }
            return call
        }
    }

    /// The chunk carrying finished tool calls (streamed before the final chunk), if any.
    func toolCallChunk() -> [String: Any]? {
        toolCalls.isEmpty ? nil : chunk(text: "", thinking: "", toolCalls: ollamaToolCalls)
    }

    private func chunk(text: String, thinking: String, toolCalls: [[String: Any]]?) -> [String: Any] {
        var c: [String: Any] = ["model": model, "created_at": OllamaValues.timestamp(), "done": false]
        switch shape {
        case .chat:
            var message: [String: Any] = ["role": "assistant", "content": text]
            if !thinking.isEmpty { message["thinking"] = thinking }
            if let toolCalls { message["tool_calls"] = toolCalls }
            c["message"] = message
        case .generate:
            c["response"] = text
            if !thinking.isEmpty { c["thinking"] = thinking }
        }
        return c
    }

    /// Ollama's `done_reason`: `length` when the token limit cut it, else `stop`.
    var doneReason: String { finishReason == "length" ? "length" : "stop" }

    /// The final object: the whole answer (`stream: false`) or the last chunk of a stream.
    /// - Parameters:
    ///   - total: arrival at Corral until now.
    ///   - load: queue plus model load (Ollama's `load_duration`).
    func final(whole: Bool, total: Duration, load: Duration) -> [String: Any] {
        var c = chunk(text: whole ? content : "", thinking: whole ? thinking : "", toolCalls: whole && !toolCalls.isEmpty ? ollamaToolCalls : nil)
        c["done"] = true
        c["done_reason"] = doneReason
        for (key, value) in metrics(total: total, load: load) { c[key] = value }
        return c
    }

    /// The six counters, in nanoseconds, from llama-server's timings (usage when absent).
    func metrics(total: Duration, load: Duration) -> [String: Any] {
        let t = timings ?? [:]
        func int(_ key: String) -> Int? { (t[key] as? NSNumber)?.intValue }
        func ns(_ key: String) -> Int64 { Int64(((t[key] as? NSNumber)?.doubleValue ?? 0) * 1_000_000) }
        let promptCount = int("prompt_n").map { $0 + (int("cache_n") ?? 0) } ?? (usage?["prompt_tokens"] as? Int) ?? 0
        let evalCount = int("predicted_n") ?? (usage?["completion_tokens"] as? Int) ?? 0
        return [
            "total_duration": OllamaValues.nanoseconds(total), "load_duration": OllamaValues.nanoseconds(load),
            "prompt_eval_count": promptCount, "prompt_eval_duration": ns("prompt_ms"),
            "eval_count": evalCount, "eval_duration": ns("predicted_ms"),
        ]
    }
}
