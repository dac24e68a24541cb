import Access
import AsyncHTTPClient
import Foundation
import GGUF
import HTTPTypes
import Hummingbird
import NIOCore
import NIOHTTP1
import Runtime
import Store

/// One benchmark run: its parameters, progress and result.
struct BenchmarkRun: Sendable, Codable {
    struct Parameters: Sendable, Codable, Equatable {
        var requests: Int
        var concurrency: Int
        var promptWords: Int
        var maxTokens: Int
    }
    var id: String
    var model: String
    var status: String
    var createdAt: Date
    var parameters: Parameters
    var completed: Int
    var result: LoadResult?
    /// What the instance had allocated when the run ended (MiB by device and kind).
    var memoryMiB: [String: Double]?
    var error: String?
}

/// Runs benchmarks through the serving path (scheduler, relay, ledger), one at a time per
/// model, keeps them in SQLite and lets clients follow progress by polling or SSE.
actor BenchmarkService {
    let relay: Relay
    let scheduler: Scheduler
    let store: Store?
    var runs: [String: BenchmarkRun] = [:]
    var watchers: [String: [AsyncStream<BenchmarkRun>.Continuation]] = [:]

    init(relay: Relay, scheduler: Scheduler, store: Store?) {
        self.relay = relay
        self.scheduler = scheduler
        self.store = store
    }

    /// Starts a run in the background and returns it as it begins.
    func start(model: String, parameters: BenchmarkRun.Parameters) -> BenchmarkRun {
        let run = BenchmarkRun(id: "bench-" + UUID().uuidString.prefix(8).lowercased(), model: model, status: "running", createdAt: Date(),
                               parameters: parameters, completed: 0)
        runs[run.id] = run
        Task { await self.execute(run.id) }
        return run
    }

    private func execute(_ id: String) async {
        guard let run = runs[id] else { return }
        let relay = self.relay
        let runner = LoadRunner(requests: run.parameters.requests, concurrency: run.parameters.concurrency,
                                promptWords: run.parameters.promptWords, maxTokens: run.parameters.maxTokens)
        let result = await runner.run(
            model: run.model,
            send: { body in
                let exchange = try await relay.open(
                    route: "/admin/benchmarks", method: .POST, upstreamPath: "/v1/chat/completions", modelName: run.model, body: body,
                    headers: [:], caller: .anonymous, tokens: TokenEstimate(prompt: 0, output: 0))
                return (exchange.response, { status, usage, timings in await relay.finish(exchange, status: status, usage: usage, timings: timings) })
            },
            progress: { done, _ in await self.progressed(id, done) })
        var finished = runs[id]!
        finished.result = result
        finished.completed = result.requests
        finished.status = result.errors == result.requests ? "failed" : "done"
        finished.error = result.firstError
        finished.memoryMiB = await scheduler.instance(for: run.model)?.allocatedMiB
        runs[id] = finished
        await save(finished)
        publish(finished, final: true)
    }

    private func progressed(_ id: String, _ done: Int) {
        guard var run = runs[id] else { return }
        run.completed = max(run.completed, done)
        runs[id] = run
        publish(run, final: false)
    }

    private func publish(_ run: BenchmarkRun, final: Bool) {
        for w in watchers[run.id] ?? [] {
            w.yield(run)
            if final { w.finish() }
        }
        if final { watchers[run.id] = nil }
    }

    private func save(_ run: BenchmarkRun) async {
        guard let data = try? JSONEncoder.iso.encode(run) else { return }
        try? await store?.putDocument(kind: "benchmark", id: run.id, model: run.model, body: data, createdAt: run.createdAt)
    }

    func get(_ id: String) async -> BenchmarkRun? {
        if let r = runs[id] { return r }
        guard let data = try? await store?.document(kind: "benchmark", id: id) else { return nil }
        return try? JSONDecoder.iso.decode(BenchmarkRun.self, from: data)
    }

    /// Finished runs, newest first (optionally of one model).
    func list(model: String?) async -> [BenchmarkRun] {
        let stored = ((try? await store?.documents(kind: "benchmark", model: model)) ?? []).compactMap { try? JSONDecoder.iso.decode(BenchmarkRun.self, from: $0) }
        let running = runs.values.filter { $0.status == "running" && (model == nil || $0.model == model) }
        return running + stored
    }

    /// Progress of a run: the current state now, then each change until it ends.
    func updates(_ id: String) -> AsyncStream<BenchmarkRun> {
        let (stream, continuation) = AsyncStream<BenchmarkRun>.makeStream()
        if let run = runs[id] {
            continuation.yield(run)
            if run.status == "running" { watchers[id, default: []].append(continuation) } else { continuation.finish() }
        } else {
            continuation.finish()
        }
        return stream
    }
}

