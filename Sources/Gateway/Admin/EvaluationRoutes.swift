import Foundation
import Hummingbird
import NIOCore
import Jobs
import Lab

/// `/admin/evaluations`: runs side by side (`compare`, with McNemar's test) and a run's live
/// console (its job events — an `item` event per graded item with prompt, answer and grades —
/// with the live `prompt` and `token` events of the requests in flight woven in).
struct EvaluationRoutes: Sendable {
    let evaluations: Evaluations
    let console: EvalConsole

    func register(on admin: AdminAPIGroup) {
        admin.get("evaluations/compare", .init(
            "Evaluation runs side by side: pass rates and speed, each item's status and answer per run, and per pair of runs the pass-rate difference with McNemar's p-value",
            query: [.init("runs", .string, "2 to 5 run ids, comma-separated", required: true)], errors: [400, 404])
        ) { request, _ in
            let ids = (request.uri.queryParameters.get("runs") ?? "").split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            return try Wire.response(try await mapped { try await evaluations.compare(ids) })
        }
        admin.get("evaluations/runs/{id}/events", .events(
            "A run's live console as server-sent events: state and progress, a `prompt` event as each request goes out and a `token` event per streamed piece of its answer (live only, no id), and an `item` event per graded item (prompt, answer, grades, time to first token, total time); the durable events replay from Last-Event-ID",
            path: ["id": "run id"])
        ) { request, context in
            let id = try context.parameters.require("id")
            guard let job = try await mapped({ try await evaluations.engine.get(id) }), job.kind == EvalRunJob.name else {
                throw OpenAIError(.notFound, "no evaluation run '\(id)'", code: "not_found")
            }
            let lines = try await mapped { try await console.follow(id, after: try JobRoutes.lastEventID(request), in: evaluations.engine) }
            return JobRoutes.eventStream { writer in
                for await line in lines { try await writer.write(JobRoutes.sse(id: line.id, event: line.type, data: line.data)) }
            }
        }
    }
}
