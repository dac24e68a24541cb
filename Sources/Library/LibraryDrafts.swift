import GGUF
import Runtime

/// Which models draft for a library model and which it can draft for, as `/admin/models` shows
/// them next to each entry.
public struct LibraryDrafts: Encodable, Sendable, Equatable {
    /// The model drafting for it, or the configured draft and why it was refused; nil without one.
    public var draft: Draft?
    /// The library models that could draft for it, smallest file first (`auto` takes the first).
    public var draftCandidates: [String]
    /// The library models it could draft for.
    public var canDraftFor: [String]

    /// A model no draft is known for.
    public static let empty = LibraryDrafts(draft: nil, draftCandidates: [], canDraftFor: [])

    /// `draft` is null when there is none.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(draft, forKey: .draft)
        try c.encode(draftCandidates, forKey: .draftCandidates)
        try c.encode(canDraftFor, forKey: .canDraftFor)
    }

    enum CodingKeys: String, CodingKey { case draft, draftCandidates, canDraftFor }

    /// A model's draft: the one in use with its settings, flags and estimated memory, or a refusal.
    public struct Draft: Encodable, Sendable, Equatable {
        public var model: String?
        public var automatic: Bool?
        public var maxTokens: Int?
        public var minP: Double?
        public var gpuLayers: Int?
        public var arguments: [String]?
        public var estimatedMiB: Int?
        /// A refused draft: the model configured, and the reason.
        public var requested: String?
        public var refused: String?

        /// Settings the draft does not set are shown as null (the configured ones' keys are all
        /// there); a refusal shows only what was asked and why.
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            if let refused {
                try c.encode(requested, forKey: .requested)
                try c.encode(refused, forKey: .refused)
                return
            }
            try c.encode(model, forKey: .model)
            try c.encode(automatic, forKey: .automatic)
            try c.encode(maxTokens, forKey: .maxTokens)
            try c.encode(minP, forKey: .minP)
            try c.encode(gpuLayers, forKey: .gpuLayers)
            try c.encode(arguments, forKey: .arguments)
            try c.encode(estimatedMiB, forKey: .estimatedMiB)
        }

        enum CodingKeys: String, CodingKey {
            case model, automatic, maxTokens, minP, gpuLayers, arguments, estimatedMiB, requested, refused
        }
    }

    /// Every catalog model's drafts, by model id.
    public static func all(in catalog: ModelCatalog) -> [String: LibraryDrafts] {
        let pairs = DraftPairs(catalog)
        var out: [String: LibraryDrafts] = [:]
        for spec in catalog.models {
            out[spec.id] = LibraryDrafts(draft: draft(of: spec), draftCandidates: pairs.candidates[spec.id] ?? [], canDraftFor: pairs.draftsFor[spec.id] ?? [])
        }
        return out
    }

    /// The draft a model is started with (its memory estimated at the model's context and slots),
    /// or the configured one it was refused.
    static func draft(of spec: ModelSpec) -> Draft? {
        if let d = spec.draft, !spec.draftArguments.isEmpty {
            var context = MemoryEstimator.Settings()
            context.contextSize = spec.contextSize ?? min(spec.facts?.contextLength ?? 4096, 8192)
            context.parallel = spec.parallel
            return Draft(model: d.model, automatic: d.automatic, maxTokens: d.maxTokens, minP: d.minP, gpuLayers: d.gpuLayers, arguments: d.arguments,
                         estimatedMiB: Int(MemoryEstimator.estimate(d.facts, context).total / 1_048_576))
        }
        if let r = spec.draftRefusal { return Draft(requested: r.requested, refused: r.reason) }
        return nil
    }
}
