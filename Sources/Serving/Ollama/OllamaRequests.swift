import Access
import Foundation
import Jobs
import Runtime

/// An Ollama request body: the JSON object a client sent, read field by field (unknown fields
/// are ignored, as Ollama does).
public typealias OllamaBody = [String: JobJSON]

/// What an Ollama request becomes upstream: the llama-server route, its body, and what the
/// scheduler needs to know (keep-alive, load options).
public struct UpstreamPlan: Sendable {
    public enum Kind: Equatable, Sendable {
        /// `/v1/chat/completions` (OpenAI chunks, `choices[0].delta`).
        case chat
        /// `/v1/completions` (OpenAI chunks, `choices[0].text`).
        case completion
        /// `/infill` (llama.cpp-native chunks, `content`/`stop`).
        case infill
    }
    public var kind: Kind
    public var path: String
    public var body: [String: JobJSON]
    public var keepAlive: Duration?
    public var load: LoadOptions?
}

/// Translates Ollama requests into llama-server requests. Pure functions over JSON values, so
/// they are unit-tested and fuzzed without a server.
public enum OllamaRequests {
    /// Options that are sampling parameters, sent per request under llama-server's names.
    static let samplingOptions: [String: String] = [
        "num_predict": "max_tokens", "temperature": "temperature", "top_k": "top_k", "top_p": "top_p",
        "min_p": "min_p", "typical_p": "typical_p", "repeat_last_n": "repeat_last_n", "repeat_penalty": "repeat_penalty",
        "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty", "seed": "seed",
        "mirostat": "mirostat", "mirostat_tau": "mirostat_tau", "mirostat_eta": "mirostat_eta", "num_keep": "n_keep",
        "stop": "stop",
    ]
    static let integerOptions: Set<String> = [
        "num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "num_keep", "seed", "num_predict", "top_k",
        "repeat_last_n", "mirostat",
    ]
    static let numberOptions: Set<String> = [
        "temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "presence_penalty", "frequency_penalty",
        "mirostat_tau", "mirostat_eta", "tfs_z",
    ]
    static let boolOptions: Set<String> = ["use_mmap", "use_mlock", "numa", "low_vram", "f16_kv", "vocab_only", "penalize_newline"]

    /// The `model` (or legacy `name`) field.
    public static func modelName(_ body: OllamaBody) throws(OllamaFailure) -> String {
        guard let name = (body["model"] ?? body["name"])?.stringValue, !name.trimmingCharacters(in: .whitespaces).isEmpty else {
            throw .badRequest("model is required")
        }
        return name
    }

    /// Checks `options` types and returns (sampling fields for llama-server, load-time options).
    /// Unknown options are ignored (clients still send removed ones); wrong types are a 400.
    public static func options(_ value: JobJSON?) throws(OllamaFailure) -> (sampling: [String: JobJSON], load: LoadOptions?) {
        guard let value, value != .null else { return ([:], nil) }
        guard case .object(let options) = value else { throw .badRequest("options must be an object") }
        var sampling: [String: JobJSON] = [:]
        var load = LoadOptions()
        for (key, v) in options where v != .null {
            if integerOptions.contains(key) {
                guard let i = v.intValue else { throw .badRequest("option \"\(key)\" must be an integer") }
                switch key {
                case "num_ctx":
                    guard i > 0 else { throw .badRequest("option \"num_ctx\" must be positive") }
                    load.minimumContext = i
                case "num_gpu": load.gpuLayers = i < 0 ? nil : min(i, 10_000)  // -1: let fitting decide
                case "num_thread": if i > 0 { load.threads = min(i, 1024) }
                case "num_batch": if i > 0 { load.batch = min(i, 65_536) }
                case "main_gpu": if i >= 0 { load.mainGPU = min(i, 64) }
                default: break
                }
                if key == "num_predict" && i < 0 { continue }  // -1 / -2: no limit
                if let upstream = samplingOptions[key] { sampling[upstream] = .number(Double(i)) }
            } else if numberOptions.contains(key) {
                guard case .number(let n) = v, n.isFinite else { throw .badRequest("option \"\(key)\" must be a number") }
                if let upstream = samplingOptions[key] { sampling[upstream] = .number(n) }
            } else if boolOptions.contains(key) {
                guard case .bool(let b) = v else { throw .badRequest("option \"\(key)\" must be a boolean") }
                if key == "use_mmap" { load.useMmap = b }
            } else if key == "stop" {
                if case .string = v {
                    sampling["stop"] = .array([v])
                } else if v.stringsValue != nil {
                    sampling["stop"] = v
                } else {
                    throw .badRequest("option \"stop\" must be a list of strings")
                }
            }
        }
        return (sampling, load == LoadOptions() ? nil : load)
    }

