import AsyncHTTPClient
import Foundation
import GGUF
import Hummingbird
import NIOCore
import NIOHTTP1
import Runtime
import Store

/// A tuning session: which llama-server settings make a model fastest (or smallest) here.
struct TuningSession: Sendable, Codable {
    /// The values to try; every combination is a candidate.
    struct Space: Sendable, Codable, Equatable {
        var contextSize: [Int]?
        var ubatch: [Int]?
        var flashAttention: [Bool]?
        var cacheType: [MemoryEstimator.CacheType]?
        var threads: [Int]?
        var parallel: [Int]?
        var gpuLayers: [Int]?
    }

    struct Request: Sendable, Codable, Equatable {
        var objective: String
        var strategy: String
        var space: Space
        var minContext: Int?
        /// Requests in a first-round trial (halving doubles it each round).
        var requests: Int
        var concurrency: Int
        var maxTokens: Int
        var promptWords: Int
        var maxCandidates: Int
        var seed: UInt64
    }

    struct Candidate: Sendable, Codable, Equatable {
        var contextSize: Int?
        var ubatch: Int?
        var flashAttention: Bool?
        var cacheType: MemoryEstimator.CacheType?
        var threads: Int?
        var parallel: Int?
        var gpuLayers: Int?

        /// llama-server flags for these settings.
        var arguments: [String] {
            var a: [String] = []
            if let contextSize { a += ["-c", String(contextSize)] }
            if let ubatch { a += ["-ub", String(ubatch), "-b", String(max(ubatch, 2048))] }
            if let flashAttention { a += ["-fa", flashAttention ? "on" : "off"] }
            if let cacheType { a += ["-ctk", cacheType.rawValue, "-ctv", cacheType.rawValue] }
            if let threads { a += ["-t", String(threads)] }
            if let parallel { a += ["-np", String(parallel)] }
            if let gpuLayers { a += ["-ngl", String(gpuLayers)] }
            return a
        }
    }

    struct Trial: Sendable, Codable {
        var index: Int
        var candidate: Candidate
        var arguments: [String]
        /// pending, pruned, running, done, failed, eliminated (lost a halving round).
        var status: String
        var reason: String?
        var round: Int
        var result: LoadResult?
        var memoryMiB: Double?
        var estimatedMiB: Int?
        var score: Double?
    }

    var id: String
    var model: String
    var createdAt: Date
    /// running, done, failed, interrupted (Corral stopped mid-session).
    var status: String
    var request: Request
    var trials: [Trial]
    var best: Int?
    var appliedAt: Date?
    var error: String?
}

