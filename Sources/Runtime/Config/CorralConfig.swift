import Foundation

/// Everything `routes.json` configures. Relative paths are resolved against the file's folder.
public struct CorralConfig: Sendable {
    public struct Listen: Sendable {
        public var host = "127.0.0.1"
        public var port = 11434
        /// A client connection that sends and receives nothing for this long, with no request in
        /// progress, is closed (half-sent requests from slow or stalled clients included).
        public var idleTimeout: Duration = .seconds(60)
    }
    public struct TLS: Sendable { public var certificate: String; public var key: String }
    public struct Llama: Sendable {
        public var server: String?
        public var fitParams: String?
        public var bench: String?
        public var perplexity: String?
        public var finetune: String?
        public var quantize: String?
        /// Keys as `LlamaTools.discover(configured:)` expects them.
        public var toolPaths: [String: String] {
            var p: [String: String] = [:]
            p["server"] = server
            p["fitParams"] = fitParams
            p["bench"] = bench
            p["perplexity"] = perplexity
            p["finetune"] = finetune
            p["quantize"] = quantize
            return p
        }
    }
    /// Fleet limits for the scheduler.
    public struct Scheduler: Sendable {
        public var maxLoadedModels = 3
        /// Free memory kept per device (llama-fit-params `--fit-target`).
        public var memoryMarginMiB = 1024
        /// Host memory the fleet may use; nil = total RAM minus the margin.
        public var memoryBudgetMiB: Int?
        public var defaultTTL: Duration = .seconds(300)
        /// Requests waiting per model beyond its parallel slots.
        public var queueDepth = 64
        public var loadTimeout: Duration = .seconds(120)
        /// Longest silence from a llama-server while a request waits for its answer or its next
        /// bytes; past it the request fails (504) and the unresponsive instance is stopped.
        public var readTimeout: Duration = .seconds(600)
        /// Whether to run llama-fit-params before the first spawn of a model.
        public var fit = true
    }
    /// A place models are discovered in.
    public struct Source: Sendable {
        /// How the folder is laid out.
        public enum Kind: String, Sendable, CaseIterable {
            /// Any folder of GGUF files (split files grouped); names are file stems.
            case gguf
            /// Ollama's store (`manifests/` → `blobs/`); names are Ollama's `name:tag`.
            case ollama
            /// The Hugging Face hub cache (`models--ORG--REPO/snapshots/REV/*.gguf`).
            case huggingface
            /// LM Studio's models folder (`PUBLISHER/REPO/*.gguf`).
            case lmstudio
            /// Fine-tuning jobs' folders (`JOB/models.json` naming each `ft:…` model's file).
            case finetuned = "fine-tuned"
            /// Jan's data folder: `llamacpp/models/ID/model.yml` (and the older `models/ID/model.json`).
            case jan

            /// Where each kind lives by default.
            public var defaultDirectory: String? {
                let home = FileManager.default.homeDirectoryForCurrentUser.path
                switch self {
                case .gguf: return nil
                case .ollama: return ProcessInfo.processInfo.environment["OLLAMA_MODELS"] ?? home + "/.ollama/models"
                case .huggingface:
                    let env = ProcessInfo.processInfo.environment
                    return env["HF_HUB_CACHE"] ?? (env["HF_HOME"].map { $0 + "/hub" } ?? home + "/.cache/huggingface/hub")
                case .lmstudio: return home + "/.lmstudio/models"
                case .finetuned: return nil
                case .jan:
                    let data = ProcessInfo.processInfo.environment["XDG_DATA_HOME"] ?? home + "/.local/share"
                    return data + "/Jan/data"
                }
            }
        }
        public var kind: Kind = .gguf
        public var directory: String
        public var recursive = true
        public init(directory: String, recursive: Bool = true, kind: Kind = .gguf) {
            self.directory = directory
            self.recursive = recursive
            self.kind = kind
        }
    }
    /// A model named explicitly.
    public struct Model: Sendable {
        public var name: String
        public var path: String
        public var aliases: [String] = []
        /// llama-server arguments that always win over fit results and defaults.
        public var args: [String] = []
        public var contextSize: Int?
        public var ttl: Duration?
        public var parallel: Int?
        public var pinned = false
        public var embeddings = false
        /// The sampling profile requests get unless they name another.
        public var profile: String?
        /// Models that answer instead, in order, when this one cannot be loaded or its queue is full.
        public var fallbacks: [String] = []
        /// Show load progress to streaming chat requests as `reasoning_content` deltas.
        public var progressAsReasoning = false
        /// This model's host-RAM prompt cache (`--cache-ram`), MiB; nil: `cache.ramMiB`.
        public var cacheRamMiB: Int?
        /// Whether its KV caches are saved across a stop (`models[].warmSwap`, default true).
        public var warmSwap = true
        /// How many instances may serve it and how requests choose among them.
        public var replicas = ReplicaPolicy.single
        /// The model that drafts tokens for it (speculative decoding), and the draft's settings.
        public var draft: DraftSetting?

