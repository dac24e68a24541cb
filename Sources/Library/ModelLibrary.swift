import Foundation
import GGUF
import Jobs
import Runtime
import Store

/// Hardware facts, read once and refreshed on demand.
public actor HardwareCache {
    let tools: LlamaTools
    var cached: HardwareInfo?

    public init(tools: LlamaTools) { self.tools = tools }

    public func get(refresh: Bool = false) async -> HardwareInfo {
        if let cached, !refresh { return cached }
        let info = await HardwareInfo.read(tools: tools)
        cached = info
        return info
    }
}

/// Why a library query was refused.
public enum LibraryError: Error, Sendable, Equatable {
    case badRequest(String, param: String)
    case modelNotFound(String)
    /// The store could not be read (usage totals, benchmark history): the answer would be wrong.
    case storage(String)
}

/// The model library: entries with facts, state, usage, fit and benchmarks; filters and sorting;
/// side-by-side comparison; compatibility with this machine; recommendations. Answers are
/// Encodable values, queries plain name/value pairs: the HTTP layer only decodes and encodes.
public struct ModelLibrary: Sendable {
    public let scheduler: Scheduler
    public let store: Store?
    public let hardware: HardwareCache
    public let marginMiB: Int
    public let tools: LlamaTools
    /// Where the usage ledger is (the shared store on a cluster node; `store` otherwise).
    public var ledger: (any AccountStore)?
    /// The newest benchmark results of a model (from the benchmark jobs), newest first: speed
    /// runs, and perplexity runs that finished (the quality figure next to the speed ones).
    public let benchmarks: @Sendable (String) async throws -> (speed: [JobJSON], perplexity: [JobJSON])

    public init(scheduler: Scheduler, store: Store?, ledger: (any AccountStore)? = nil, hardware: HardwareCache, marginMiB: Int, tools: LlamaTools,
                benchmarks: @escaping @Sendable (String) async throws -> (speed: [JobJSON], perplexity: [JobJSON])) {
        self.scheduler = scheduler
        self.store = store
        self.hardware = hardware
        self.marginMiB = marginMiB
        self.tools = tools
        self.benchmarks = benchmarks
        self.ledger = ledger ?? store
    }

    // MARK: Entries

    /// One library entry: facts, file, state, usage, fit and benchmarks (its drafts are
    /// ``LibraryDrafts``, added by the answers that list entries).
    public func entry(_ spec: ModelSpec, instances: [String: InstanceInfo], usage: [String: (requests: Int, promptTokens: Int, completionTokens: Int)],
               compatibility: Compatibility, detailed: Bool = false) async throws(LibraryError) -> LibraryEntry {
        let info = instances[spec.id]
        var facts: LibraryEntry.Facts?
        if let f = spec.facts {
            var settings = MemoryEstimator.Settings()
            settings.contextSize = spec.contextSize ?? min(f.contextLength ?? 4096, 8192)
            settings.parallel = spec.parallel
            let (verdict, estimate) = compatibility.assess(f, settings)
            let fit = LibraryEntry.Fit(
                verdict: verdict.rawValue, context: estimate.contextSize, gpuLayers: estimate.gpuLayers, estimatedMiB: Int(estimate.total / 1_048_576),
                largestContext: MemoryEstimator.largestContext(f, settings, gpu: estimate.gpuLayers > 0 ? compatibility.gpu?.name : nil,
                                                               available: compatibility.available, limit: f.contextLength ?? 131_072))
            facts = LibraryEntry.Facts(
                architecture: f.architecture, name: f.name, parameters: f.parameterCount, parameterSize: ModelLibrary.parameterSize(f.parameterCount),
                quantization: f.quantization, bitsPerWeight: (f.bitsPerWeight * 100).rounded() / 100, contextLength: f.contextLength, layers: f.blockCount,
                embeddingLength: f.embeddingLength, heads: f.headCount.first, kvHeads: f.headCountKV.first, vocabularySize: f.vocabularySize, fit: fit,
                tensorBytes: f.tensorBytes, chatTemplate: f.chatTemplate, detailed: detailed)
        }
        var running: LibraryEntry.Running?
        if let info, info.state == "loaded" {
            running = LibraryEntry.Running(
                pid: info.pid ?? 0, arguments: info.arguments, projectedMiB: info.projectedMiB, allocatedMiB: info.allocatedMiB,
                allocationSource: info.allocationSource, planSource: info.planSource, contextSize: info.contextSize)
        }
        let u = usage[spec.id]
        let latest = try await latestBenchmarks(spec.id)
        return LibraryEntry(
            id: spec.id, aliases: spec.aliases + spec.listedAliases, source: spec.source, pinned: spec.pinned, sizeBytes: spec.fileSize ?? 0,
            remote: spec.path == nil, parent: spec.parent, state: info?.state ?? "unloaded", lastUsed: info?.lastUsed.map(ModelLibrary.timestamp),
            facts: facts, capabilities: spec.facts?.capabilities.names ?? ["completion"], running: running,
            usage: LibraryEntry.Usage(requests: u?.requests ?? 0, promptTokens: u?.promptTokens ?? 0, completionTokens: u?.completionTokens ?? 0),
            benchmarks: latest.speed, perplexity: latest.perplexity)
    }

