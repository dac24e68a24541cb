import Foundation
import GGUF

/// One servable model: a local GGUF run by llama-server, or a model of a remote upstream.
public struct ModelSpec: Sendable, Equatable {
    public enum Backend: Sendable, Equatable {
        case local(path: String)
        case remote(baseURL: String, apiKeyEnv: String?)
    }

    /// Canonical name (lowercase, no `:latest`).
    public var id: String
    public var backend: Backend
    public var aliases: [String]
    public var pinnedArgs: [String]
    public var contextSize: Int?
    public var ttl: Duration?
    public var parallel: Int
    public var pinned: Bool
    public var embeddings: Bool
    /// Where it came from: `config`, a source folder, or an upstream name.
    public var source: String
    public var facts: ModelFacts?
    public var fileSize: UInt64?
    /// SHA-256 of the file when its source already knows it (Ollama's store).
    public var knownDigest: String?
    /// The model this one was made from (a quantization's source), when its source records it.
    public var parent: String?
    /// The configured source folder the file was found in (nil for explicit and remote models).
    public var sourceDirectory: String?
    /// Other names a source gives the same file (Ollama manifests sharing a blob); listed like
    /// models, unlike configured aliases.
    public var listedAliases: [String] = []
    /// The sampling profile requests get unless they name another.
    public var profile: String?
    /// An Ollama model's own parameters (its `params` layer, in Ollama's option names): what a
    /// request and its profile leave unset.
    public var ollamaParameters: [String: SendableJSON]?
    /// An Ollama model's `system` layer: the system message of a chat that has none.
    public var systemPrompt: String?
    /// Names of the models that answer instead, in order, when this one cannot be loaded (does
    /// not fit, fails to start) or its queue is full.
    public var fallbacks: [String] = []
    /// Streaming chat requests waiting for this model's load see the progress as
    /// `reasoning_content` deltas (else as SSE comments).
    public var progressAsReasoning = false
    /// The host-RAM prompt cache its llama-server keeps (`--cache-ram`, MiB), counted in its
    /// memory projection; 0 for instances that cache no prompts (embedding and reranking).
    public var cacheRamMiB = 0
    /// Its KV caches are saved before its instance stops and restored when it loads again
    /// (`models[].warmSwap`; see ``keepsWarmCaches``).
    public var warmSwap = true
    /// How much of a prompt an idle slot must share to be reused as it is, rather than the best
    /// match restored from the prompt cache (`cache.slotSimilarity`; nil: llama-server's 0.1).
    /// With llama-server's defaults, a slot that shares a long system prompt with the request
    /// always wins, and the conversation's own tokens are recomputed on every turn.
    public var slotSimilarity: Double?
    /// How many instances may serve it and how requests choose among them (`models[].replicas`;
    /// one for models found in source folders).
    public var replicas = ReplicaPolicy.single
    /// The model that drafts tokens for it (speculative decoding, `models[].draft`), resolved
    /// against the library; nil when none is configured or the configured one was refused.
    public var draft: Draft?
    /// Why the configured draft is not used (no such model, a tokenizer llama.cpp would not
    /// pair with this model's, nothing smaller matches for `auto`).
    public var draftRefusal: DraftRefusal?

    /// The prompt cache a launch with `arguments` keeps, MiB: the last `--cache-ram` (`-cram`)
    /// given, as llama.cpp reads it; a negative value (no limit) counts as llama-server's 8 GiB.
    public static func cacheRamMiB(in arguments: [String]) -> Int {
        guard let i = arguments.lastIndex(where: { $0 == "--cache-ram" || $0 == "-cram" }), i + 1 < arguments.count,
            let mib = Int(arguments[i + 1])
        else { return 8192 }
        return mib < 0 ? 8192 : mib
    }

    public var path: String? {
        if case .local(let p) = backend { return p }
        return nil
    }

    /// What ends the id of a model's embedding companion (see ``embeddingCompanion``).
    public static let embeddingsSuffix = "#embeddings"

