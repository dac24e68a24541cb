import GGUF

/// `models[].draft` in routes.json: which model drafts tokens for this one (speculative
/// decoding) and the draft's own settings.
public struct DraftSetting: Sendable, Equatable {
    /// A named library model, or `auto`: the smallest one whose tokenizer matches.
    public enum Choice: Sendable, Equatable {
        case auto
        case named(String)
    }

    public var model: Choice
    /// Tokens drafted per step (`--spec-draft-n-max`); nil: llama-server's default (3).
    public var maxTokens: Int?
    /// The least probability a drafted token needs to be kept (`--spec-draft-p-min`); nil:
    /// llama-server's default (0).
    public var minP: Double?
    /// The draft's layers on the GPU (`-ngld`); nil: planned by the fit.
    public var gpuLayers: Int?

    public init(model: Choice, maxTokens: Int? = nil, minP: Double? = nil, gpuLayers: Int? = nil) {
        self.model = model
        self.maxTokens = maxTokens
        self.minP = minP
        self.gpuLayers = gpuLayers
    }

    /// How routes.json spells the choice.
    public var requested: String {
        switch model {
        case .auto: "auto"
        case .named(let name): name
        }
    }
}

/// A model's resolved draft: the library model that drafts for it, and the flags llama-server
/// gets for it.
public struct Draft: Sendable, Equatable {
    /// The draft model's id in the catalog.
    public var model: String
    public var path: String
    /// Its header facts (the estimator counts its weights and KV cache from them).
    public var facts: ModelFacts
    public var fileSize: UInt64?
    /// Chosen by `auto` rather than named.
    public var automatic: Bool
    public var maxTokens: Int?
    public var minP: Double?
    public var gpuLayers: Int?

    public init(model: String, path: String, facts: ModelFacts, fileSize: UInt64?, automatic: Bool, maxTokens: Int? = nil, minP: Double? = nil,
                gpuLayers: Int? = nil) {
        self.model = model
        self.path = path
        self.facts = facts
        self.fileSize = fileSize
        self.automatic = automatic
        self.maxTokens = maxTokens
        self.minP = minP
        self.gpuLayers = gpuLayers
    }

    /// llama-server's flags for this draft: the model (`-md`), the draft-model kind of
    /// speculation (without `--spec-type` llama-server loads the draft and never drafts), and
    /// the settings given.
    public var arguments: [String] {
        var a = ["-md", path, "--spec-type", "draft-simple"]
        if let gpuLayers { a += ["-ngld", String(gpuLayers)] }
        if let maxTokens { a += ["--spec-draft-n-max", String(maxTokens)] }
        if let minP { a += ["--spec-draft-p-min", String(minP)] }
        return a
    }

    /// Every llama-server flag that concerns a draft model (with a value), so the fit of the
    /// target model can leave them out: llama-fit-params refuses them (`invalid argument: -md`).
    public static let options: Set<String> = [
        "-md", "--model-draft", "--spec-draft-model", "-ngld", "--gpu-layers-draft", "--n-gpu-layers-draft", "--spec-draft-ngl",
        "--spec-type", "--spec-draft-n-max", "--spec-draft-n-min", "--spec-draft-p-min", "--draft-p-min", "--spec-draft-p-split", "--draft-p-split",
        "-devd", "--device-draft", "--spec-draft-device", "-td", "--threads-draft", "--spec-draft-threads", "-tbd", "--threads-batch-draft",
        "--spec-draft-threads-batch", "-otd", "--override-tensor-draft", "--spec-draft-override-tensor", "--spec-draft-sampling",
    ]
}

/// Why a configured draft is not used.
public struct DraftRefusal: Error, Sendable, Equatable, CustomStringConvertible {
    /// The model that asked for the draft.
    public var model: String
    /// What routes.json asked for (`auto` or a name).
    public var requested: String
    public var reason: String
    public var description: String { "models[\(model)].draft '\(requested)': \(reason)" }

    public init(model: String, requested: String, reason: String) {
        self.model = model
        self.requested = requested
        self.reason = reason
    }
}

extension ModelCatalog {
    /// Why `draft` cannot draft for `target`, or nil when it can: both local chat models with
    /// readable headers whose tokenizers llama.cpp accepts as a pair.
    public static func draftRefusal(target: ModelSpec, draft: ModelSpec) -> String? {
        guard draft.path != nil else { return "'\(draft.id)' is served by a remote upstream" }
        guard let draftFacts = draft.facts else { return "the header of '\(draft.id)' cannot be read" }
        guard draftFacts.capabilities.contains(.completion) else { return "'\(draft.id)' is not a text generation model" }
        guard let facts = target.facts else { return "the header of '\(target.id)' cannot be read" }
        return facts.draftRefusal(draftFacts).map { "'\(draft.id)' does not share the tokenizer of '\(target.id)': \($0)" }
    }

    /// The library models that can draft for `target`, smallest file first: local chat models
    /// other than itself, smaller than it, whose tokenizer matches. `auto` takes the first.
    public func draftCandidates(for target: ModelSpec) -> [ModelSpec] {
        guard target.path != nil, let size = target.fileSize else { return [] }
        return models.filter { m in
            m.id != target.id && m.path != target.path && (m.fileSize ?? .max) < size && Self.draftRefusal(target: target, draft: m) == nil
        }.sorted { ($0.fileSize ?? 0, $0.id) < ($1.fileSize ?? 0, $1.id) }
    }

    /// The draft `setting` gives `target` in this catalog, or why it gives none.
    public func resolveDraft(_ setting: DraftSetting, for target: ModelSpec) -> Result<Draft, DraftRefusal> {
        func refuse(_ reason: String) -> Result<Draft, DraftRefusal> {
            .failure(DraftRefusal(model: target.id, requested: setting.requested, reason: reason))
        }
        guard target.path != nil else { return refuse("'\(target.id)' is served by a remote upstream") }
        guard !target.embeddings, !target.reranking else { return refuse("'\(target.id)' does not generate text") }
        let chosen: ModelSpec
        switch setting.model {
        case .auto:
            guard let first = draftCandidates(for: target).first else {
                return refuse("no smaller library model shares the tokenizer of '\(target.id)'")
            }
            chosen = first
        case .named(let name):
            guard let named = resolve(name) else { return refuse("no model named '\(name)'") }
            if let reason = Self.draftRefusal(target: target, draft: named) { return refuse(reason) }
            chosen = named
        }
        guard let path = chosen.path, let facts = chosen.facts else { return refuse("'\(chosen.id)' has no readable local file") }
        return .success(Draft(model: chosen.id, path: path, facts: facts, fileSize: chosen.fileSize, automatic: setting.model == .auto,
                              maxTokens: setting.maxTokens, minP: setting.minP, gpuLayers: setting.gpuLayers))
    }
}

/// Which library models can draft for which: for each local text model, the smaller models
/// whose tokenizer matches (smallest first), and the larger ones it can draft for.
public struct DraftPairs: Sendable, Equatable {
    /// Model id → the models that can draft for it, smallest file first (`auto` takes the first).
    public var candidates: [String: [String]] = [:]
    /// Model id → the models it can draft for, by name.
    public var draftsFor: [String: [String]] = [:]

    public init(_ catalog: ModelCatalog) {
        for target in catalog.models {
            let drafts = catalog.draftCandidates(for: target).map(\.id)
            if !drafts.isEmpty { candidates[target.id] = drafts }
            for d in drafts { draftsFor[d, default: []].append(target.id) }
        }
        for key in draftsFor.keys { draftsFor[key]!.sort() }
    }
}
