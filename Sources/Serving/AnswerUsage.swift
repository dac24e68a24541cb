/// The numeric members of a JSON object, nested objects kept the same way (strings, booleans,
/// nulls and arrays left out): what ``JSONMembers/members(_:of:)`` reads of `usage` and `timings`.
public struct NumericObject: Sendable, Equatable {
    public var numbers: [String: Double] = [:]
    public var objects: [String: NumericObject] = [:]

    public init(numbers: [String: Double] = [:], objects: [String: NumericObject] = [:]) {
        self.numbers = numbers
        self.objects = objects
    }

    /// The member `key` when it is a whole number.
    public func int(_ key: String) -> Int? {
        guard let value = numbers[key], value == value.rounded(), abs(value) < 9.0e15 else { return nil }
        return Int(value)
    }

    public func double(_ key: String) -> Double? { numbers[key] }

    /// `self` with `newer`'s members over it (nested objects replaced whole, as a shallow merge does).
    public func merging(_ newer: NumericObject) -> NumericObject {
        NumericObject(
            numbers: numbers.merging(newer.numbers) { _, new in new }.filter { newer.objects[$0.key] == nil },
            objects: objects.merging(newer.objects) { _, new in new }.filter { newer.numbers[$0.key] == nil })
    }
}

/// What an answer reports it used: its `usage` (OpenAI's or Anthropic's names) and llama-server's
/// `timings`, read as they pass. The ledger row and the reservation's reconciliation come from it.
public struct AnswerUsage: Sendable, Equatable {
    /// The answer's `usage` object, if any.
    public var usage: NumericObject?
    /// llama-server's `timings` object, if any.
    public var timings: NumericObject?

    public init(usage: NumericObject? = nil, timings: NumericObject? = nil) {
        self.usage = usage
        self.timings = timings
    }

    /// Reads `usage` and `timings` from a whole answer (or the first part of a long one).
    public init(answer bytes: UnsafeRawBufferPointer) {
        let found = JSONMembers.members(["usage", "timings"], of: bytes)
        self.init(usage: found?["usage"], timings: found?["timings"])
    }

    /// The prompt tokens of an OpenAI `usage` (`prompt_tokens`, cached ones included) or an
    /// Anthropic one (`input_tokens` plus `cache_read_input_tokens` and
    /// `cache_creation_input_tokens`, which it counts apart).
    public var promptTokens: Int? {
        guard let usage else { return nil }
        if let openAI = usage.int("prompt_tokens") { return openAI }
        guard let input = usage.int("input_tokens") else { return nil }
        return input + (usage.int("cache_read_input_tokens") ?? 0) + (usage.int("cache_creation_input_tokens") ?? 0)
    }

    /// Prompt tokens served from the KV cache.
    public var cachedTokens: Int? {
        usage?.objects["prompt_tokens_details"]?.int("cached_tokens") ?? usage?.int("cache_read_input_tokens") ?? timings?.int("cache_n")
    }

    public var completionTokens: Int? { usage?.int("completion_tokens") ?? usage?.int("output_tokens") }
    public var promptTokensPerSecond: Double? { timings?.double("prompt_per_second") }
    public var generationTokensPerSecond: Double? { timings?.double("predicted_per_second") }
    public var timePerOutputTokenMs: Double? { timings?.double("predicted_per_token_ms") }
}