    /// For a local model whose instance does not run in embedding mode: the same file served by
    /// a second instance in embedding mode, with its own slot, memory and idle TTL in the
    /// scheduler (`chat#embeddings`), so every model answers embedding requests as Ollama's do.
    /// It is not listed; ``ModelCatalog/resolve(_:)`` finds it by its id. Nil for models that
    /// embed already and for remote ones.
    public var embeddingCompanion: ModelSpec? {
        guard !embeddings, case .local = backend else { return nil }
        var companion = self
        companion.id = id + Self.embeddingsSuffix
        companion.aliases = [id] + aliases  // so team model lists naming the model allow it
        companion.listedAliases = []
        companion.embeddings = true
        companion.pinned = false
        companion.profile = nil
        companion.ollamaParameters = nil
        companion.systemPrompt = nil
        companion.fallbacks = []  // the model's fallbacks answer chat, not embeddings
        // One slot: with several, llama-server gives every input after the first of a batched
        // request a wrong vector for a chat model in embedding mode (cosine 0.71 to the same
        // sentence alone, seen with SmolLM2 at -np 2 and 4; right at -np 1; llama.cpp #26282).
        companion.parallel = 1
        companion.cacheRamMiB = 0
        companion.replicas = .single
        companion.draft = nil  // embeddings are not generated token by token
        companion.draftRefusal = nil
        return companion
    }

    /// The model that answers an embedding request for this one: itself, or its companion.
    public var forEmbeddings: ModelSpec { embeddingCompanion ?? self }

    /// A reranker (its GGUF's pooling type is rank), served with `--reranking`; its embedding
    /// companion is not.
    public var reranking: Bool { !embeddings && facts?.capabilities.contains(.rerank) == true }

    /// Whether its instances' KV caches are saved across a stop: asked for, and an instance that
    /// keeps prompts (embedding and reranking ones keep none) without a draft model. llama-server's
    /// slot files hold the model's cache, not the draft's: after a restore the draft drafts
    /// without the conversation before it (SmolLM2 drafting for itself: 33 of 82 drafted tokens
    /// accepted instead of all, half the speed), so a drafted model recomputes the prompt instead.
    public var keepsWarmCaches: Bool { warmSwap && !embeddings && !reranking && draftArguments.isEmpty }

    /// llama-server arguments Corral always sets for this model: slots, the prompt cache's size,
    /// embedding or reranking mode, and its draft model.
    public var defaultArguments: [String] {
        ["-np", String(parallel), "--cache-ram", String(embeddings || reranking ? 0 : cacheRamMiB)]
            + (embeddings || reranking || cacheRamMiB == 0 ? [] : slotSimilarity.map { ["--slot-prompt-similarity", String($0)] } ?? [])
            + (embeddings ? ["--embeddings", "--pooling", "mean"] : reranking ? ["--reranking"] : [])
            + draftArguments
    }

    /// The draft's flags (`-md` and its settings), for a model that generates text and has one.
    public var draftArguments: [String] { embeddings || reranking ? [] : draft?.arguments ?? [] }

    /// `-c` when the model has a configured context size.
    public var contextArguments: [String] { contextSize.map { ["-c", String($0)] } ?? [] }

    /// What llama-fit-params is asked to complete: defaults, context, then pinned arguments.
    public var fitInputArguments: [String] { defaultArguments + contextArguments + pinnedArgs }
}

/// Every model Corral may serve, and the only way a request's model name becomes a file.
///
/// Names match case-insensitively, through aliases, and `x:latest` is `x`. A name is only ever
/// looked up here; it is never joined onto a path or passed to a shell.
public struct ModelCatalog: Sendable {
    public private(set) var models: [ModelSpec] = []
    private var index: [String: Int] = [:]
    /// Models served by a llama-server Corral runs (not a remote upstream).
    public private(set) var localModelCount = 0
    /// Files that could not be read, with the reason.
    public private(set) var problems: [(path: String, error: String)] = []
    /// The id of the model a request that names none is served by: `defaultModel` from
    /// routes.json (or the admin's choice), else the only model when there is exactly one.
    public var defaultModel: String? {
        get { chosenDefault ?? (models.count == 1 ? models[0].id : nil) }
        set { chosenDefault = newValue.flatMap { resolve($0)?.id } }
    }
    private var chosenDefault: String?

    public init() {}

    /// Builds the catalog from explicit models, scanned sources and upstreams (in that precedence).
    /// - Parameter cache: reuses facts of files that did not change since the last build.
    /// The LoRA files in llama-server arguments (`--lora PATH`).
    static func adapters(in arguments: [String]) -> [String] {
        zip(arguments, arguments.dropFirst()).filter { $0.0 == "--lora" }.map(\.1)
    }