    /// Fields every generation request shares: options, format, keep-alive.
    static func common(_ body: OllamaBody) throws(OllamaFailure) -> (fields: [String: JobJSON], keepAlive: Duration?, load: LoadOptions?) {
        let (sampling, load) = try options(body["options"])
        var fields = sampling
        fields["cache_prompt"] = .bool(true)
        switch body["format"] {
        case nil, .null?: break
        case .string("json")?: fields["response_format"] = .object(["type": .string("json_object")])
        case .object(let schema)?:
            fields["response_format"] = .object([
                "type": .string("json_schema"),
                "json_schema": .object(["name": .string("response"), "schema": .object(schema), "strict": .bool(true)]),
            ])
        default: throw .badRequest("format must be \"json\" or a JSON schema object")
        }
        return (fields, try OllamaValues.keepAlive(body["keep_alive"]), load)
    }

    /// Whether the client wants a stream (Ollama's default is yes); anything but a boolean is a 400.
    public static func wantsStream(_ body: OllamaBody) throws(OllamaFailure) -> Bool {
        switch body["stream"] {
        case nil, .null?: return true
        case .bool(let stream)?: return stream
        default: throw .badRequest("stream must be a boolean")
        }
    }

    /// The usage streamed requests ask llama-server for.
    static let includeUsage: JobJSON = .object(["include_usage": .bool(true)])

    /// `/api/chat` → `/v1/chat/completions`.
    public static func chat(_ body: OllamaBody, model: String) throws(OllamaFailure) -> UpstreamPlan {
        let (fields, keepAlive, load) = try common(body)
        guard let messages = body["messages"]?.arrayValue else { throw .badRequest("messages must be a list") }
        var out = fields
        out["model"] = .string(model)
        out["messages"] = .array(try translateMessages(messages))
        out["stream"] = .bool(true)
        out["stream_options"] = includeUsage
        switch body["tools"] {
        case nil, .null?: break
        case .array(let list)?: if !list.isEmpty { out["tools"] = .array(list) }
        default: throw .badRequest("tools must be a list")
        }
        // Not in Ollama's API, but users ask for it (ollama/ollama#8421): honoured when sent.
        if let choice = body["tool_choice"], choice != .null { out["tool_choice"] = choice }
        try applyThink(body["think"], to: &out)
        return UpstreamPlan(kind: .chat, path: "/v1/chat/completions", body: out, keepAlive: keepAlive, load: load)
    }

