import GGUF
import Jobs
import Runtime

// The library's answers as values, encoded by the HTTP layer as they are (camelCase keys, as
// `/admin/models` has always written them; a field the answer has no value for is null where a
// comment says so, absent otherwise).

/// One library entry: facts, file, state, usage, fit and benchmarks.
public struct LibraryEntry: Encodable, Sendable, Equatable {
    /// What the GGUF header says (absent for a model served by a remote upstream).
    public struct Facts: Sendable, Equatable {
        public var architecture: String
        public var name: String?
        public var parameters: UInt64
        public var parameterSize: String
        public var quantization: String
        public var bitsPerWeight: Double
        public var contextLength: Int?
        public var layers: Int?
        public var embeddingLength: Int?
        public var heads: Int?
        public var kvHeads: Int?
        public var vocabularySize: Int?
        public var fit: Fit
        /// A detail's extras.
        public var tensorBytes: UInt64?
        public var chatTemplate: String?
        public var detailed = false
    }
    /// Whether the model fits at its configured context.
    public struct Fit: Encodable, Sendable, Equatable {
        public var verdict: String
        public var context: Int
        public var gpuLayers: Int
        public var estimatedMiB: Int
        public var largestContext: Int
    }
    /// The loaded instance (null fields where the scheduler has no value).
    public struct Running: Encodable, Sendable, Equatable {
        public var pid: Int32
        public var arguments: [String]
        public var projectedMiB: Int?
        public var allocatedMiB: [String: Double]
        public var allocationSource: String?
        public var planSource: String?
        public var contextSize: Int?

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(pid, forKey: .pid)
            try c.encode(arguments, forKey: .arguments)
            try c.encode(projectedMiB, forKey: .projectedMiB)
            try c.encode(allocatedMiB, forKey: .allocatedMiB)
            try c.encode(allocationSource, forKey: .allocationSource)
            try c.encode(planSource, forKey: .planSource)
            try c.encode(contextSize, forKey: .contextSize)
        }
        enum CodingKeys: String, CodingKey { case pid, arguments, projectedMiB, allocatedMiB, allocationSource, planSource, contextSize }
    }
    public struct Usage: Encodable, Sendable, Equatable {
        public var requests: Int
        public var promptTokens: Int
        public var completionTokens: Int
    }

    public var id: String
    public var aliases: [String]
    public var source: String
    public var pinned: Bool
    public var sizeBytes: UInt64
    public var remote: Bool
    public var parent: String?
    public var state: String
    /// RFC 3339, null when never used.
    public var lastUsed: String?
    public var facts: Facts?
    public var capabilities: [String]
    public var running: Running?
    public var usage: Usage
    /// The newest speed benchmarks and finished perplexity runs, newest first, as
    /// `/admin/benchmarks` and `/admin/perplexity` show them.
    public var benchmarks: [JobJSON]
    public var perplexity: [JobJSON]
    /// Which models draft for it and which it drafts for (the list, detail and comparison add them).
    public var drafts: LibraryDrafts?

    enum CodingKeys: String, CodingKey {
        case id, aliases, source, pinned, sizeBytes, remote, parent, state, lastUsed, capabilities, running, usage, benchmarks, perplexity
        case architecture, name, parameters, parameterSize, quantization, bitsPerWeight, contextLength, layers, embeddingLength, heads, kvHeads
        case vocabularySize, fit, tensorBytes, chatTemplate
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encode(aliases, forKey: .aliases)
        try c.encode(source, forKey: .source)
        try c.encode(pinned, forKey: .pinned)
        try c.encode(sizeBytes, forKey: .sizeBytes)
        try c.encode(remote, forKey: .remote)
        try c.encode(parent, forKey: .parent)
        try c.encode(state, forKey: .state)
        try c.encode(lastUsed, forKey: .lastUsed)
        if let f = facts {
            try c.encode(f.architecture, forKey: .architecture)
            try c.encode(f.name, forKey: .name)
            try c.encode(f.parameters, forKey: .parameters)
            try c.encode(f.parameterSize, forKey: .parameterSize)
            try c.encode(f.quantization, forKey: .quantization)
            try c.encode(f.bitsPerWeight, forKey: .bitsPerWeight)
            try c.encode(f.contextLength, forKey: .contextLength)
            try c.encode(f.layers, forKey: .layers)
            try c.encode(f.embeddingLength, forKey: .embeddingLength)
            try c.encode(f.heads, forKey: .heads)
            try c.encode(f.kvHeads, forKey: .kvHeads)
            try c.encode(f.vocabularySize, forKey: .vocabularySize)
            try c.encode(f.fit, forKey: .fit)
            if f.detailed {
                try c.encode(f.tensorBytes, forKey: .tensorBytes)
                try c.encode(f.chatTemplate, forKey: .chatTemplate)
            }
        }
        try c.encode(capabilities, forKey: .capabilities)
        try c.encodeIfPresent(running, forKey: .running)
        try c.encode(usage, forKey: .usage)
        try c.encode(benchmarks, forKey: .benchmarks)
        try c.encode(perplexity, forKey: .perplexity)
        try drafts?.encode(to: encoder)
    }

    /// The value a `sort` key orders by (nil sorts last).
    func sortValue(_ sort: String) -> SortValue? {
        switch sort {
        case "size": .number(Double(sizeBytes))
        case "params": facts.map { .number(Double($0.parameters)) }
        case "lastUsed": lastUsed.map(SortValue.text)
        case "context": facts?.contextLength.map { .number(Double($0)) }
        default: .text(id)
        }
    }

    enum SortValue {
        case number(Double)
        case text(String)

        /// Numbers by value, text in code-point order; a number and a text are unordered.
        static func ascending(_ a: SortValue?, _ b: SortValue?) -> Bool {
            switch (a, b) {
            case (.number(let x)?, .number(let y)?): x < y
            case (.text(let x)?, .text(let y)?): x < y
            case (nil, _): false
            case (_, nil): true
            default: false
            }
        }
    }

    /// The fields a comparison checks for differences, as JSON values (nil where absent).
    func comparedField(_ name: String) -> JobJSON? {
        switch name {
        case "architecture": facts.map { .string($0.architecture) }
        case "parameters": facts.map { .number(Double($0.parameters)) }
        case "quantization": facts.map { .string($0.quantization) }
        case "bitsPerWeight": facts.map { .number($0.bitsPerWeight) }
        case "contextLength": facts.map { $0.contextLength.map { .number(Double($0)) } ?? .null }
        case "layers": facts.map { $0.layers.map { .number(Double($0)) } ?? .null }
        case "embeddingLength": facts.map { $0.embeddingLength.map { .number(Double($0)) } ?? .null }
        case "heads": facts.map { $0.heads.map { .number(Double($0)) } ?? .null }
        case "kvHeads": facts.map { $0.kvHeads.map { .number(Double($0)) } ?? .null }
        case "vocabularySize": facts.map { $0.vocabularySize.map { .number(Double($0)) } ?? .null }
        case "sizeBytes": .number(Double(sizeBytes))
        case "capabilities": .array(capabilities.map(JobJSON.string))
        case "state": .string(state)
        default: nil
        }
    }
}

