import Files
import Foundation
import GGUF
import Hummingbird
import Jobs
import Lab
import Library
import NIOCore
import Runtime
import Store

/// `/admin/benchmarks` and `/admin/tuning`: decoding, the lab call, encoding. Both are views of
/// jobs (`/admin/jobs/{id}` shows the same work).
struct LabRoutes: Sendable {
    let lab: Lab
    let scheduler: Scheduler
    let hardware: HardwareCache
    let marginMiB: Int
    /// Uploaded files, for a perplexity text given by `file_id` (nil without a store).
    let files: FileLibrary?

    func register(on admin: AdminAPIGroup) {
        registerBenchmarks(on: admin)
        registerTuning(on: admin)
        registerQuantLadder(on: admin)
    }

    // MARK: Benchmarks

    func registerBenchmarks(on admin: AdminAPIGroup) {
        let run = ["id": "run id"]
        admin.post("benchmarks", .init("Start a benchmark (a job): `kind` speed (the default: N streamed requests through the serving path) or perplexity (llama-perplexity on a text, inline or by file id, with the model's settings)", body: .object([
            "model": .string, "kind": .enumeration(["speed", "perplexity"]), "requests": .integer(minimum: 1, maximum: 10_000),
            "concurrency": .integer(minimum: 1, maximum: 256), "promptWords": .integer(minimum: 1), "maxTokens": .integer(minimum: 1, maximum: 32_768),
            "text": .string, "file_id": .string, "contextSize": .integer(minimum: 16, maximum: 131_072), "chunks": .integer(minimum: 1),
        ], required: ["model"]), status: 202)) { request, context in
            let body = try await mapped { try await Wire.decode(BenchmarkRequest.self, request, context: context) }
            switch body.kind {
            case .speed(let parameters):
                return try Wire.response(try await mapped { try await lab.startBenchmark(body.model, parameters) }, status: .accepted)
            case .perplexity(let run):
                let compatibility = await compatibility()
                let started = try await mapped { try await lab.startPerplexity(body.model, run, files: files, compatibility: compatibility) }
                return try Wire.response(started, status: .accepted)
            }
        }
        admin.get("benchmarks", .init("Benchmark runs, newest first: speed runs in `benchmarks`, perplexity runs in `perplexity`", query: [.init("model", .string)], errors: [])) { request, _ in
            let model = request.uri.queryParameters.get("model")
            return try Wire.response(BenchmarkLists(
                benchmarks: try await mapped { try await lab.benchmarks(model: model) },
                perplexity: try await mapped { try await lab.perplexityRuns(model: model) }))
        }
        admin.get("benchmarks/{id}", .init("One run (speed or perplexity): progress and result", path: run)) { _, context in
            let id = try context.parameters.require("id")
            if let found = try await mapped({ try await lab.benchmark(id) }) { return try Wire.response(found) }
            if let found = try await mapped({ try await lab.perplexityRun(id) }) { return try Wire.response(found) }
            throw OpenAIError(.notFound, "no benchmark '\(id)'", code: "not_found")
        }
        admin.get("benchmarks/{id}/events", .events("The run now, then after every change, as server-sent events until it ends", path: run)) { request, context in
            let id = try context.parameters.require("id")
            if try await mapped({ try await lab.perplexityRun(id) }) != nil { return try await JobRoutes.events(of: id, in: lab.engine, request: request) }
            guard let current = try await mapped({ try await lab.benchmark(id) }) else { throw OpenAIError(.notFound, "no benchmark '\(id)'", code: "not_found") }
            let resumeAfter = try JobRoutes.lastEventID(request)
            let job = try await mapped { try await lab.engine.get(id) }
            let events = try await mapped { try await lab.engine.events(id, after: resumeAfter > 0 ? resumeAfter : job?.lastEventID ?? 0) }
            return JobRoutes.eventStream { writer in
                if resumeAfter == 0 { try await writer.write(JobRoutes.sse(id: job?.lastEventID, event: nil, data: try JSONEncoder.iso.encode(current))) }
                for await event in events {
                    guard let run = try await lab.benchmark(id) else { break }
                    try await writer.write(JobRoutes.sse(id: event.id, event: nil, data: try JSONEncoder.iso.encode(run)))
                }
            }
        }
    }

    /// What fits on this machine, for a plan.
    func compatibility() async -> Compatibility {
        Compatibility(hardware: await hardware.get(), marginMiB: marginMiB)
    }

    // MARK: Quant ladder

