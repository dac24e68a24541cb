import Foundation
import GGUF
import HTTPTypes
import Hummingbird
import Runtime
import Store

/// Hardware facts, read once and refreshed on demand.
actor HardwareCache {
    let tools: LlamaTools
    var cached: HardwareInfo?

    init(tools: LlamaTools) { self.tools = tools }

    func get(refresh: Bool = false) async -> HardwareInfo {
        if let cached, !refresh { return cached }
        let info = await HardwareInfo.read(tools: tools)
        cached = info
        return info
    }
}

/// The model library, hardware, compatibility and recommendations under `/admin`.
struct LibraryRoutes: Sendable {
    let scheduler: Scheduler
    let store: Store?
    let hardware: HardwareCache
    let marginMiB: Int
    let tools: LlamaTools
    /// Rebuilds the catalog from `routes.json` (incrementally) and returns what it did.
    let rescan: @Sendable () async throws -> [String: Any]
    let benchmarks: @Sendable (String) async -> [[String: Any]]

    func register(on admin: RouterGroup<GatewayRequestContext>) {
        admin.get("hardware") { request, _ in
            let info = await hardware.get(refresh: request.uri.queryParameters.get("refresh") == "true")
            return try jsonEncodable(info)
        }
        admin.get("models") { request, _ in try await list(request) }
        admin.get("recommendations") { request, _ in try await recommendations(request) }
    }

    // MARK: Entries

    /// One library entry: facts, file, state, usage, fit and benchmarks.
    func entry(_ spec: ModelSpec, instances: [String: InstanceInfo], usage: [String: (requests: Int, promptTokens: Int, completionTokens: Int)],
               compatibility: Compatibility, detailed: Bool = false) async -> [String: Any] {
        var o: [String: Any] = ["id": spec.id, "aliases": spec.aliases + spec.listedAliases, "source": spec.source, "pinned": spec.pinned]
        o["sizeBytes"] = spec.fileSize ?? 0
        o["remote"] = spec.path == nil
        let info = instances[spec.id]
        o["state"] = info?.state ?? "unloaded"
        o["lastUsed"] = info?.lastUsed.map(iso) ?? NSNull()
        if let f = spec.facts {
            o["architecture"] = f.architecture
            o["name"] = f.name ?? NSNull()
            o["parameters"] = f.parameterCount
            o["parameterSize"] = OllamaValues.parameterSize(f.parameterCount)
            o["quantization"] = f.quantization
            o["bitsPerWeight"] = (f.bitsPerWeight * 100).rounded() / 100
            o["contextLength"] = f.contextLength ?? NSNull()
            o["layers"] = f.blockCount ?? NSNull()
            o["embeddingLength"] = f.embeddingLength ?? NSNull()
            o["heads"] = f.headCount.first ?? NSNull()
            o["kvHeads"] = f.headCountKV.first ?? NSNull()
            o["vocabularySize"] = f.vocabularySize ?? NSNull()
            o["capabilities"] = f.capabilities.names
            var settings = MemoryEstimator.Settings()
            settings.contextSize = spec.contextSize ?? min(f.contextLength ?? 4096, 8192)
            settings.parallel = spec.parallel
            let (verdict, estimate) = compatibility.assess(f, settings)
            o["fit"] = [
                "verdict": verdict.rawValue, "context": estimate.contextSize, "gpuLayers": estimate.gpuLayers,
                "estimatedMiB": Int(estimate.total / 1_048_576),
                "largestContext": MemoryEstimator.largestContext(f, settings, gpu: estimate.gpuLayers > 0 ? compatibility.gpu?.name : nil,
                                                                 available: compatibility.available, limit: f.contextLength ?? 131_072),
            ]
            if detailed { o["tensorBytes"] = f.tensorBytes; o["chatTemplate"] = f.chatTemplate ?? NSNull() }
        } else {
            o["capabilities"] = ["completion"]
        }
        if let info, info.state == "loaded" {
            o["running"] = ["pid": info.pid ?? 0, "arguments": info.arguments, "projectedMiB": info.projectedMiB ?? NSNull(),
                            "allocatedMiB": info.allocatedMiB, "allocationSource": info.allocationSource ?? NSNull(), "planSource": info.planSource ?? NSNull(), "contextSize": info.contextSize ?? NSNull()]
        }
        let u = usage[spec.id]
        o["usage"] = ["requests": u?.requests ?? 0, "promptTokens": u?.promptTokens ?? 0, "completionTokens": u?.completionTokens ?? 0]
        o["benchmarks"] = await benchmarks(spec.id)
        return o
    }