    /// `/api/generate` → `/infill` (with `suffix`), `/v1/completions` (`raw`) or a one-turn chat.
    public static func generate(_ body: OllamaBody, model: String) throws(OllamaFailure) -> UpstreamPlan {
        let (fields, keepAlive, load) = try common(body)
        let prompt = try optionalString(body, "prompt") ?? ""
        let system = try optionalString(body, "system")
        var out = fields
        out["model"] = .string(model)
        out["stream"] = .bool(true)
        if let suffix = try optionalString(body, "suffix"), !suffix.isEmpty {
            out["input_prefix"] = .string(prompt)
            out["input_suffix"] = .string(suffix)
            out["prompt"] = .string("")
            if let n = out.removeValue(forKey: "max_tokens") { out["n_predict"] = n }
            out.removeValue(forKey: "response_format")
            return UpstreamPlan(kind: .infill, path: "/infill", body: out, keepAlive: keepAlive, load: load)
        }
        if body["raw"]?.boolValue == true {
            out["prompt"] = .string((system.map { $0 + "\n" } ?? "") + prompt)
            out["stream_options"] = includeUsage
            return UpstreamPlan(kind: .completion, path: "/v1/completions", body: out, keepAlive: keepAlive, load: load)
        }
        var messages: [JobJSON] = []
        if let system, !system.isEmpty { messages.append(.object(["role": .string("system"), "content": .string(system)])) }
        messages.append(.object(try translateMessage(["role": .string("user"), "content": .string(prompt), "images": body["images"] ?? .null])))
        out["messages"] = .array(messages)
        out["stream_options"] = includeUsage
        try applyThink(body["think"], to: &out)
        return UpstreamPlan(kind: .chat, path: "/v1/chat/completions", body: out, keepAlive: keepAlive, load: load)
    }

    /// A field that must be a string when present (null counts as absent).
    public static func optionalString(_ body: OllamaBody, _ key: String) throws(OllamaFailure) -> String? {
        switch body[key] {
        case nil, .null?: return nil
        case .string(let s)?: return s
        default: throw .badRequest("\(key) must be a string")
        }
    }

    /// `think: true|false` → `chat_template_kwargs.enable_thinking`; `"high"|"medium"|"low"`
    /// → `reasoning_effort` as well.
    static func applyThink(_ think: JobJSON?, to out: inout [String: JobJSON]) throws(OllamaFailure) {
        switch think {
        case nil, .null?: return
        case .bool(let b)?: out["chat_template_kwargs"] = .object(["enable_thinking": .bool(b)])
        case .string(let level)? where ["high", "medium", "low"].contains(level):
            out["chat_template_kwargs"] = .object(["enable_thinking": .bool(true), "reasoning_effort": .string(level)])
            out["reasoning_effort"] = .string(level)
        default: throw .badRequest("think must be true, false, \"high\", \"medium\" or \"low\"")
        }
    }

    /// Ollama messages → OpenAI messages: images become `image_url` parts, tool-call
    /// arguments objects become strings, `tool_name` results get the matching `tool_call_id`.
    static func translateMessages(_ messages: [JobJSON]) throws(OllamaFailure) -> [JobJSON] {
        var out: [JobJSON] = []
        var callIDs: [String: [String]] = [:]  // tool name → ids of calls not yet answered
        for (i, m) in messages.enumerated() {
            guard case .object(let message) = m else { throw .badRequest("messages[\(i)] must be an object") }
            var translated = try translateMessage(message)
            for call in translated["tool_calls"]?.arrayValue ?? [] {
                if let name = call["function"]?["name"]?.stringValue, let id = call["id"]?.stringValue {
                    callIDs[name, default: []].append(id)
                }
            }
            if translated["role"]?.stringValue == "tool", translated["tool_call_id"] == nil {
                let name = message["tool_name"]?.stringValue ?? message["name"]?.stringValue
                if let name, var ids = callIDs[name], !ids.isEmpty {
                    translated["tool_call_id"] = .string(ids.removeFirst())
                    callIDs[name] = ids
                } else if let anyName = callIDs.first(where: { !$0.value.isEmpty })?.key {
                    translated["tool_call_id"] = .string(callIDs[anyName]!.removeFirst())
                }
                if let name { translated["name"] = .string(name) }
            }
            out.append(.object(translated))
        }
        return out
    }