    func registerQuantLadder(on admin: AdminAPIGroup) {
        admin.post("quant-ladder", .init(
            "Start a quant ladder (a job of kind quant-ladder): the model quantized to each of `quants` (default Q8_0 to Q2_K), each measured for size, fit verdict on this machine, prompt and generation speed (llama-bench), perplexity and mean KL divergence against the model on a text (inline or by file id); the result names the smallest quant within `maxKLD` (default 0.05) that fits",
            body: .object([
                "model": .string, "quants": .array(.enumeration(QuantType.all.map(\.name))), "text": .string, "file_id": .string,
                "contextSize": .integer(minimum: 16, maximum: 131_072), "chunks": .integer(minimum: 1), "maxKLD": .number, "allowRequantize": .boolean,
            ], required: ["model"]), status: 202)
        ) { request, context in
            let body = try await mapped { try await Wire.decode(QuantLadderRequest.self, request, context: context) }
            let compatibility = await compatibility()
            return try Wire.response(try await mapped { try await lab.startQuantLadder(body, files: files, compatibility: compatibility) }, status: .accepted)
        }
    }

    /// `GET /admin/benchmarks`: both kinds, each newest first.
    struct BenchmarkLists: Encodable {
        var benchmarks: [BenchmarkRun]
        var perplexity: [PerplexityRun]
    }

    // MARK: Tuning

    func registerTuning(on admin: AdminAPIGroup) {
        let session = ["id": "session id"]
        let ints = JSONSchema.array(.integer(minimum: 1))
        let space = JSONSchema.object([
            "contextSize": ints, "ubatch": ints, "threads": ints, "parallel": ints, "gpuLayers": .array(.integer(minimum: 0)),
            "flashAttention": .array(.boolean), "cacheType": .array(.enumeration(MemoryEstimator.CacheType.allCases.map(\.rawValue))),
        ])
        admin.post("tuning", .init("Start a tuning session (a job of kind tuning)", body: .object([
            "model": .string, "objective": .enumeration(TuningJob.objectives), "strategy": .enumeration(TuningJob.strategies), "space": space,
            "minContext": .integer(minimum: 1), "requests": .integer(minimum: 1), "concurrency": .integer(minimum: 1), "maxTokens": .integer(minimum: 1),
            "promptWords": .integer(minimum: 1), "maxCandidates": .integer(minimum: 1), "maxTrials": .integer(minimum: 1), "seed": .integer(minimum: 0),
            "maxSeconds": .number, "patience": .integer(minimum: 1), "repetitions": .integer(minimum: 1), "remeasureTop": .integer(minimum: 0),
            "weights": .object(["generationTPS": .number, "ttftMs": .number, "memoryMiB": .number, "throughputTPS": .number, "quality": .number]),
            "quality": .object(["evalRun": .string, "maxItems": .integer(minimum: 1), "text": .string, "contextSize": .integer(minimum: 8)]),
            "constraints": .object(["ttftP95Ms": .number, "memoryMiB": .number, "generationTPS": .number]),
        ], required: ["model"]), status: 202)) { request, context in
            let body = try await mapped { try await Wire.decode(TuningRequest.self, request, context: context) }
            let compatibility = await compatibility()
            return try Wire.response(try await mapped { try await lab.startTuning(body, compatibility: compatibility) }, status: .accepted)
        }
        admin.get("tuning", .init("Tuning sessions, newest first", query: [.init("model", .string)], errors: [])) { request, _ in
            try Wire.response(["sessions": try await mapped { try await lab.tuningSessions(model: request.uri.queryParameters.get("model")) }])
        }
        admin.get("tuning/{id}", .init("One session with its trials", path: session)) { _, context in
            let id = try context.parameters.require("id")
            guard let found = try await mapped({ try await lab.tuningSession(id) }) else { throw OpenAIError(.notFound, "no tuning session '\(id)'", code: "not_found") }
            return try Wire.response(found)
        }
        admin.get("tuning/{id}/events", .events("The session's job events as server-sent events: `pruned` (each trial the plan ruled out, with the reason), `trial_started`, `trial` (measured), `new_best`, progress and state changes; replays from Last-Event-ID", path: session)) { request, context in
            let id = try context.parameters.require("id")
            guard try await mapped({ try await lab.tuningSession(id) }) != nil else { throw OpenAIError(.notFound, "no tuning session '\(id)'", code: "not_found") }
            return try await JobRoutes.events(of: id, in: lab.engine, request: request)
        }
        // The winner becomes the model's runtime profile, used from its next spawn (unload to apply now).
        admin.post("tuning/{id}/apply", .init(
            "Use the winner: its llama-server settings as the model's runtime profile from its next spawn, its sampling parameters as a sampling profile (`profile`, default tuned-MODEL; requests use MODEL@PROFILE)",
            path: session, body: .object(["profile": .string]), errors: [404, 409])
        ) { request, context in
            // No body, or one that is not a JSON object, applies under the default name.
            let profile = (try? await Wire.decode(TuningApplyRequest.self, request, context: context))?.profile
            return try Wire.response(try await mapped { try await lab.apply(try context.parameters.require("id"), samplingProfile: profile) })
        }
    }
}