        public init(name: String, path: String) {
            self.name = name
            self.path = path
        }
    }
    /// An OpenAI-compatible server that serves the named models.
    public struct Upstream: Sendable {
        public var name: String
        public var baseURL: String
        public var models: [String]
        /// Environment variable holding the upstream's API key.
        public var apiKeyEnv: String?

        public init(name: String, baseURL: String, models: [String], apiKeyEnv: String? = nil) {
            self.name = name
            self.baseURL = baseURL
            self.models = models
            self.apiKeyEnv = apiKeyEnv
        }
    }

    public var listen = Listen()
    public var tls: TLS?
    public var dataDirectory = "data"
    public var llama = Llama()
    public var scheduler = Scheduler()
    public var sources: [Source] = []
    /// Pulled models: where they are stored (nil: `<dataDirectory>/models`) and how many
    /// downloads run at once.
    public var downloadsDirectory: String?
    public var maxConcurrentDownloads = 2
    /// Fine-tuning jobs training at once (`fineTuning.maxConcurrent`); the rest wait `queued`.
    public var fineTuningMaxConcurrent = 1
    /// Where teams, keys, quotas and the ledger live (`store.url`): empty for the default SQLite
    /// file in the data directory, `sqlite:PATH`, or `postgres://USER@HOST:PORT/DB` (a cluster).
    public var storeURL = ""
    /// The environment variable holding the PostgreSQL password (`store.passwordEnv`).
    public var storePasswordEnv: String?
    /// This node in a cluster (`cluster.*`); nil on a single node.
    public var cluster: Cluster?

    /// A node's cluster settings (names fixed for operators' tooling).
    public struct Cluster: Sendable, Equatable {
        /// `cluster.nodeName`: unique per node (the ledger and the registry show it).
        public var nodeName: String
        /// `cluster.advertiseURL`: how peers reach this node.
        public var advertiseURL: String
        /// `cluster.secretEnv`: the environment variable holding the secret nodes share.
        public var secretEnv: String
        /// `cluster.rpc`: this node offers its devices to the cluster as an RPC worker
        /// (llama.cpp's `ggml-rpc-server`); nil when it does not.
        public var rpc: RPCWorker?
        public init(nodeName: String, advertiseURL: String, secretEnv: String, rpc: RPCWorker? = nil) {
            self.nodeName = nodeName
            self.advertiseURL = advertiseURL
            self.secretEnv = secretEnv
            self.rpc = rpc
        }
    }

    /// `cluster.rpc`: a node's devices offered to the cluster over llama.cpp's RPC.
    public struct RPCWorker: Sendable, Equatable {
        /// `cluster.rpc.port`: the TCP port members connect to, on the host of
        /// `cluster.advertiseURL` (the node's cluster address) only.
        public var port: Int
        /// `cluster.rpc.devices`: llama.cpp device names to offer (`ggml-rpc-server -d`); empty:
        /// all of its accelerators, or `CPU` without any.
        public var devices: [String]
        /// `cluster.rpc.memoryMiB`: how much memory the worker offers; nil: what its devices
        /// report free at start, less `scheduler.memoryMarginMiB`.
        public var memoryMiB: Int?