    /// A model's latest benchmark runs; a store that cannot be read is an error, not "none".
    func latestBenchmarks(_ id: String) async throws(LibraryError) -> (speed: [JobJSON], perplexity: [JobJSON]) {
        do { return try await benchmarks(id) } catch { throw .storage("the benchmark history could not be read: \(error)") }
    }

    public func context() async throws(LibraryError) -> (ModelCatalog, [String: InstanceInfo], [String: (requests: Int, promptTokens: Int, completionTokens: Int)], Compatibility) {
        let catalog = await scheduler.catalog
        let instances = Dictionary(await scheduler.instances().map { ($0.model, $0) }, uniquingKeysWith: { a, _ in a })
        let usage: [String: (requests: Int, promptTokens: Int, completionTokens: Int)]
        do { usage = try await ledger?.usageTotalsByModel() ?? [:] } catch { throw .storage("the usage totals could not be read: \(error)") }
        return (catalog, instances, usage, Compatibility(hardware: await hardware.get(), marginMiB: marginMiB))
    }

    // MARK: List, detail, compare

    public func list(query q: [String: String]) async throws(LibraryError) -> LibraryList {
        let (catalog, instances, usage, compatibility) = try await context()
        var entries: [LibraryEntry] = []
        for spec in catalog.models { entries.append(try await entry(spec, instances: instances, usage: usage, compatibility: compatibility)) }
        if let text = q["q"]?.lowercased(), !text.isEmpty {
            entries = entries.filter { e in
                ([e.id, e.facts?.name, e.facts?.architecture, e.facts?.quantization] + e.aliases).compactMap { $0 }.contains { $0.lowercased().contains(text) }
            }
        }
        if let want = q["architecture"]?.lowercased() { entries = entries.filter { $0.facts?.architecture.lowercased() == want } }
        if let want = q["quantization"]?.lowercased() { entries = entries.filter { $0.facts?.quantization.lowercased() == want } }
        if let capability = q["capability"] { entries = entries.filter { $0.capabilities.contains(capability) } }
        func number(_ key: String) throws(LibraryError) -> Double? {
            guard let raw = q[key] else { return nil }
            guard let v = Self.parseCount(raw) else { throw LibraryError.badRequest("\(key) must be a number (suffixes K, M, B, T, KiB, MiB, GiB allowed)", param: key) }
            return v
        }
        if let min = try number("minParams") { entries = entries.filter { Double($0.facts?.parameters ?? 0) >= min } }
        if let max = try number("maxParams") { entries = entries.filter { Double($0.facts?.parameters ?? 0) <= max } }
        if let min = try number("minSize") { entries = entries.filter { Double($0.sizeBytes) >= min } }
        if let max = try number("maxSize") { entries = entries.filter { Double($0.sizeBytes) <= max } }
        if let fits = q["fits"] {
            guard fits == "true" || fits == "false" else { throw LibraryError.badRequest("fits must be true or false", param: "fits") }
            entries = entries.filter { ($0.facts?.fit.verdict ?? "does_not_fit" != "does_not_fit") == (fits == "true") }
        }
        let sort = q["sort"] ?? "name"
        let keys = ["name", "size", "params", "lastUsed", "context"]
        guard keys.contains(sort) else { throw LibraryError.badRequest("sort must be one of \(keys.sorted().joined(separator: ", "))", param: "sort") }
        let descending = q["order"] == "desc"
        entries.sort { a, b in
            let (x, y) = descending ? (b, a) : (a, b)
            return LibraryEntry.SortValue.ascending(x.sortValue(sort), y.sortValue(sort))
        }
        return LibraryList(models: Self.withDrafts(entries, in: catalog), count: entries.count)
    }