    public static func build(from config: CorralConfig, cache: FactsCache? = nil) -> ModelCatalog {
        func read(_ path: String) throws(GGUFError) -> ModelFacts {
            if let cache { return try cache.facts(path: path) }
            return try ModelFacts.read(path: path)
        }
        var catalog = ModelCatalog()
        let defaultParallel = 4
        for m in config.models {
            let facts = try? read(m.path)
            if facts == nil { catalog.problems.append((m.path, "cannot read GGUF header")) }
            var spec = ModelSpec(
                    id: normalize(m.name), backend: .local(path: m.path), aliases: m.aliases.map(normalize),
                    pinnedArgs: m.args, contextSize: m.contextSize, ttl: m.ttl, parallel: m.parallel ?? defaultParallel,
                    pinned: m.pinned, embeddings: m.embeddings || facts?.capabilities.contains(.embedding) == true,
                    source: "config", facts: facts, fileSize: fileSize(m.path))
            spec.profile = m.profile
            spec.fallbacks = m.fallbacks
            spec.cacheRamMiB = m.cacheRamMiB ?? config.cacheRamMiB
            spec.slotSimilarity = config.cacheSlotSimilarity
            spec.warmSwap = m.warmSwap
            spec.replicas = m.replicas
            spec.progressAsReasoning = m.progressAsReasoning
            catalog.add(spec)
        }
        var indexByPath: [String: Int] = [:]
        for (i, m) in catalog.models.enumerated() { if let p = m.path { indexByPath[p] = i } }
        for source in config.allSources {
            for found in SourceScanner.scan(source) {
                let path = found.path
                if let existing = indexByPath[path], catalog.models[existing].ollamaParameters == found.parameters,
                    catalog.models[existing].systemPrompt == found.system, Self.adapters(in: catalog.models[existing].pinnedArgs) == found.adapters
                {
                    // The same file under another name (and nothing of its own: an Ollama model
                    // with other parameters, system prompt or adapters is a model of its own):
                    // one model, both names.
                    for name in [found.name] + found.aliases {
                        let name = normalize(name)
                        if catalog.addAlias(name, for: catalog.models[existing].id) { catalog.models[existing].listedAliases.append(name) }
                    }
                    continue
                }
                do {
                    let facts = try read(path)
                    var spec = ModelSpec(
                        id: normalize(found.name), backend: .local(path: path), aliases: [], pinnedArgs: [],
                        contextSize: nil, ttl: nil, parallel: defaultParallel, pinned: false,
                        embeddings: facts.capabilities.contains(.embedding), source: source.kind == .gguf ? source.directory : "\(source.kind.rawValue):\(source.directory)",
                        facts: facts, fileSize: fileSize(path))
                    spec.knownDigest = found.digest
                    spec.parent = found.parent
                    spec.cacheRamMiB = config.cacheRamMiB
                    spec.slotSimilarity = config.cacheSlotSimilarity
                    spec.ollamaParameters = found.parameters
                    spec.systemPrompt = found.system
                    // An Ollama model's adapters: llama-server applies each with `--lora`.
                    spec.pinnedArgs += found.adapters.flatMap { ["--lora", $0] }
                    spec.pinnedArgs += found.arguments
                    spec.contextSize = found.contextSize
                    spec.sourceDirectory = source.directory
                    let before = catalog.models.count
                    catalog.add(spec)
                    if catalog.models.count > before {
                        indexByPath[path] = before
                        for alias in found.aliases.map(normalize) where catalog.addAlias(alias, for: spec.id) {
                            catalog.models[before].listedAliases.append(alias)
                        }
                    }
                } catch {
                    catalog.problems.append((path, "\(error)"))
                }
            }
        }
        for u in config.upstreams {
            for name in u.models {
                catalog.add(
                    ModelSpec(
                        id: normalize(name), backend: .remote(baseURL: u.baseURL, apiKeyEnv: u.apiKeyEnv), aliases: [],
                        pinnedArgs: [], contextSize: nil, ttl: nil, parallel: 64, pinned: false, embeddings: false,
                        source: u.name, facts: nil, fileSize: nil))
            }
        }
        catalog.resolveDrafts(config.models)
        if let name = config.defaultModel {
            catalog.defaultModel = name
            if catalog.chosenDefault == nil { catalog.problems.append(("defaultModel", "no model named '\(name)'")) }
        }
        return catalog
    }

    /// Gives each configured model with `draft` its draft, once every model is known; a refused
    /// draft is a problem of the catalog and stays on the model (`draftRefusal`).
    mutating func resolveDrafts(_ configured: [CorralConfig.Model]) {
        for m in configured {
            guard let setting = m.draft, let i = index[Self.normalize(m.name)], models[i].path == m.path else { continue }
            switch resolveDraft(setting, for: models[i]) {
            case .success(let draft): models[i].draft = draft
            case .failure(let refusal):
                models[i].draftRefusal = refusal
                problems.append(("models[\(m.name)].draft", "'\(refusal.requested)' refused: \(refusal.reason)"))
            }
        }
    }