        public init(port: Int, devices: [String] = [], memoryMiB: Int? = nil) {
            self.port = port
            self.devices = devices
            self.memoryMiB = memoryMiB
        }
    }
    /// Where pulls are stored: Ollama's layout, the hub's cache under `huggingface/`.
    public var downloads: String { downloadsDirectory ?? dataDirectory + "/models" }
    /// The configured sources, the two the downloads folder is served through, and the
    /// fine-tuning jobs' folder.
    public var allSources: [Source] {
        sources + [Source(directory: downloads, recursive: true, kind: .ollama), Source(directory: downloads + "/huggingface", recursive: true, kind: .huggingface),
                   Source(directory: fineTuningDirectory, recursive: false, kind: .finetuned)]
    }
    /// Where fine-tuning jobs keep their data, checkpoints and results.
    public var fineTuningDirectory: String { dataDirectory + "/fine-tuning" }
    public var models: [Model] = []
    /// The model a request that names none is served by (nil: the only model, when there is one).
    public var defaultModel: String?
    public var upstreams: [Upstream] = []
    /// Named sampling presets: profile name → request fields (JSON objects as parsed).
    public var profiles: [String: [String: SendableJSON]] = [:]
    /// Host names accepted besides local ones when listening on loopback (DNS-rebinding guard).
    public var allowedHosts: [String] = []
    /// Browser origins given CORS headers besides local ones (`*` allows any).
    public var corsOrigins: [String] = []
    /// Serve without API keys even when listening beyond loopback (no team configured).
    public var allowOpen = false
    /// Whether Ollama's `/api/delete` may delete a model file (inside a configured source only).
    public var allowModelFileDeletion = false
    /// Largest accepted request body.
    public var maxBodyBytes = 32 << 20
    /// The largest file `/v1/files` accepts (`files.maxBytes`).
    public var maxFileBytes = 100 << 20
    /// The usage ledger: how long raw rows and rollups are kept, and how many rows may wait to be written.
    public struct Usage: Sendable {
        /// Days raw ledger rows (and per-minute rollups) are kept (`usage.retainDays`).
        public var retainDays = 30
        /// Days hourly rollups are kept (`usage.retainRollupDays`).
        public var retainRollupDays = 400
        /// Rows waiting to be written past which requests are refused with 503 (`usage.queueBound`).
        public var queueBound = 100_000
    }
    public var usage = Usage()
    /// The host-RAM prompt cache each llama-server keeps (`--cache-ram`, MiB), counted in its
    /// memory projection (`cache.ramMiB`). llama-server's own default is 8 GiB per server, which
    /// no budget saw.
    public var cacheRamMiB = 1024
    /// How much of a request's prompt an idle slot's tokens must share for llama-server to reuse
    /// that slot as it is rather than restore the best match from its prompt cache
    /// (`cache.slotSimilarity`, `--slot-prompt-similarity`; llama-server's own default is 0.1).
    public var cacheSlotSimilarity = 0.9
    /// Disk the saved KV caches of warm swaps may take under `DATA_DIR/kv` (`cache.diskMiB`;
    /// 0 turns warm swaps off).
    public var cacheDiskMiB = 4096
    /// How long a stop waits for its KV caches to be saved (`cache.saveTimeout`).
    public var cacheSaveTimeout: Duration = .seconds(2)
    /// Folder relative paths were resolved against.
    public var baseDirectory = "."

    /// Whether `listen.host` is a loopback address (open mode is only automatic there).
    public var listensOnLoopbackOnly: Bool {
        let h = listen.host.lowercased()
        return h == "localhost" || h == "::1" || h.hasPrefix("127.")
    }

    public init() {}

    /// Loads and validates a `routes.json`; unknown keys and bad values name the key.
    public static func load(path: String) throws -> CorralConfig {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let base = URL(fileURLWithPath: path).deletingLastPathComponent().path
        return try parse(data, baseDirectory: base)
    }