/// Runs tuning sessions: enumerate candidates, prune what the estimator says cannot fit (or
/// breaks a constraint), run each remaining candidate as a real llama-server with a short load,
/// and keep the best by the objective — with successive halving, cheap trials first and longer
/// ones for the survivors. Sessions are saved after every trial.
actor TuningService {
    static let objectives = ["max_generation_tps", "min_ttft", "max_throughput_at_concurrency", "min_memory", "balanced"]
    static let strategies = ["grid", "random", "halving"]

    let scheduler: Scheduler
    let store: Store?
    let tools: LlamaTools
    let client: HTTPClient
    let hardware: HardwareCache
    let marginMiB: Int
    var sessions: [String: TuningSession] = [:]
    let startedAt = Date()

    init(scheduler: Scheduler, store: Store?, tools: LlamaTools, client: HTTPClient, hardware: HardwareCache, marginMiB: Int) {
        self.scheduler = scheduler
        self.store = store
        self.tools = tools
        self.client = client
        self.hardware = hardware
        self.marginMiB = marginMiB
    }

    /// Marks sessions that were running when Corral stopped; their finished trials stay.
    func reportInterrupted() async {
        for data in (try? await store?.documents(kind: "tuning", limit: 1000)) ?? [] {
            guard var s = try? JSONDecoder.iso.decode(TuningSession.self, from: data), s.status == "running", s.createdAt < startedAt,
                sessions[s.id] == nil
            else { continue }
            s.status = "interrupted"
            s.error = "Corral stopped during the session; finished trials are kept, start a new session to continue"
            for i in s.trials.indices where s.trials[i].status == "running" || s.trials[i].status == "pending" { s.trials[i].status = "interrupted" }
            await save(s)
        }
    }

    /// Every combination of the space (at most `limit`), in a stable order.
    static func candidates(_ space: TuningSession.Space, limit: Int) -> [TuningSession.Candidate] {
        var out = [TuningSession.Candidate()]
        func expand<T>(_ values: [T]?, _ set: (inout TuningSession.Candidate, T) -> Void) {
            guard let values, !values.isEmpty else { return }
            out = out.flatMap { c in values.map { v in var n = c; set(&n, v); return n } }
        }
        expand(space.contextSize) { $0.contextSize = $1 }
        expand(space.ubatch) { $0.ubatch = $1 }
        expand(space.flashAttention) { $0.flashAttention = $1 }
        expand(space.cacheType) { $0.cacheType = $1 }
        expand(space.threads) { $0.threads = $1 }
        expand(space.parallel) { $0.parallel = $1 }
        expand(space.gpuLayers) { $0.gpuLayers = $1 }
        return Array(out.prefix(limit))
    }

    func start(model spec: ModelSpec, request: TuningSession.Request) async throws -> TuningSession {
        guard let facts = spec.facts, spec.path != nil else { throw OpenAIError.badRequest("'\(spec.id)' is not a local GGUF model", param: "model") }
        var all = Self.candidates(request.space, limit: 10_000)
        if request.strategy == "random" {
            var rng = SplitMix64(seed: request.seed)
            all.shuffle(using: &rng)
        }
        all = Array(all.prefix(request.maxCandidates))
        guard !all.isEmpty else { throw OpenAIError.badRequest("the search space is empty", param: "space") }
        let compatibility = Compatibility(hardware: await hardware.get(), marginMiB: marginMiB)
        var trials: [TuningSession.Trial] = []
        for (i, c) in all.enumerated() {
            var t = TuningSession.Trial(index: i, candidate: c, arguments: c.arguments, status: "pending", round: 0)
            var s = MemoryEstimator.Settings()
            s.contextSize = c.contextSize ?? spec.contextSize ?? min(facts.contextLength ?? 4096, 8192)
            s.parallel = c.parallel ?? spec.parallel
            s.ubatch = c.ubatch ?? 512
            s.flashAttention = c.flashAttention ?? true
            s.cacheTypeK = c.cacheType ?? .f16
            s.cacheTypeV = c.cacheType ?? .f16
            s.gpuLayers = c.gpuLayers
            let (verdict, estimate) = compatibility.assess(facts, s)
            t.estimatedMiB = Int(estimate.total / 1_048_576)
            if let min = request.minContext, estimate.contextSize < min {
                t.status = "pruned"
                t.reason = "context \(estimate.contextSize) is below the required \(min)"
            } else if let problem = MemoryEstimator.cacheProblem(facts, s) {
                t.status = "pruned"
                t.reason = problem
            } else if verdict == .doesNotFit {
                t.status = "pruned"
                t.reason = "estimator: needs \(t.estimatedMiB!) MiB, \(compatibility.available["Host"].map { $0 >> 20 } ?? 0) MiB available"
            }
            trials.append(t)
        }
        let session = TuningSession(id: "tune-" + UUID().uuidString.prefix(8).lowercased(), model: spec.id, createdAt: Date(), status: "running",
                                    request: request, trials: trials)
        sessions[session.id] = session
        await save(session)
        Task { await self.execute(session.id, path: spec.path!) }
        return session
    }

    private func execute(_ id: String, path: String) async {
        guard let serverPath = tools.server?.path else {
            await update(id) { $0.status = "failed"; $0.error = "llama-server not found" }
            return
        }
        var alive = sessions[id]!.trials.filter { $0.status == "pending" }.map(\.index)
        let request = sessions[id]!.request
        var round = 0
        while !alive.isEmpty {
            // Halving: every survivor runs with twice the previous round's work; others run once.
            let scale = request.strategy == "halving" ? 1 << round : 1
            for index in alive {
                await update(id) { $0.trials[index].status = "running"; $0.trials[index].round = round }
                let trial = await runTrial(id: id, index: index, path: path, serverPath: serverPath, scale: scale)
                await update(id) { $0.trials[index] = trial }
            }
            scoreRound(id, alive)
            let ranked = alive.filter { sessions[id]!.trials[$0].status == "done" }.sorted { (sessions[id]!.trials[$0].score ?? -.infinity) > (sessions[id]!.trials[$1].score ?? -.infinity) }
            guard request.strategy == "halving", ranked.count > 1 else {
                alive = []
                await update(id) { $0.best = ranked.first }
                break
            }
            let keep = Array(ranked.prefix((ranked.count + 1) / 2))
            for index in ranked where !keep.contains(index) {
                await update(id) { $0.trials[index].status = "eliminated"; $0.trials[index].reason = "lost round \(round + 1)" }
            }
            alive = keep
            round += 1
            if keep.count == 1 {
                await update(id) { $0.best = keep.first }
                break
            }
        }
        await update(id) { s in
            s.status = s.best == nil ? "failed" : "done"
            if s.best == nil { s.error = s.error ?? "no candidate completed" }
        }
    }

    private func runTrial(id: String, index: Int, path: String, serverPath: String, scale: Int) async -> TuningSession.Trial {
        var trial = sessions[id]!.trials[index]
        let request = sessions[id]!.request
        let model = sessions[id]!.model
        let instance: ModelInstance
        do {
            instance = try await ModelInstance.launch(modelID: model, serverPath: serverPath, arguments: ["-m", path] + trial.arguments,
                                                      client: client, timeout: .seconds(120))
        } catch {
            trial.status = "failed"
            trial.reason = "\(error)"
            return trial
        }
        let runner = LoadRunner(requests: request.requests * scale, concurrency: request.concurrency, promptWords: request.promptWords,
                                maxTokens: request.maxTokens * scale)
        let client = self.client
        let base = instance.baseURL
        let result = await runner.run(model: model) { body in
            var r = HTTPClientRequest(url: base + "/v1/chat/completions")
            r.method = .POST
            r.headers.add(name: "content-type", value: "application/json")
            r.body = .bytes(body)
            return (try await client.execute(r, timeout: .minutes(5)), { _, _, _ in })
        }
        trial.memoryMiB = instance.allocatedMiB.values.reduce(0, +)
        _ = await instance.process.stop(grace: .seconds(2))
        trial.result = result
        trial.status = result.errors == result.requests ? "failed" : "done"
        if trial.status == "failed" { trial.reason = result.firstError }
        return trial
    }

    /// Scores the finished trials of a round by the objective (higher is better).
    private func scoreRound(_ id: String, _ indexes: [Int]) {
        guard var s = sessions[id] else { return }
        let done = indexes.filter { s.trials[$0].status == "done" }
        let gen = done.map { s.trials[$0].result?.generationTokensPerSecond.p50 ?? 0 }
        let ttft = done.map { s.trials[$0].result?.timeToFirstTokenMs.p50 ?? .infinity }
        let mem = done.map { max(s.trials[$0].memoryMiB ?? Double(s.trials[$0].estimatedMiB ?? 0), 0.001) }
        for (k, i) in done.enumerated() {
            let r = s.trials[i].result
            switch s.request.objective {
            case "max_generation_tps": s.trials[i].score = gen[k]
            case "min_ttft": s.trials[i].score = -ttft[k]
            case "max_throughput_at_concurrency": s.trials[i].score = r?.throughputTokensPerSecond ?? 0
            case "min_memory": s.trials[i].score = -mem[k]
            default:
                // Each measure relative to the round's best, averaged.
                let g = gen[k] / max(gen.max() ?? 1, 0.001)
                let t = (ttft.min() ?? 1) / max(ttft[k], 0.001)
                let m = (mem.min() ?? 1) / mem[k]
                s.trials[i].score = (g + t + m) / 3
            }
            // A trial without a measure (no text streamed, say) ranks last rather than breaking JSON.
            if let score = s.trials[i].score, !score.isFinite { s.trials[i].score = nil }
        }
        sessions[id] = s
    }

    private func update(_ id: String, _ change: (inout TuningSession) -> Void) async {
        guard var s = sessions[id] else { return }
        change(&s)
        sessions[id] = s
        await save(s)
    }

    private func save(_ s: TuningSession) async {
        guard let data = try? JSONEncoder.iso.encode(s) else { return }
        try? await store?.putDocument(kind: "tuning", id: s.id, model: s.model, body: data, createdAt: s.createdAt)
    }

    func get(_ id: String) async -> TuningSession? {
        if let s = sessions[id] { return s }
        guard let data = try? await store?.document(kind: "tuning", id: id) else { return nil }
        return try? JSONDecoder.iso.decode(TuningSession.self, from: data)
    }

    func list(model: String?) async -> [TuningSession] {
        ((try? await store?.documents(kind: "tuning", model: model)) ?? []).compactMap { try? JSONDecoder.iso.decode(TuningSession.self, from: $0) }
    }

    /// Stores the winner as the model's runtime profile, used from its next spawn on.
    func apply(_ id: String) async throws -> RuntimeProfile {
        guard var s = await get(id) else { throw OpenAIError(.notFound, "no tuning session '\(id)'", code: "not_found") }
        guard s.status == "done", let best = s.best else { throw OpenAIError(.conflict, "session '\(id)' has no result to apply (status \(s.status))", code: "not_finished") }
        let arguments = s.trials[best].arguments
        do { try await scheduler.setRuntimeArguments(s.model, arguments) } catch { throw OpenAIError(error) }
        let profile = RuntimeProfile(model: s.model, arguments: arguments, session: id, appliedAt: Date())
        if let data = try? JSONEncoder.iso.encode(profile) { try? await store?.putDocument(kind: "runtime-profile", id: s.model, model: s.model, body: data) }
        s.appliedAt = profile.appliedAt
        sessions[id] = s
        await save(s)
        return profile
    }
}