    /// Adds a model unless its name is taken (the first definition wins).
    public mutating func add(_ spec: ModelSpec) {
        guard index[spec.id] == nil else { return }
        if case .local = spec.backend { localModelCount += 1 }
        models.append(spec)
        let i = models.count - 1
        index[spec.id] = i
        for alias in spec.aliases where index[alias] == nil { index[alias] = i }
    }

    /// Adds an alias for an existing model; false when the target is unknown or the name taken.
    public mutating func addAlias(_ alias: String, for name: String) -> Bool {
        let a = Self.normalize(alias)
        guard let i = index[Self.normalize(name)], index[a] == nil else { return false }
        models[i].aliases.append(a)
        index[a] = i
        return true
    }

    /// Removes a model and its aliases.
    public mutating func remove(_ id: String) {
        let kept = models.filter { $0.id != id }
        guard kept.count != models.count else { return }
        let problems = self.problems
        self = ModelCatalog()
        self.problems = problems
        for m in kept { add(m) }
    }

    /// Removes an alias (never a model's own name).
    public mutating func removeAlias(_ alias: String) {
        let a = Self.normalize(alias)
        guard let i = index[a], models[i].id != a else { return }
        index[a] = nil
        models[i].aliases.removeAll { $0 == a }
    }

    /// The model a request's name refers to, if any.
    public func resolve(_ name: String) -> ModelSpec? {
        // Almost every request names a model exactly as listed; that needs no Foundation work.
        if Self.isNormalized(name), let i = index[name] { return models[i] }
        if let i = index[Self.normalize(name)] { return models[i] }
        if name.hasSuffix(ModelSpec.embeddingsSuffix) {
            return resolve(String(name.dropLast(ModelSpec.embeddingsSuffix.count)))?.embeddingCompanion
        }
        if let short = Self.shortForm(name) { return resolve(short) }
        return nil
    }

    /// The short form a pull accepts and lists a model under, when `name` is a longer spelling:
    /// Ollama's default registry and `library` namespace are left out (`registry.ollama.ai/library/x:1b`
    /// is `x:1b`), and the hub is `hf.co/` (not `huggingface.co/`). Nil when there is none.
    static func shortForm(_ name: String) -> String? {
        var n = normalize(name)
        let before = n
        for prefix in ["registry.ollama.ai/", "library/"] where n.hasPrefix(prefix) { n.removeFirst(prefix.count) }
        if n.hasPrefix("huggingface.co/") { n = "hf.co/" + n.dropFirst("huggingface.co/".count) }
        return n == before || n.isEmpty ? nil : n
    }

    /// True when ``normalize(_:)`` would return `name` unchanged (checked on its bytes).
    static func isNormalized(_ name: String) -> Bool {
        let bytes = name.utf8
        guard let first = bytes.first, let last = bytes.last, first > 0x20, last > 0x20, !name.hasSuffix(":latest") else { return false }
        return !bytes.contains { $0 >= 0x80 || (0x41...0x5A).contains($0) }
    }

    /// Lowercased, trimmed, without a trailing `:latest`.
    public static func normalize(_ name: String) -> String {
        var n = name.trimmingCharacters(in: .whitespaces).lowercased()
        if n.hasSuffix(":latest") { n.removeLast(7) }
        return n
    }

    /// GGUF files under `directory`: first parts of split models only, no vision projectors.
    static func scan(_ directory: String, recursive: Bool) -> [String] {
        let fm = FileManager.default
        let names: [String]
        if recursive {
            names = (fm.enumerator(atPath: directory)?.allObjects as? [String]) ?? []
        } else {
            names = (try? fm.contentsOfDirectory(atPath: directory)) ?? []
        }
        return names.filter { name in
            let file = (name as NSString).lastPathComponent.lowercased()
            guard file.hasSuffix(".gguf"), !file.contains("mmproj") else { return false }
            if let info = SplitFiles.splitInfo(file) { return info.index == 1 }
            return true
        }.sorted().map { directory + "/" + $0 }
    }

    /// The bytes of a model's files (every part of a split model), symlinks followed: the hub's
    /// snapshot files and the demo model are links, and a link's own size is not the model's.
    static func fileSize(_ path: String) -> UInt64? {
        SplitFiles.parts(of: path).reduce(UInt64(0)) { total, part in
            var info = stat()
            return total + (stat(part, &info) == 0 ? UInt64(info.st_size) : 0)
        }
    }
}