    func context() async -> (ModelCatalog, [String: InstanceInfo], [String: (requests: Int, promptTokens: Int, completionTokens: Int)], Compatibility) {
        let catalog = await scheduler.catalog
        let instances = Dictionary(await scheduler.instances().map { ($0.model, $0) }, uniquingKeysWith: { a, _ in a })
        let usage = (try? await store?.usageTotalsByModel()) ?? [:]
        return (catalog, instances, usage, Compatibility(hardware: await hardware.get(), marginMiB: marginMiB))
    }

    // MARK: List, detail, compare

    func list(_ request: Request) async throws -> Response {
        let q = request.uri.queryParameters
        let (catalog, instances, usage, compatibility) = await context()
        var entries: [[String: Any]] = []
        for spec in catalog.models { entries.append(await entry(spec, instances: instances, usage: usage, compatibility: compatibility)) }
        if let text = q.get("q")?.lowercased(), !text.isEmpty {
            entries = entries.filter { e in
                ([e["id"], e["name"], e["architecture"], e["quantization"]] + ((e["aliases"] as? [String]) ?? []))
                    .compactMap { $0 as? String }.contains { $0.lowercased().contains(text) }
            }
        }
        for key in ["architecture", "quantization"] {
            if let want = q.get(key)?.lowercased() { entries = entries.filter { ($0[key] as? String)?.lowercased() == want } }
        }
        if let capability = q.get("capability") { entries = entries.filter { ($0["capabilities"] as? [String])?.contains(capability) == true } }
        func number(_ key: String) throws -> Double? {
            guard let raw = q.get(key) else { return nil }
            guard let v = Self.parseCount(raw) else { throw OpenAIError.badRequest("\(key) must be a number (suffixes K, M, B, T, KiB, MiB, GiB allowed)", param: key) }
            return v
        }
        if let min = try number("minParams") { entries = entries.filter { Double($0["parameters"] as? UInt64 ?? 0) >= min } }
        if let max = try number("maxParams") { entries = entries.filter { Double($0["parameters"] as? UInt64 ?? 0) <= max } }
        if let min = try number("minSize") { entries = entries.filter { Double($0["sizeBytes"] as? UInt64 ?? 0) >= min } }
        if let max = try number("maxSize") { entries = entries.filter { Double($0["sizeBytes"] as? UInt64 ?? 0) <= max } }
        if let fits = q.get("fits") {
            guard fits == "true" || fits == "false" else { throw OpenAIError.badRequest("fits must be true or false", param: "fits") }
            entries = entries.filter { (($0["fit"] as? [String: Any])?["verdict"] as? String ?? "does_not_fit" != "does_not_fit") == (fits == "true") }
        }
        let sort = q.get("sort") ?? "name"
        let keys = ["name": "id", "size": "sizeBytes", "params": "parameters", "lastUsed": "lastUsed", "context": "contextLength"]
        guard let key = keys[sort] else { throw OpenAIError.badRequest("sort must be one of \(keys.keys.sorted().joined(separator: ", "))", param: "sort") }
        let descending = q.get("order") == "desc"
        entries.sort { a, b in
            let less = Self.compare(a[key], b[key])
            return descending ? Self.compare(b[key], a[key]) : less
        }
        return jsonResponse(["models": entries, "count": entries.count])
    }