/// Gives the scheduler the tuned arguments applied before a restart.
public func applyStoredRuntimeProfiles(store: Store, scheduler: Scheduler) async {
    for data in (try? await store.documents(kind: "runtime-profile", limit: 10_000)) ?? [] {
        guard let profile = try? JSONDecoder.iso.decode(RuntimeProfile.self, from: data) else { continue }
        try? await scheduler.setRuntimeArguments(profile.model, profile.arguments)
    }
}

/// Tuned arguments stored for a model.
struct RuntimeProfile: Sendable, Codable {
    var model: String
    var arguments: [String]
    var session: String
    var appliedAt: Date
}

/// `/admin/tuning`: start, list, follow and apply sessions.
struct TuningRoutes: Sendable {
    let service: TuningService
    let scheduler: Scheduler

    func register(on admin: RouterGroup<GatewayRequestContext>) {
        admin.post("tuning") { request, context in
            let body = try await Relay.readJSON(request, context: context).1
            guard let model = body["model"] as? String, !model.isEmpty else { throw OpenAIError.badRequest("model is required", param: "model") }
            guard let spec = await scheduler.catalog.resolve(model) else { throw OpenAIError.modelNotFound(model) }
            let objective = body["objective"] as? String ?? "max_generation_tps"
            guard TuningService.objectives.contains(objective) else {
                throw OpenAIError.badRequest("objective must be one of \(TuningService.objectives.joined(separator: ", "))", param: "objective")
            }
            let strategy = body["strategy"] as? String ?? "halving"
            guard TuningService.strategies.contains(strategy) else {
                throw OpenAIError.badRequest("strategy must be one of \(TuningService.strategies.joined(separator: ", "))", param: "strategy")
            }
            let space: TuningSession.Space
            do {
                space = try JSONDecoder().decode(TuningSession.Space.self, from: JSONSerialization.data(withJSONObject: body["space"] ?? [String: Any]()))
            } catch {
                throw OpenAIError.badRequest("space must map contextSize, ubatch, threads, parallel, gpuLayers to integer lists, flashAttention to booleans and cacheType to f16/q8_0/… names", param: "space")
            }
            let ranges: [(String, [Int]?, ClosedRange<Int>)] = [
                ("contextSize", space.contextSize, 1...(1 << 28)), ("ubatch", space.ubatch, 1...65_536), ("threads", space.threads, 1...1024),
                ("parallel", space.parallel, 1...256), ("gpuLayers", space.gpuLayers, 0...10_000),
            ]
            for (name, values, range) in ranges where !(values ?? []).allSatisfy(range.contains) {
                throw OpenAIError.badRequest("space.\(name) values must be from \(range.lowerBound) to \(range.upperBound)", param: "space")
            }
            let combinations = [space.contextSize?.count, space.ubatch?.count, space.flashAttention?.count, space.cacheType?.count,
                                space.threads?.count, space.parallel?.count, space.gpuLayers?.count].reduce(1) { $0 * max(1, min($1 ?? 1, 1000)) }
            guard combinations <= 4096 else {
                throw OpenAIError.badRequest("the space has \(combinations) combinations; at most 4096 (use strategy random with fewer values)", param: "space")
            }
            func int(_ key: String, _ fallback: Int, _ range: ClosedRange<Int>) throws -> Int {
                guard let v = body[key], !(v is NSNull) else { return fallback }
                guard let n = v as? NSNumber, !isJSONBool(n), let i = Int(exactly: n.doubleValue), range.contains(i) else {
                    throw OpenAIError.badRequest("\(key) must be an integer from \(range.lowerBound) to \(range.upperBound)", param: key)
                }
                return i
            }
            let tuning = TuningSession.Request(
                objective: objective, strategy: strategy, space: space,
                minContext: body["minContext"] == nil ? nil : try int("minContext", 0, 1...(1 << 24)),
                requests: try int("requests", 4, 1...1000), concurrency: try int("concurrency", 1, 1...256), maxTokens: try int("maxTokens", 16, 1...4096),
                promptWords: try int("promptWords", 32, 1...100_000), maxCandidates: try int("maxCandidates", 24, 1...512),
                seed: UInt64(try int("seed", 42, 0...Int.max)))
            return try jsonEncodable(try await service.start(model: spec, request: tuning), status: .accepted)
        }
        admin.get("tuning") { request, _ in try jsonEncodable(["sessions": await service.list(model: request.uri.queryParameters.get("model"))]) }
        admin.get("tuning/:id") { _, context in
            let id = try context.parameters.require("id")
            guard let session = await service.get(id) else { throw OpenAIError(.notFound, "no tuning session '\(id)'", code: "not_found") }
            return try jsonEncodable(session)
        }
        // The winner becomes the model's runtime profile, used from its next spawn (unload to apply now).
        admin.post("tuning/:id/apply") { _, context in try jsonEncodable(try await service.apply(try context.parameters.require("id"))) }
    }
}
