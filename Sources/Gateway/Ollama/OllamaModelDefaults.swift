import Foundation
import Jobs
import Runtime
import Serving

extension OllamaModelDefaults {
    /// Fills a relayed OpenAI body, still a dictionary at the HTTP edge, from `spec`'s Ollama
    /// layers (``OllamaModelDefaults/sampling(_:missingFrom:)``, ``OllamaModelDefaults/systemPrompt(_:)``);
    /// returns whether anything was added.
    @discardableResult
    static func apply(_ spec: ModelSpec, to body: inout [String: Any]) -> Bool {
        let request = body
        let added = sampling(spec) { request[$0] != nil }
        for (key, value) in added { body[key] = value.any }
        guard let system = systemPrompt(spec), var messages = body["messages"] as? [Any],
            !messages.contains(where: { ($0 as? [String: Any])?["role"] as? String == "system" })
        else { return !added.isEmpty }
        messages.insert(["role": "system", "content": system], at: 0)
        body["messages"] = messages
        return true
    }
}