    public static func parse(_ data: Data, baseDirectory: String) throws -> CorralConfig {
        let json: Any
        do { json = try JSONSerialization.jsonObject(with: data) } catch {
            throw ConfigError(key: "(file)", problem: "not valid JSON: \(error.localizedDescription)")
        }
        var root = try JSONObjectReader(json, path: "")
        var c = CorralConfig()
        c.baseDirectory = baseDirectory
        func resolve(_ p: String) -> String {
            if p == "~" || p.hasPrefix("~/") { return FileManager.default.homeDirectoryForCurrentUser.path + p.dropFirst() }
            return p.hasPrefix("/") ? p : baseDirectory + "/" + p
        }

        _ = root.raw("$schema")
        if var l = try root.object("listen") {
            c.listen.host = try l.string("host") ?? c.listen.host
            c.listen.port = try l.int("port", min: 0, max: 65535) ?? c.listen.port
            c.listen.idleTimeout = try l.duration("idleTimeout") ?? c.listen.idleTimeout
            try l.finish()
        }
        if var t = try root.object("tls") {
            guard let cert = try t.string("certificate"), let key = try t.string("key") else {
                throw ConfigError(key: "tls", problem: "needs both certificate and key")
            }
            c.tls = TLS(certificate: resolve(cert), key: resolve(key))
            try t.finish()
        }
        c.dataDirectory = resolve(try root.string("dataDirectory") ?? "data")
        c.maxBodyBytes = try root.int("maxBodyBytes", min: 1024) ?? c.maxBodyBytes
        if var f = try root.object("files") {
            c.maxFileBytes = try f.int("maxBytes", min: 1) ?? c.maxFileBytes
            try f.finish()
        }
        if var u = try root.object("usage") {
            c.usage.retainDays = try u.int("retainDays", min: 1) ?? c.usage.retainDays
            c.usage.retainRollupDays = try u.int("retainRollupDays", min: 1) ?? c.usage.retainRollupDays
            c.usage.queueBound = try u.int("queueBound", min: 1) ?? c.usage.queueBound
            try u.finish()
            if c.usage.retainRollupDays < c.usage.retainDays {
                throw ConfigError(key: "usage.retainRollupDays", problem: "must be at least usage.retainDays (\(c.usage.retainDays))")
            }
        }
        if var cache = try root.object("cache") {
            c.cacheRamMiB = try cache.int("ramMiB", min: 0) ?? c.cacheRamMiB
            c.cacheDiskMiB = try cache.int("diskMiB", min: 0) ?? c.cacheDiskMiB
            if let raw = cache.raw("slotSimilarity") {
                guard let n = raw as? NSNumber, !isJSONBool(n), (0...1).contains(n.doubleValue) else {
                    throw ConfigError(key: "cache.slotSimilarity", problem: "must be a number from 0 to 1")
                }
                c.cacheSlotSimilarity = n.doubleValue
            }
            if let timeout = try cache.duration("saveTimeout") {
                guard timeout >= .zero else { throw ConfigError(key: "cache.saveTimeout", problem: "must not be negative") }
                c.cacheSaveTimeout = timeout
            }
            try cache.finish()
        }
        c.defaultModel = try root.string("defaultModel")
        if c.defaultModel?.isEmpty == true { throw ConfigError(key: "defaultModel", problem: "must name a model") }
        if var l = try root.object("llama") {
            c.llama.server = try l.string("server").map(resolve)
            c.llama.fitParams = try l.string("fitParams").map(resolve)
            c.llama.bench = try l.string("bench").map(resolve)
            c.llama.perplexity = try l.string("perplexity").map(resolve)
            c.llama.finetune = try l.string("finetune").map(resolve)
            c.llama.quantize = try l.string("quantize").map(resolve)
            try l.finish()
        }
        if var s = try root.object("scheduler") {
            c.scheduler.maxLoadedModels = try s.int("maxLoadedModels", min: 1) ?? c.scheduler.maxLoadedModels
            c.scheduler.memoryMarginMiB = try s.int("memoryMarginMiB", min: 0) ?? c.scheduler.memoryMarginMiB
            c.scheduler.memoryBudgetMiB = try s.int("memoryBudgetMiB", min: 1)
            c.scheduler.defaultTTL = try s.duration("defaultTTL") ?? c.scheduler.defaultTTL
            c.scheduler.queueDepth = try s.int("queueDepth", min: 0) ?? c.scheduler.queueDepth
            c.scheduler.loadTimeout = try s.duration("loadTimeout") ?? c.scheduler.loadTimeout
            c.scheduler.readTimeout = try s.duration("readTimeout") ?? c.scheduler.readTimeout
            c.scheduler.fit = try s.bool("fit") ?? true
            try s.finish()
        }
        if var d = try root.object("downloads") {
            c.downloadsDirectory = try d.string("directory").map(resolve)
            c.maxConcurrentDownloads = try d.int("maxConcurrent", min: 1) ?? c.maxConcurrentDownloads
            try d.finish()
        }
        if var f = try root.object("fineTuning") {
            c.fineTuningMaxConcurrent = try f.int("maxConcurrent", min: 1) ?? c.fineTuningMaxConcurrent
            try f.finish()
        }
        for var s in try root.objects("sources") {
            var kind = Source.Kind.gguf
            if let k = try s.string("kind") {
                guard let parsed = Source.Kind(rawValue: k) else {
                    throw ConfigError(key: s.name("kind"), problem: "must be one of \(Source.Kind.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                kind = parsed
            }
            guard let dir = try s.string("directory").map(resolve) ?? kind.defaultDirectory else {
                throw ConfigError(key: s.name("directory"), problem: "is required")
            }
            c.sources.append(Source(directory: dir, recursive: try s.bool("recursive") ?? true, kind: kind))
            try s.finish()
        }
        for var m in try root.objects("models") {
            guard let name = try m.string("name"), !name.isEmpty else { throw ConfigError(key: m.name("name"), problem: "is required") }
            guard let path = try m.string("path") else { throw ConfigError(key: m.name("path"), problem: "is required") }
            var model = Model(name: name, path: resolve(path))
            model.aliases = try m.strings("aliases") ?? []
            model.args = try m.strings("args") ?? []
            model.contextSize = try m.int("contextSize", min: 0)
            model.ttl = try m.duration("ttl")
            model.parallel = try m.int("parallel", min: 1, max: 256)
            model.pinned = try m.bool("pinned") ?? false
            model.embeddings = try m.bool("embeddings") ?? false
            model.profile = try m.string("profile")
            model.fallbacks = try m.strings("fallbacks") ?? []
            model.progressAsReasoning = try m.bool("progressAsReasoning") ?? false
            model.cacheRamMiB = try m.int("cacheRamMiB", min: 0)
            model.warmSwap = try m.bool("warmSwap") ?? true
            if var r = try m.object("replicas") {
                let least = try r.int("min", min: 1, max: 64) ?? 1
                let most = try r.int("max", min: 1, max: 64) ?? least
                guard most >= least else { throw ConfigError(key: r.name("max"), problem: "must be at least min (\(least))") }
                var routing = ReplicaPolicy.Routing.prefixAffinity
                if let name = try r.string("routing") {
                    guard let parsed = ReplicaPolicy.Routing(rawValue: name) else {
                        throw ConfigError(key: r.name("routing"), problem: "must be one of \(ReplicaPolicy.Routing.allCases.map(\.rawValue).joined(separator: ", "))")
                    }
                    routing = parsed
                }
                let defaults = ReplicaPolicy.single
                model.replicas = ReplicaPolicy(
                    min: least, max: most, scaleUpAfter: try r.duration("scaleUpAfter").map { Swift.max($0, .zero) } ?? defaults.scaleUpAfter,
                    scaleDownAfter: try r.duration("scaleDownAfter").map { Swift.max($0, .zero) } ?? defaults.scaleDownAfter, routing: routing)
                try r.finish()
            }
            model.draft = try Self.draft(&m)
            try m.finish()
            c.models.append(model)
        }
        for var u in try root.objects("upstreams") {
            guard let name = try u.string("name"), let url = try u.string("baseURL") else {
                throw ConfigError(key: u.name("baseURL"), problem: "name and baseURL are required")
            }
            guard url.hasPrefix("http://") || url.hasPrefix("https://") else {
                throw ConfigError(key: u.name("baseURL"), problem: "must start with http:// or https://")
            }
            c.upstreams.append(Upstream(name: name, baseURL: url, models: try u.strings("models") ?? [], apiKeyEnv: try u.string("apiKeyEnv")))
            try u.finish()
        }
        if let raw = root.raw("profiles") {
            guard let object = raw as? [String: Any] else { throw ConfigError(key: "profiles", problem: "must be an object of named presets") }
            for (name, fields) in object {
                guard let f = fields as? [String: Any] else { throw ConfigError(key: "profiles.\(name)", problem: "must be an object of request fields") }
                do { c.profiles[name] = try SamplingFields.validate(f) } catch { throw ConfigError(key: "profiles.\(name).\(error.field)", problem: error.problem) }
            }
        }
        for m in c.models where m.profile != nil && c.profiles[m.profile!] == nil && SamplingFields.builtIn[m.profile!] == nil {
            throw ConfigError(key: "models[\(m.name)].profile", problem: "no profile named '\(m.profile!)'")
        }
        if var sec = try root.object("security") {
            c.allowedHosts = (try sec.strings("allowedHosts") ?? []).map { $0.lowercased() }
            c.corsOrigins = (try sec.strings("corsOrigins") ?? []).map { $0.lowercased() }
            try sec.finish()
        }
        if var a = try root.object("auth") {
            c.allowOpen = try a.bool("allowOpen") ?? false
            try a.finish()
        }
        if var st = try root.object("store") {
            c.storeURL = try st.string("url") ?? ""
            c.storePasswordEnv = try st.string("passwordEnv")
            try st.finish()
        }
        if var cl = try root.object("cluster") {
            guard let name = try cl.string("nodeName"), !name.isEmpty, name.count <= 64,
                name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == "." })
            else { throw ConfigError(key: cl.name("nodeName"), problem: "is required: 1 to 64 letters, digits, '-', '_' or '.'") }
            guard let url = try cl.string("advertiseURL"), url.hasPrefix("http://") || url.hasPrefix("https://") else {
                throw ConfigError(key: cl.name("advertiseURL"), problem: "is required: the http(s) URL peers reach this node at")
            }
            guard let env = try cl.string("secretEnv"), !env.isEmpty else {
                throw ConfigError(key: cl.name("secretEnv"), problem: "is required: the environment variable holding the cluster secret")
            }
            var rpc: RPCWorker?
            if var r = try cl.object("rpc") {
                guard let port = try r.int("port", min: 1, max: 65535) else {
                    throw ConfigError(key: r.name("port"), problem: "is required: the TCP port the RPC worker listens on (1-65535)")
                }
                rpc = RPCWorker(port: port, devices: try r.strings("devices") ?? [], memoryMiB: try r.int("memoryMiB", min: 1))
                try r.finish()
            }
            c.cluster = Cluster(nodeName: name, advertiseURL: url, secretEnv: env, rpc: rpc)
            try cl.finish()
        }
        if var o = try root.object("ollama") {
            c.allowModelFileDeletion = try o.bool("allowDelete") ?? false
            try o.finish()
        }
        try root.finish()
        return c
    }