    /// `7B`, `135M`, `4GiB`, `1.5e9` → a number.
    static func parseCount(_ raw: String) -> Double? {
        let s = raw.trimmingCharacters(in: .whitespaces)
        for (suffix, scale) in [("KiB", 1024.0), ("MiB", 1_048_576.0), ("GiB", 1_073_741_824.0), ("K", 1e3), ("M", 1e6), ("B", 1e9), ("G", 1e9), ("T", 1e12)]
        where s.hasSuffix(suffix) {
            return Double(s.dropLast(suffix.count)).map { $0 * scale }
        }
        return Double(s)
    }

    public func detail(_ id: String) async throws(LibraryError) -> LibraryEntry {
        let (catalog, instances, usage, compatibility) = try await context()
        guard let spec = catalog.resolve(id) else { throw LibraryError.modelNotFound(id) }
        return Self.withDrafts([try await entry(spec, instances: instances, usage: usage, compatibility: compatibility, detailed: true)], in: catalog)[0]
    }

    public func compare(ids raw: String?) async throws(LibraryError) -> LibraryComparison {
        let ids = (raw ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard ids.count >= 2 else { throw LibraryError.badRequest("ids needs at least two comma-separated model ids", param: "ids") }
        let (catalog, instances, usage, compatibility) = try await context()
        var models: [LibraryEntry] = []
        for id in ids {
            guard let spec = catalog.resolve(id) else { throw LibraryError.modelNotFound(id) }
            models.append(try await entry(spec, instances: instances, usage: usage, compatibility: compatibility))
        }
        // The fields whose values differ, for a side-by-side view to highlight.
        let fields = ["architecture", "parameters", "quantization", "bitsPerWeight", "contextLength", "layers", "embeddingLength", "heads", "kvHeads",
                      "vocabularySize", "sizeBytes", "capabilities", "state"]
        let differing = fields.filter { f in
            let first = models.first?.comparedField(f)
            return models.contains { $0.comparedField(f) != first }
        }
        return LibraryComparison(models: Self.withDrafts(models, in: catalog), differing: differing)
    }

    /// The entries with their drafts (``LibraryDrafts``; none known: no draft, no candidates).
    static func withDrafts(_ entries: [LibraryEntry], in catalog: ModelCatalog) -> [LibraryEntry] {
        let drafts = LibraryDrafts.all(in: catalog)
        return entries.map { entry in
            var entry = entry
            entry.drafts = drafts[entry.id] ?? drafts[ModelCatalog.normalize(entry.id)] ?? LibraryDrafts.empty
            return entry
        }
    }

    // MARK: Compatibility

    public func compatibility(_ id: String, query q: [String: String]) async throws(LibraryError) -> CompatibilityAnswer {
        guard let spec = await scheduler.catalog.resolve(id) else { throw LibraryError.modelNotFound(id) }
        guard let facts = spec.facts, let path = spec.path else {
            throw LibraryError.badRequest("'\(id)' is served by a remote upstream: nothing to estimate", param: "id")
        }
        var (answer, settings, estimate) = try await assess(facts, name: spec.id, contextSize: spec.contextSize, parallel: spec.parallel, query: q)
        if q["exact"] == "true" { answer.exact = await exact(path: path, spec: spec, settings: settings, estimate: estimate) }
        return answer
    }

    /// The verdict, largest context and suggestions for a model's facts (a remote file's header
    /// read before any download, say) with the query's settings, as for a catalog model.
    public func compatibility(_ facts: ModelFacts, name: String, query q: [String: String]) async throws(LibraryError) -> CompatibilityAnswer {
        try await assess(facts, name: name, contextSize: nil, parallel: 1, query: q).answer
    }

    func assess(_ facts: ModelFacts, name: String, contextSize: Int?, parallel: Int, query q: [String: String]) async throws(LibraryError)
        -> (answer: CompatibilityAnswer, settings: MemoryEstimator.Settings, estimate: MemoryEstimator.Estimate)
    {
        func int(_ key: String, min: Int, max: Int) throws(LibraryError) -> Int? {
            guard let raw = q[key] else { return nil }
            guard let v = Int(raw), v >= min, v <= max else { throw LibraryError.badRequest("\(key) must be an integer from \(min) to \(max)", param: key) }
            return v
        }
        var s = MemoryEstimator.Settings()
        s.contextSize = try int("ctx", min: 0, max: 1 << 22) ?? contextSize ?? min(facts.contextLength ?? 4096, 8192)
        s.parallel = try int("parallel", min: 1, max: 256) ?? parallel
        s.ubatch = try int("ubatch", min: 1, max: 65536) ?? 512
        s.gpuLayers = try int("ngl", min: 0, max: 10_000)
        if let kv = q["kv"] {
            guard let t = MemoryEstimator.CacheType(rawValue: kv) else {
                throw LibraryError.badRequest("kv must be one of \(MemoryEstimator.CacheType.allCases.map(\.rawValue).joined(separator: ", "))", param: "kv")
            }
            s.cacheTypeK = t
            s.cacheTypeV = t
        }
        if let fa = q["fa"] {
            guard fa == "on" || fa == "off" else { throw LibraryError.badRequest("fa must be on or off", param: "fa") }
            s.flashAttention = fa == "on"
        }
        if let problem = MemoryEstimator.cacheProblem(facts, s) { throw LibraryError.badRequest(problem, param: "kv") }
        let c = Compatibility(hardware: await hardware.get(), marginMiB: marginMiB)
        let (verdict, estimate) = c.assess(facts, s)
        let answer = CompatibilityAnswer(
            model: name,
            settings: .init(ctx: estimate.contextSize, parallel: s.parallel, ubatch: s.ubatch, kv: s.cacheTypeK.rawValue, fa: s.flashAttention ? "on" : "off",
                            ngl: estimate.gpuLayers),
            verdict: verdict.rawValue, gpuLayers: estimate.gpuLayers, kvBytesPerToken: estimate.kvBytesPerToken,
            estimate: estimate.devices.map(DeviceMemory.init), estimatedTotalMiB: Int(estimate.total / 1_048_576),
            availableMiB: c.available.mapValues { Int($0 / 1_048_576) },
            largestContext: MemoryEstimator.largestContext(facts, s, gpu: estimate.gpuLayers > 0 ? c.gpu?.name : nil, available: c.available,
                                                           limit: max(facts.contextLength ?? 4096, s.contextSize)),
            suggestions: c.suggestions(facts, s, current: estimate), table: c.table(facts, s))
        return (answer, s, estimate)
    }

    /// llama.cpp's own projection for the same settings, next to the estimator's.
    public func exact(path: String, spec: ModelSpec, settings s: MemoryEstimator.Settings, estimate: MemoryEstimator.Estimate) async -> ExactProjection {
        guard let tool = tools.fitParams?.path else { return ExactProjection(error: "llama-fit-params not found") }
        var args = ["-m", path, "-c", String(estimate.contextSize), "-np", String(s.parallel), "-ub", String(s.ubatch),
                    "-ctk", s.cacheTypeK.rawValue, "-ctv", s.cacheTypeV.rawValue, "-fa", s.flashAttention ? "on" : "off", "--fit-print", "on", "-lm", "none"]
        if let ngl = s.gpuLayers { args += ["-ngl", String(ngl)] }
        guard let run = try? await LlamaTools.run(tool, args) else { return ExactProjection(error: "llama-fit-params could not run") }
        let projection = FitPlan.parseProjection(run.lines)
        guard !projection.isEmpty else { return ExactProjection(error: "llama-fit-params: " + run.lines.suffix(3).joined(separator: " | ")) }
        return ExactProjection(source: "llama-fit-params --fit-print on", projection: projection.map { p in
            ExactProjection.Device(device: p.device, modelMiB: p.modelMiB, contextMiB: p.contextMiB, computeMiB: p.computeMiB, totalMiB: p.totalMiB)
        })
    }

    // MARK: Recommendations

    public func recommendations(query q: [String: String]) async throws(LibraryError) -> Recommendations {
        let task = q["task"] ?? "chat"
        guard ["chat", "code", "embedding", "vision"].contains(task) else {
            throw LibraryError.badRequest("task must be chat, code, embedding or vision", param: "task")
        }
        var minContext: Int?
        if let raw = q["min_ctx"] {
            guard let v = Int(raw), v > 0 else { throw LibraryError.badRequest("min_ctx must be a positive integer", param: "min_ctx") }
            minContext = v
        }
        let (catalog, _, _, compatibility) = try await context()
        var ranked: [(score: Double, object: Recommendations.Recommendation)] = []
        for spec in catalog.models {
            guard let f = spec.facts else { continue }
            let caps = f.capabilities
            let name = (spec.id + " " + (f.name ?? "")).lowercased()
            let suits: Bool
            switch task {
            case "embedding": suits = caps.contains(.embedding)
            case "vision": suits = caps.contains(.vision)
            case "code": suits = caps.contains(.completion) && (caps.contains(.insert) || name.contains("code") || name.contains("coder"))
            default: suits = caps.contains(.completion)
            }
            guard suits else { continue }
            if let minContext, (f.contextLength ?? 0) < minContext { continue }
            var s = MemoryEstimator.Settings()
            s.contextSize = minContext ?? min(f.contextLength ?? 4096, 8192)
            s.parallel = spec.parallel
            let (verdict, estimate) = compatibility.assess(f, s)
            guard verdict != .doesNotFit else { continue }
            // Quality proxies: more parameters, then more bits per weight (up to 8); speed where measured.
            let quality = log10(Double(max(f.parameterCount, 1))) + min(f.bitsPerWeight, 8) / 8
            let measured = try await latestBenchmarks(spec.id).speed.compactMap { $0["result"]?["generationTokensPerSecond"]?["p50"]?.doubleValue }.max()
            let speed = measured.map { log10(max($0, 1)) / 2 } ?? 0
            let placement = verdict == .fitsGPU ? 0.5 : verdict == .partialOffload ? 0.25 : 0
            let score = quality + speed + placement
            var reason = "\(ModelLibrary.parameterSize(f.parameterCount)) \(f.quantization), \(verdict.rawValue.replacingOccurrences(of: "_", with: " "))"
            reason += ", \(Int(estimate.total / 1_048_576)) MiB at \(estimate.contextSize) context"
            if let measured { reason += String(format: ", %.0f tokens/s measured", measured) }
            if task == "code" && caps.contains(.insert) { reason += ", fill-in-the-middle" }
            ranked.append((score, .init(model: spec.id, score: (score * 100).rounded() / 100, verdict: verdict.rawValue, reason: reason)))
        }
        ranked.sort { $0.score > $1.score }
        return Recommendations(task: task, recommendations: ranked.map(\.object))
    }
}

extension ModelLibrary {
    /// `7.2B`, `135M`, `1.2K`: how Ollama prints parameter counts.
    public static func parameterSize(_ count: UInt64) -> String {
        let n = Double(count)
        for (scale, suffix) in [(1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")] where n >= scale {
            let v = n / scale
            return (v >= 100 ? String(format: "%.0f", v) : String(format: "%.1f", v).replacingOccurrences(of: ".0", with: "")) + suffix
        }
        return String(count)
    }

    /// RFC 3339 with fractional seconds, as every admin answer writes dates.
    public static func timestamp(_ date: Date) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f.string(from: date)
    }
}
