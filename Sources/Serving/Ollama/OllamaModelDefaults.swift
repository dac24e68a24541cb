import Jobs
import Runtime

/// What an Ollama model brings with it: its `params` layer (sampling in Ollama's option names)
/// fills what a request and its profile leave unset, and its `system` layer becomes the system
/// message of a chat that has none — as Ollama does for the same model. Applied on every API.
public enum OllamaModelDefaults {
    /// The request fields that limit the output: a request that sets one gets no other.
    static let limits = ["max_tokens", "max_completion_tokens", "n_predict"]

    /// The upstream sampling fields of `spec`'s `params` layer that a request does not set
    /// itself (`requestSets`). Parameters Corral cannot use upstream (num_ctx and other load
    /// options, unknown names) are skipped; a layer that does not check adds nothing.
    public static func sampling(_ spec: ModelSpec, missingFrom requestSets: (String) -> Bool) -> [String: JobJSON] {
        guard let parameters = spec.ollamaParameters, !parameters.isEmpty,
            let sampling = try? OllamaRequests.options(.object(parameters.mapValues(JobJSON.init(sampling:)))).sampling
        else { return [:] }
        return sampling.filter { key, _ in !requestSets(key) && !(limits.contains(key) && limits.contains(where: requestSets)) }
    }

    /// The system prompt of `spec`'s `system` layer, if it has a non-empty one.
    public static func systemPrompt(_ spec: ModelSpec) -> String? {
        spec.systemPrompt.flatMap { $0.isEmpty ? nil : $0 }
    }

    /// Fills `body` (an upstream chat or completion body) from `spec`'s layers; returns whether
    /// anything was added.
    @discardableResult
    public static func apply(_ spec: ModelSpec, to body: inout [String: JobJSON]) -> Bool {
        let request = body
        let added = sampling(spec) { request[$0] != nil }
        body.merge(added) { old, _ in old }
        guard let system = systemPrompt(spec), case .array(var messages)? = body["messages"],
            !messages.contains(where: { $0["role"]?.stringValue == "system" })
        else { return !added.isEmpty }
        messages.insert(.object(["role": .string("system"), "content": .string(system)]), at: 0)
        body["messages"] = .array(messages)
        return true
    }
}

extension JobJSON {
    /// A sampling profile's or an Ollama parameter's value as JSON (a list of strings stays one).
    public init(sampling value: SendableJSON) {
        switch value {
        case .number(let n): self = .number(n)
        case .strings(let list): self = .array(list.map(JobJSON.string))
        case .bool(let b): self = .bool(b)
        }
    }
}