    static func translateMessage(_ message: [String: JobJSON]) throws(OllamaFailure) -> [String: JobJSON] {
        guard let role = message["role"]?.stringValue else { throw .badRequest("each message needs a string role") }
        var text = ""
        switch message["content"] {
        case nil, .null?: break
        case .string(let s)?: text = s
        default: throw .badRequest("message content must be a string")
        }
        var content = JobJSON.string(text)
        switch message["images"] {
        case nil, .null?: break
        case .array(let list)?:
            guard !list.isEmpty else { break }
            var parts: [JobJSON] = []
            if !text.isEmpty { parts.append(.object(["type": .string("text"), "text": .string(text)])) }
            for image in list {
                guard case .string(let b64) = image else { throw .badRequest("images must be a list of base64 strings") }
                parts.append(.object(["type": .string("image_url"), "image_url": .object(["url": .string("data:\(imageMIME(b64));base64,\(b64)")])]))
            }
            content = .array(parts)
        default: throw .badRequest("images must be a list of base64 strings")
        }
        var out: [String: JobJSON] = ["role": .string(role), "content": content]
        if let thinking = message["thinking"]?.stringValue, !thinking.isEmpty { out["reasoning_content"] = .string(thinking) }
        if let id = message["tool_call_id"]?.stringValue { out["tool_call_id"] = .string(id) }
        switch message["tool_calls"] {
        case nil, .null?: break
        case .array(let list)?:
            var translated: [JobJSON] = []
            for (i, call) in list.enumerated() {
                guard case .object(let function)? = call["function"], let name = function["name"]?.stringValue else {
                    throw .badRequest("each tool call needs function.name")
                }
                let arguments: String
                switch function["arguments"] {
                case .string(let s)?: arguments = s
                case nil, .null?: arguments = "{}"
                case let object?: arguments = OllamaJSON.text(object)
                }
                translated.append(.object([
                    "id": .string(call["id"]?.stringValue ?? "call_\(i)_\(name)"), "type": .string("function"),
                    "function": .object(["name": .string(name), "arguments": .string(arguments)]),
                ]))
            }
            if !translated.isEmpty { out["tool_calls"] = .array(translated) }
        default: throw .badRequest("tool_calls must be a list")
        }
        return out
    }

    /// The image type from the first bytes of its base64 text.
    static func imageMIME(_ base64: String) -> String {
        if base64.hasPrefix("iVBOR") { return "image/png" }
        if base64.hasPrefix("R0lG") { return "image/gif" }
        if base64.hasPrefix("UklG") { return "image/webp" }
        return "image/jpeg"
    }
}

extension TokenEstimate {
    /// The estimate ``TokenEstimate/init(_:)`` makes, for an upstream body held as JSON values
    /// (the Ollama translation's): the bytes of its text, a fixed allowance per image and per
    /// message, its tools as JSON, and its output limit.
    init(upstream body: [String: JobJSON]) {
        var bytes = 0
        func count(_ value: JobJSON?) {
            switch value {
            case .string(let s)?: bytes += s.utf8.count
            case .array(let list)?: for item in list { count(item) }
            case .object(let object)?:
                for (key, member) in object where key != "image_url" && key != "type" { count(member) }
                if object["image_url"] != nil { bytes += 768 }  // an image: a fixed allowance
            default: break
            }
        }
        let messages = body["messages"]?.arrayValue?.count ?? 0
        count(body["messages"])
        for key in ["prompt", "input", "input_prefix", "input_suffix", "content", "query", "documents", "system"] { count(body[key]) }
        if let tools = body["tools"] { bytes += OllamaJSON.data(tools).count }
        let limit = ["max_tokens", "max_completion_tokens", "n_predict", "max_output_tokens"].lazy.compactMap { body[$0]?.intValue }.first { $0 >= 0 }
        let embeddingLike = body["input"] != nil && body["messages"] == nil && body["prompt"] == nil
        self.init(prompt: bytes + messages * 32 + 16, output: embeddingLike ? 0 : limit)
    }
}