    /// `models[].draft`: a model name or `auto`, or `{model, maxTokens, minP, gpuLayers}`.
    static func draft(_ m: inout JSONObjectReader) throws(ConfigError) -> DraftSetting? {
        let key = m.name("draft")
        guard let raw = m.raw("draft") else { return nil }
        func choice(_ name: String, key: String) throws(ConfigError) -> DraftSetting.Choice {
            let trimmed = name.trimmingCharacters(in: .whitespaces)
            guard !trimmed.isEmpty else { throw ConfigError(key: key, problem: "must name a model or be \"auto\"") }
            return trimmed.lowercased() == "auto" ? .auto : .named(trimmed)
        }
        if let name = raw as? String { return DraftSetting(model: try choice(name, key: key)) }
        var d = try JSONObjectReader(raw, path: key)
        guard let name = try d.string("model") else { throw ConfigError(key: d.name("model"), problem: "is required: a model name or \"auto\"") }
        var setting = DraftSetting(model: try choice(name, key: d.name("model")))
        setting.maxTokens = try d.int("maxTokens", min: 1, max: 256)
        setting.gpuLayers = try d.int("gpuLayers", min: 0, max: 10_000)
        if let p = d.raw("minP") {
            guard let n = p as? NSNumber, !isJSONBool(n), n.doubleValue >= 0, n.doubleValue <= 1 else {
                throw ConfigError(key: d.name("minP"), problem: "must be a number from 0 to 1")
            }
            setting.minP = n.doubleValue
        }
        if d.raw("contextSize") != nil {
            // llama.cpp (this build) sizes the draft's context as the target's and has no flag to
            // change it (`-cd` is gone); a key that does nothing would mislead.
            throw ConfigError(key: d.name("contextSize"), problem: "is not supported: llama-server gives the draft the model's own context (set the model's contextSize)")
        }
        try d.finish()
        return setting
    }
}
