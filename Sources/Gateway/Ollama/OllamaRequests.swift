import Foundation
import Runtime

/// What an Ollama request becomes upstream: the llama-server route, its body, and what the
/// scheduler needs to know (keep-alive, minimum context).
struct UpstreamPlan {
    enum Kind: Equatable, Sendable {
        /// `/v1/chat/completions` (OpenAI chunks, `choices[0].delta`).
        case chat
        /// `/v1/completions` (OpenAI chunks, `choices[0].text`).
        case completion
        /// `/infill` (llama.cpp-native chunks, `content`/`stop`).
        case infill
    }
    var kind: Kind
    var path: String
    var body: [String: Any]
    var keepAlive: Duration?
    var load: LoadOptions?
}

/// Translates Ollama requests into llama-server requests. Pure functions over parsed JSON, so
/// they are unit-tested and fuzzed without a server.
enum OllamaRequests {
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

    /// Checks `options` types and returns (sampling fields for llama-server, load-time options).
    /// Unknown options are ignored (clients still send removed ones); wrong types are a 400.
    static func options(_ value: Any?) throws(OllamaError) -> (sampling: [String: Any], load: LoadOptions?) {
        guard let value, !(value is NSNull) else { return ([:], nil) }
        guard let options = value as? [String: Any] else { throw .badRequest("options must be an object") }
        var sampling: [String: Any] = [:]
        var load = LoadOptions()
        for (key, v) in options where !(v is NSNull) {
            if integerOptions.contains(key) {
                guard let n = v as? NSNumber, !isJSONBool(n), let i = Int(exactly: n.doubleValue) else {
                    throw .badRequest("option \"\(key)\" must be an integer")
                }
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
                if let upstream = samplingOptions[key] { sampling[upstream] = i }
            } else if numberOptions.contains(key) {
                guard let n = v as? NSNumber, !isJSONBool(n), n.doubleValue.isFinite else { throw .badRequest("option \"\(key)\" must be a number") }
                if let upstream = samplingOptions[key] { sampling[upstream] = n.doubleValue }
            } else if boolOptions.contains(key) {
                guard isJSONBool(v) else { throw .badRequest("option \"\(key)\" must be a boolean") }
                if key == "use_mmap" { load.useMmap = v as? Bool }
            } else if key == "stop" {
                if let s = v as? String {
                    sampling["stop"] = [s]
                } else if let list = v as? [Any], list.allSatisfy({ $0 is String }) {
                    sampling["stop"] = list
                } else {
                    throw .badRequest("option \"stop\" must be a list of strings")
                }
            }
        }
        return (sampling, load == LoadOptions() ? nil : load)
    }

    /// Fields every generation request shares: options, format, keep-alive.
    static func common(_ body: [String: Any]) throws(OllamaError) -> (fields: [String: Any], keepAlive: Duration?, load: LoadOptions?) {
        let (sampling, load) = try options(body["options"])
        var fields = sampling
        fields["cache_prompt"] = true
        if let format = body["format"], !(format is NSNull) {
            if let s = format as? String {
                guard s == "json" else { throw .badRequest("format must be \"json\" or a JSON schema object") }
                fields["response_format"] = ["type": "json_object"]
            } else if let schema = format as? [String: Any] {
                fields["response_format"] = ["type": "json_schema", "json_schema": ["name": "response", "schema": schema, "strict": true]]
            } else {
                throw .badRequest("format must be \"json\" or a JSON schema object")
            }
        }
        return (fields, try OllamaValues.keepAlive(body["keep_alive"]), load)
    }

    /// Whether the client wants a stream (Ollama's default is yes); anything but a boolean is a 400.
    static func wantsStream(_ body: [String: Any]) throws(OllamaError) -> Bool {
        if let stream = body["stream"], !(stream is NSNull), !isJSONBool(stream) { throw .badRequest("stream must be a boolean") }
        return (body["stream"] as? Bool) ?? true
    }

    /// `/api/chat` → `/v1/chat/completions`.
    static func chat(_ body: [String: Any], model: String) throws(OllamaError) -> UpstreamPlan {
        let (fields, keepAlive, load) = try common(body)
        guard let messages = body["messages"] as? [Any] else { throw .badRequest("messages must be a list") }
        var out = fields
        out["model"] = model
        out["messages"] = try translateMessages(messages)
        out["stream"] = true
        out["stream_options"] = ["include_usage": true]
        if let tools = body["tools"], !(tools is NSNull) {
            guard let list = tools as? [Any] else { throw .badRequest("tools must be a list") }
            if !list.isEmpty { out["tools"] = list }
        }
        // Not in Ollama's API, but users ask for it (ollama/ollama#8421): honoured when sent.
        if let choice = body["tool_choice"], !(choice is NSNull) { out["tool_choice"] = choice }
        try applyThink(body["think"], to: &out)
        return UpstreamPlan(kind: .chat, path: "/v1/chat/completions", body: out, keepAlive: keepAlive, load: load)
    }

