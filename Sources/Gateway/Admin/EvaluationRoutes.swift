import Foundation
import Hummingbird
import Jobs
import Lab

/// `/admin/evaluations`: runs side by side (`compare`, with McNemar's test) and a run's live
/// console (its job events: an `item` event per graded item with prompt, answer and grades).
struct EvaluationRoutes: Sendable {
    let evaluations: Evaluations

    func register(on admin: AdminAPIGroup) {
        admin.get("evaluations/compare", .init(
            "Evaluation runs side by side: pass rates and speed, each item's status and answer per run, and per pair of runs the pass-rate difference with McNemar's p-value",
            query: [.init("runs", .string, "2 to 5 run ids, comma-separated", required: true)], errors: [400, 404])
        ) { request, _ in
            let ids = (request.uri.queryParameters.get("runs") ?? "").split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            return jsonResponse(try await mapped { try await evaluations.compare(ids) })
        }
        admin.get("evaluations/runs/{id}/events", .events(
            "A run's live console as server-sent events: state and progress, and an `item` event per graded item (prompt, answer, grades, time); replays from Last-Event-ID",
            path: ["id": "run id"])
        ) { request, context in
            let id = try context.parameters.require("id")
            guard let job = try await mapped({ try await evaluations.engine.get(id) }), job.kind == EvalRunJob.name else {
                throw OpenAIError(.notFound, "no evaluation run '\(id)'", code: "not_found")
            }
            return try await JobRoutes.events(of: id, in: evaluations.engine, request: request)
        }
    }
}
