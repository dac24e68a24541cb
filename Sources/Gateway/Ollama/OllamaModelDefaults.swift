import Foundation
import Runtime

/// What an Ollama model brings with it: its `params` layer (sampling in Ollama's option names)
/// fills what a request and its profile leave unset, and its `system` layer becomes the system
/// message of a chat that has none — as Ollama does for the same model. Applied on every API.
enum OllamaModelDefaults {
    /// Fills `body` (an upstream chat or completion body) from `spec`'s layers; returns whether
    /// anything was added. Parameters Corral cannot use upstream (num_ctx and other load
    /// options, unknown names) are skipped.
    @discardableResult
    static func apply(_ spec: ModelSpec, to body: inout [String: Any]) -> Bool {
        var changed = false
        if let parameters = spec.ollamaParameters, !parameters.isEmpty,
            let sampling = try? OllamaRequests.options(parameters.mapValues(\.any)).sampling
        {
            let limits = ["max_tokens", "max_completion_tokens", "n_predict"]
            for (key, value) in sampling where body[key] == nil {
                if limits.contains(key) && limits.contains(where: { body[$0] != nil }) { continue }
                body[key] = value
                changed = true
            }
        }
        if let system = spec.systemPrompt, !system.isEmpty, var messages = body["messages"] as? [Any],
            !messages.contains(where: { ($0 as? [String: Any])?["role"] as? String == "system" })
        {
            messages.insert(["role": "system", "content": system], at: 0)
            body["messages"] = messages
            changed = true
        }
        return changed
    }
}