    /// Orders JSON scalars: numbers, then strings; missing last.
    static func compare(_ a: Any?, _ b: Any?) -> Bool {
        switch (a, b) {
        case (let x as NSNumber, let y as NSNumber): return x.doubleValue < y.doubleValue
        case (let x as String, let y as String): return x < y
        case (nil, _), (is NSNull, _): return false
        case (_, nil), (_, is NSNull): return true
        default: return false
        }
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

    func detail(_ id: String) async throws -> Response {
        let (catalog, instances, usage, compatibility) = await context()
        guard let spec = catalog.resolve(id) else { throw OpenAIError.modelNotFound(id) }
        return jsonResponse(await entry(spec, instances: instances, usage: usage, compatibility: compatibility, detailed: true))
    }

    func compare(_ request: Request) async throws -> Response {
        let ids = (request.uri.queryParameters.get("ids") ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard ids.count >= 2 else { throw OpenAIError.badRequest("ids needs at least two comma-separated model ids", param: "ids") }
        let (catalog, instances, usage, compatibility) = await context()
        var models: [[String: Any]] = []
        for id in ids {
            guard let spec = catalog.resolve(id) else { throw OpenAIError.modelNotFound(id) }
            models.append(await entry(spec, instances: instances, usage: usage, compatibility: compatibility))
        }
        // The fields whose values differ, for a side-by-side view to highlight.
        let fields = ["architecture", "parameters", "quantization", "bitsPerWeight", "contextLength", "layers", "embeddingLength", "heads", "kvHeads",
                      "vocabularySize", "sizeBytes", "capabilities", "state"]
        let differing = fields.filter { f in Set(models.map { "\($0[f] ?? "")" }).count > 1 }
        return jsonResponse(["models": models, "differing": differing])
    }

    // MARK: Compatibility

    func compatibility(_ id: String, _ request: Request) async throws -> Response {
        guard let spec = await scheduler.catalog.resolve(id) else { throw OpenAIError.modelNotFound(id) }
        guard let facts = spec.facts, let path = spec.path else {
            throw OpenAIError.badRequest("'\(id)' is served by a remote upstream: nothing to estimate", param: "id")
        }
        let q = request.uri.queryParameters
        func int(_ key: String, min: Int, max: Int) throws -> Int? {
            guard let raw = q.get(key) else { return nil }
            guard let v = Int(raw), v >= min, v <= max else { throw OpenAIError.badRequest("\(key) must be an integer from \(min) to \(max)", param: key) }
            return v
        }
        var s = MemoryEstimator.Settings()
        s.contextSize = try int("ctx", min: 0, max: 1 << 22) ?? spec.contextSize ?? min(facts.contextLength ?? 4096, 8192)
        s.parallel = try int("parallel", min: 1, max: 256) ?? spec.parallel
        s.ubatch = try int("ubatch", min: 1, max: 65536) ?? 512
        s.gpuLayers = try int("ngl", min: 0, max: 10_000)
        if let kv = q.get("kv") {
            guard let t = MemoryEstimator.CacheType(rawValue: kv) else {
                throw OpenAIError.badRequest("kv must be one of \(MemoryEstimator.CacheType.allCases.map(\.rawValue).joined(separator: ", "))", param: "kv")
            }
            s.cacheTypeK = t
            s.cacheTypeV = t
        }
        if let fa = q.get("fa") {
            guard fa == "on" || fa == "off" else { throw OpenAIError.badRequest("fa must be on or off", param: "fa") }
            s.flashAttention = fa == "on"
        }
        if let problem = MemoryEstimator.cacheProblem(facts, s) { throw OpenAIError.badRequest(problem, param: "kv") }
        let c = Compatibility(hardware: await hardware.get(), marginMiB: marginMiB)
        let (verdict, estimate) = c.assess(facts, s)
        var answer: [String: Any] = [
            "model": spec.id,
            "settings": ["ctx": estimate.contextSize, "parallel": s.parallel, "ubatch": s.ubatch, "kv": s.cacheTypeK.rawValue,
                         "fa": s.flashAttention ? "on" : "off", "ngl": estimate.gpuLayers],
            "verdict": verdict.rawValue, "gpuLayers": estimate.gpuLayers, "kvBytesPerToken": estimate.kvBytesPerToken,
            "estimate": estimate.devices.map(Compatibility.deviceObject), "estimatedTotalMiB": Int(estimate.total / 1_048_576),
            "availableMiB": c.available.mapValues { Int($0 / 1_048_576) },
            "largestContext": MemoryEstimator.largestContext(facts, s, gpu: estimate.gpuLayers > 0 ? c.gpu?.name : nil, available: c.available,
                                                             limit: max(facts.contextLength ?? 4096, s.contextSize)),
            "suggestions": c.suggestions(facts, s, current: estimate), "table": c.table(facts, s),
        ]
        if q.get("exact") == "true" { answer["exact"] = await exact(path: path, spec: spec, settings: s, estimate: estimate) }
        return jsonResponse(answer)
    }

    /// llama.cpp's own projection for the same settings, next to the estimator's.
    func exact(path: String, spec: ModelSpec, settings s: MemoryEstimator.Settings, estimate: MemoryEstimator.Estimate) async -> [String: Any] {
        guard let tool = tools.fitParams?.path else { return ["error": "llama-fit-params not found"] }
        var args = ["-m", path, "-c", String(estimate.contextSize), "-np", String(s.parallel), "-ub", String(s.ubatch),
                    "-ctk", s.cacheTypeK.rawValue, "-ctv", s.cacheTypeV.rawValue, "-fa", s.flashAttention ? "on" : "off", "--fit-print", "on", "-lm", "none"]
        if let ngl = s.gpuLayers { args += ["-ngl", String(ngl)] }
        guard let run = try? await LlamaTools.run(tool, args) else { return ["error": "llama-fit-params could not run"] }
        let projection = FitPlan.parseProjection(run.lines)
        guard !projection.isEmpty else { return ["error": "llama-fit-params: " + run.lines.suffix(3).joined(separator: " | ")] }
        return ["source": "llama-fit-params --fit-print on", "projection": projection.map { p in
            ["device": p.device, "modelMiB": p.modelMiB, "contextMiB": p.contextMiB, "computeMiB": p.computeMiB, "totalMiB": p.totalMiB] as [String: Any]
        }]
    }

    // MARK: Recommendations

    func recommendations(_ request: Request) async throws -> Response {
        let q = request.uri.queryParameters
        let task = q.get("task") ?? "chat"
        guard ["chat", "code", "embedding", "vision"].contains(task) else {
            throw OpenAIError.badRequest("task must be chat, code, embedding or vision", param: "task")
        }
        var minContext: Int?
        if let raw = q.get("min_ctx") {
            guard let v = Int(raw), v > 0 else { throw OpenAIError.badRequest("min_ctx must be a positive integer", param: "min_ctx") }
            minContext = v
        }
        let (catalog, _, _, compatibility) = await context()
        var ranked: [(score: Double, object: [String: Any])] = []
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
            let measured = await benchmarks(spec.id).compactMap { ($0["generationTokensPerSecond"] as? [String: Any])?["p50"] as? Double }.max()
            let speed = measured.map { log10(max($0, 1)) / 2 } ?? 0
            let placement = verdict == .fitsGPU ? 0.5 : verdict == .partialOffload ? 0.25 : 0
            let score = quality + speed + placement
            var reason = "\(OllamaValues.parameterSize(f.parameterCount)) \(f.quantization), \(verdict.rawValue.replacingOccurrences(of: "_", with: " "))"
            reason += ", \(Int(estimate.total / 1_048_576)) MiB at \(estimate.contextSize) context"
            if let measured { reason += String(format: ", %.0f tokens/s measured", measured) }
            if task == "code" && caps.contains(.insert) { reason += ", fill-in-the-middle" }
            ranked.append((score, ["model": spec.id, "score": (score * 100).rounded() / 100, "verdict": verdict.rawValue, "reason": reason]))
        }
        ranked.sort { $0.score > $1.score }
        return jsonResponse(["task": task, "recommendations": ranked.map(\.object)])
    }
}

/// A JSON response from an Encodable value (dates as RFC 3339).
func jsonEncodable(_ value: some Encodable, status: HTTPResponse.Status = .ok) throws -> Response {
    Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: .init(bytes: try JSONEncoder.iso.encode(value))))
}