/// `GET /admin/models`.
public struct LibraryList: Encodable, Sendable, Equatable {
    public var models: [LibraryEntry]
    public var count: Int
}

/// `GET /admin/models/compare`: the entries and the fields whose values differ.
public struct LibraryComparison: Encodable, Sendable, Equatable {
    public var models: [LibraryEntry]
    public var differing: [String]
}

/// `GET /admin/models/{id}/compatibility` (and a remote file's before a pull): the verdict,
/// the memory per device, the largest context, suggestions and a table for plotting.
public struct CompatibilityAnswer: Encodable, Sendable, Equatable {
    public struct Settings: Encodable, Sendable, Equatable {
        public var ctx: Int
        public var parallel: Int
        public var ubatch: Int
        public var kv: String
        public var fa: String
        public var ngl: Int
    }
    public var model: String
    public var settings: Settings
    public var verdict: String
    public var gpuLayers: Int
    public var kvBytesPerToken: UInt64
    public var estimate: [DeviceMemory]
    public var estimatedTotalMiB: Int
    public var availableMiB: [String: Int]
    public var largestContext: Int
    public var suggestions: [Compatibility.Suggestion]
    public var table: [Compatibility.TableRow]
    /// llama.cpp's own projection, with `exact=true`.
    public var exact: ExactProjection?
}

/// One device's estimated memory, in MiB.
public struct DeviceMemory: Encodable, Sendable, Equatable {
    public var device: String
    public var weightsMiB: Int
    public var kvMiB: Int
    public var computeMiB: Int
    public var outputMiB: Int
    public var overheadMiB: Int
    public var totalMiB: Int

    public init(_ d: MemoryEstimator.Device) {
        let mib = { (b: UInt64) in Int((b + 524_288) / 1_048_576) }
        (device, weightsMiB, kvMiB, computeMiB) = (d.name, mib(d.weights), mib(d.kv), mib(d.compute))
        (outputMiB, overheadMiB, totalMiB) = (mib(d.output), mib(d.overhead), mib(d.total))
    }
}

/// `llama-fit-params --fit-print on`'s projection per device, or why there is none.
public struct ExactProjection: Encodable, Sendable, Equatable {
    public struct Device: Encodable, Sendable, Equatable {
        public var device: String
        public var modelMiB: Int
        public var contextMiB: Int
        public var computeMiB: Int
        public var totalMiB: Int
    }
    public var error: String?
    public var source: String?
    public var projection: [Device]?
}

/// `GET /admin/recommendations`.
public struct Recommendations: Encodable, Sendable, Equatable {
    public struct Recommendation: Encodable, Sendable, Equatable {
        public var model: String
        public var score: Double
        public var verdict: String
        public var reason: String
    }
    public var task: String
    public var recommendations: [Recommendation]
}