    /// `/api/generate` → `/infill` (with `suffix`), `/v1/completions` (`raw`) or a one-turn chat.
    static func generate(_ body: [String: Any], model: String) throws(OllamaError) -> UpstreamPlan {
        let (fields, keepAlive, load) = try common(body)
        let prompt = try optionalString(body, "prompt") ?? ""
        let system = try optionalString(body, "system")
        var out = fields
        out["model"] = model
        out["stream"] = true
        if let suffix = try optionalString(body, "suffix"), !suffix.isEmpty {
            out["input_prefix"] = prompt
            out["input_suffix"] = suffix
            out["prompt"] = ""
            if let n = out.removeValue(forKey: "max_tokens") { out["n_predict"] = n }
            out.removeValue(forKey: "response_format")
            return UpstreamPlan(kind: .infill, path: "/infill", body: out, keepAlive: keepAlive, load: load)
        }
        if (body["raw"] as? Bool) == true {
            out["prompt"] = (system.map { $0 + "\n" } ?? "") + prompt
            out["stream_options"] = ["include_usage": true]
            return UpstreamPlan(kind: .completion, path: "/v1/completions", body: out, keepAlive: keepAlive, load: load)
        }
        var messages: [[String: Any]] = []
        if let system, !system.isEmpty { messages.append(["role": "system", "content": system]) }
        messages.append(try translateMessage(["role": "user", "content": prompt, "images": body["images"] ?? NSNull()]))
        out["messages"] = messages
        out["stream_options"] = ["include_usage": true]
        try applyThink(body["think"], to: &out)
        return UpstreamPlan(kind: .chat, path: "/v1/chat/completions", body: out, keepAlive: keepAlive, load: load)
    }

    static func optionalString(_ body: [String: Any], _ key: String) throws(OllamaError) -> String? {
        guard let v = body[key], !(v is NSNull) else { return nil }
        guard let s = v as? String else { throw .badRequest("\(key) must be a string") }
        return s
    }

    /// `think: true|false` → `chat_template_kwargs.enable_thinking`; `"high"|"medium"|"low"`
    /// → `reasoning_effort` as well.
    static func applyThink(_ think: Any?, to out: inout [String: Any]) throws(OllamaError) {
        guard let think, !(think is NSNull) else { return }
        if isJSONBool(think), let b = think as? Bool {
            out["chat_template_kwargs"] = ["enable_thinking": b]
        } else if let level = think as? String, ["high", "medium", "low"].contains(level) {
            out["chat_template_kwargs"] = ["enable_thinking": true, "reasoning_effort": level]
            out["reasoning_effort"] = level
        } else {
            throw .badRequest("think must be true, false, \"high\", \"medium\" or \"low\"")
        }
    }

    /// Ollama messages → OpenAI messages: images become `image_url` parts, tool-call
    /// arguments objects become strings, `tool_name` results get the matching `tool_call_id`.
    static func translateMessages(_ messages: [Any]) throws(OllamaError) -> [[String: Any]] {
        var out: [[String: Any]] = []
        var callIDs: [String: [String]] = [:]  // tool name → ids of calls not yet answered
        for (i, m) in messages.enumerated() {
            guard let message = m as? [String: Any] else { throw .badRequest("messages[\(i)] must be an object") }
            var translated = try translateMessage(message)
            if let calls = translated["tool_calls"] as? [[String: Any]] {
                for call in calls {
                    if let name = (call["function"] as? [String: Any])?["name"] as? String, let id = call["id"] as? String {
                        callIDs[name, default: []].append(id)
                    }
                }
            }
            if translated["role"] as? String == "tool", translated["tool_call_id"] == nil {
                let name = (message["tool_name"] as? String) ?? (message["name"] as? String)
                if let name, var ids = callIDs[name], !ids.isEmpty {
                    translated["tool_call_id"] = ids.removeFirst()
                    callIDs[name] = ids
                } else if let anyName = callIDs.first(where: { !$0.value.isEmpty })?.key {
                    translated["tool_call_id"] = callIDs[anyName]!.removeFirst()
                }
                if let name { translated["name"] = name }
            }
            out.append(translated)
        }
        return out
    }

    static func translateMessage(_ message: [String: Any]) throws(OllamaError) -> [String: Any] {
        guard let role = message["role"] as? String else { throw .badRequest("each message needs a string role") }
        var content: Any = ""
        if let c = message["content"], !(c is NSNull) {
            guard let text = c as? String else { throw .badRequest("message content must be a string") }
            content = text
        }
        if let images = message["images"], !(images is NSNull) {
            guard let list = images as? [Any] else { throw .badRequest("images must be a list of base64 strings") }
            if !list.isEmpty {
                var parts: [[String: Any]] = []
                if let text = content as? String, !text.isEmpty { parts.append(["type": "text", "text": text]) }
                for image in list {
                    guard let b64 = image as? String else { throw .badRequest("images must be a list of base64 strings") }
                    parts.append(["type": "image_url", "image_url": ["url": "data:\(imageMIME(b64));base64,\(b64)"]])
                }
                content = parts
            }
        }
        var out: [String: Any] = ["role": role, "content": content]
        if let thinking = message["thinking"] as? String, !thinking.isEmpty { out["reasoning_content"] = thinking }
        if let id = message["tool_call_id"] as? String { out["tool_call_id"] = id }
        if let calls = message["tool_calls"], !(calls is NSNull) {
            guard let list = calls as? [Any] else { throw .badRequest("tool_calls must be a list") }
            var translated: [[String: Any]] = []
            for (i, c) in list.enumerated() {
                guard let call = c as? [String: Any], let function = call["function"] as? [String: Any],
                    let name = function["name"] as? String
                else { throw .badRequest("each tool call needs function.name") }
                let arguments: String
                switch function["arguments"] {
                case let s as String: arguments = s
                case nil, is NSNull: arguments = "{}"
                case let object?: arguments = JSON.encode(object)
                }
                translated.append([
                    "id": (call["id"] as? String) ?? "call_\(i)_\(name)", "type": "function",
                    "function": ["name": name, "arguments": arguments],
                ])
            }
            if !translated.isEmpty { out["tool_calls"] = translated }
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