extension JSONDecoder {
    static var iso: JSONDecoder {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .iso8601
        return d
    }
}

/// `/admin/benchmarks`: start, list, poll and follow (SSE).
struct BenchmarkRoutes: Sendable {
    let service: BenchmarkService
    let scheduler: Scheduler

    func register(on admin: RouterGroup<GatewayRequestContext>) {
        admin.post("benchmarks") { request, context in
            let body = try await Relay.readJSON(request, context: context).1
            guard let model = body["model"] as? String, !model.isEmpty else { throw OpenAIError.badRequest("model is required", param: "model") }
            guard let spec = await scheduler.catalog.resolve(model) else { throw OpenAIError.modelNotFound(model) }
            guard spec.facts?.capabilities.contains(.embedding) != true else {
                throw OpenAIError.badRequest("'\(model)' is an embedding model; benchmarks generate text", param: "model")
            }
            func int(_ key: String, _ fallback: Int, _ range: ClosedRange<Int>) throws -> Int {
                guard let v = body[key], !(v is NSNull) else { return fallback }
                guard let n = v as? NSNumber, !isJSONBool(n), let i = Int(exactly: n.doubleValue), range.contains(i) else {
                    throw OpenAIError.badRequest("\(key) must be an integer from \(range.lowerBound) to \(range.upperBound)", param: key)
                }
                return i
            }
            let parameters = BenchmarkRun.Parameters(
                requests: try int("requests", 20, 1...10_000), concurrency: try int("concurrency", 1, 1...256),
                promptWords: try int("promptWords", 32, 1...100_000), maxTokens: try int("maxTokens", 64, 1...32_768))
            let run = await service.start(model: spec.id, parameters: parameters)
            return try jsonEncodable(run, status: .accepted)
        }
        admin.get("benchmarks") { request, _ in
            try jsonEncodable(["benchmarks": await service.list(model: request.uri.queryParameters.get("model"))])
        }
        admin.get("benchmarks/:id") { _, context in
            let id = try context.parameters.require("id")
            guard let run = await service.get(id) else { throw OpenAIError(.notFound, "no benchmark '\(id)'", code: "not_found") }
            return try jsonEncodable(run)
        }
        admin.get("benchmarks/:id/events") { _, context in
            let id = try context.parameters.require("id")
            guard let current = await service.get(id) else { throw OpenAIError(.notFound, "no benchmark '\(id)'", code: "not_found") }
            let updates = await service.updates(id)
            return Response(
                status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache", HTTPField.Name("X-Accel-Buffering")!: "no"],
                body: ResponseBody { writer in
                    var sent = false
                    for await run in updates {
                        sent = true
                        try await writer.write(ByteBuffer(bytes: Array("data: ".utf8) + (try JSONEncoder.iso.encode(run)) + Array("\n\n".utf8)))
                    }
                    if !sent { try await writer.write(ByteBuffer(bytes: Array("data: ".utf8) + (try JSONEncoder.iso.encode(current)) + Array("\n\n".utf8))) }
                    try await writer.finish(nil)
                })
        }
    }
}
